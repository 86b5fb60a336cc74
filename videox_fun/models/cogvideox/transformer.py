"""The CogVideoX(-Fun) transformer: diffusers' ``CogVideoXTransformer3DModel`` with strict loading and
the extension points our runtime features read.

The network is diffusers' (principle 6: the released ``transformer/`` folders use its keys and its
config). What this module adds:

* :meth:`CogVideoXTransformer.from_pretrained`, which builds on the meta device and fails naming
  every missing, unexpected or mis-shaped key (diffusers' own loader only warns about unexpected
  keys and randomly initialises missing ones);
* VideoX-Fun's extra config entry ``add_noise_in_inpaint_model`` (its transformer class takes it;
  diffusers' does not), kept in the config so the pipeline can read it;
* class attributes that say where runtime features attach (blocks, cache indicator, fp8 skips).

The Fun InP and Control variants need no code of their own: VideoX-Fun's ``forward`` only
concatenates ``inpaint_latents`` / ``control_latents`` to the noise on the channel axis, which the
pipeline does before calling ``forward``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import CogVideoXTransformer3DModel

from ...config import read_json_mapping
from ..loading import (
    assert_materialised,
    cast_floating,
    load_into,
    public_config,
    read_folder_state_dict,
    read_weights_at,
    strip_prefix,
)
from .attention import CogVideoXJointAttention

logger = logging.getLogger(__name__)

# Config entries of VideoX-Fun's transformer class that diffusers' class lacks, with their defaults.
FUN_CONFIG_EXTRAS: Mapping[str, Any] = {"add_noise_in_inpaint_model": False}
# The class names a released transformer config.json may carry.
TRANSFORMER_CLASS_NAMES = ("CogVideoXTransformer3DModel", "CogVideoXTransformer")


class CogVideoXTransformer(CogVideoXTransformer3DModel):
    """diffusers' CogVideoX transformer (same keys, same config) with strict loading.

    Input ``hidden_states`` is (B, F', C_in, h, w): the 16 noise channels, then the variant's
    conditioning channels (I2V image latents, Fun InP mask + masked-video latents, Fun Control
    latents). Output (B, F', 16, h, w) is the v-prediction.
    """

    # Where runtime features attach (read by videox_fun.runtime, never by attribute names of one family).
    _block_lists = ("transformer_blocks",)
    _repeated_blocks = ("CogVideoXBlock",)
    # The module whose output a step cache (TeaCache) compares between steps.
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "time_embedding"}
    # Small or precision-sensitive modules that fp8 storage leaves alone.
    _fp8_skip_modules = ("patch_embed", "time_embedding", "ofs_embedding", "norm_final", "norm_out", "proj_out")

    # Sequence parallelism without a block runner: the per-token block arguments to shard (name -> dim of
    # each tensor; a tuple's tensors each), and each block's attention seam with attend(q, k, v, text_len).
    _sequence_parallel_shards: ClassVar[dict[str, int]] = {"hidden_states": 1, "image_rotary_emb": 0}
    _attention_seam = "attn1.processor"

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(CogVideoXTransformer3DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every block's attention goes through the package's dispatch (SDPA / flash / sage) and its seam.
        for block in self.transformer_blocks:
            block.attn1.set_processor(CogVideoXJointAttention())

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> CogVideoXTransformer:
        """A randomly initialised model of a config mapping (private entries and Fun extras allowed)."""
        config = dict(public_config(config))
        extras = {key: config.pop(key, default) for key, default in FUN_CONFIG_EXTRAS.items()}
        model = cls.from_config(config)
        model.register_to_config(**extras)
        return model

    @staticmethod
    def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Weights for this class from a file or (sharded) folder with diffusers' names, with or without
        the ``transformer.`` prefix of whole-pipeline files (``--transformer-path``)."""
        path = Path(path)
        state = read_weights_at(path)
        return strip_prefix(state, ("transformer.",))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        folder: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> CogVideoXTransformer:
        """Load a released ``transformer/`` folder (config.json + single or sharded weights) strictly.

        Every key and shape is checked; a mismatch raises ``CheckpointMismatchError`` naming the keys.
        """
        folder = Path(folder)
        config = read_transformer_config(folder)
        state = read_folder_state_dict(folder)
        with torch.device("meta"):  # no wasted random init: load_into assigns the checkpoint tensors
            model = cls.from_model_config(config)
        load_into(model, cast_floating(state, torch_dtype), source=str(folder))
        restore_derived_buffers(model)
        assert_materialised(model, str(folder))
        return model.to(device).eval()


def read_transformer_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The transformer config.json of a folder, checked to be a CogVideoX one."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = read_json_mapping(path, "transformer config")
    name = config.get("_class_name")
    if name is not None and name not in TRANSFORMER_CLASS_NAMES:
        raise ValueError(f"{path}: a {name} config, not a CogVideoX transformer ({TRANSFORMER_CLASS_NAMES[0]})")
    return config


def restore_derived_buffers(model: CogVideoXTransformer) -> None:
    """Recompute the buffers that checkpoints do not store (the 3D sin-cos position table of CogVideoX-2b).

    A meta-built model has no data for a non-persistent buffer; it is a pure function of the config.
    """
    patch_embed = model.patch_embed
    table = getattr(patch_embed, "pos_embedding", None)
    if table is not None and table.is_meta:
        rebuilt = patch_embed._get_positional_embeddings(
            patch_embed.sample_height, patch_embed.sample_width, patch_embed.sample_frames
        )  # (1, text_len + patches, D)
        patch_embed.register_buffer("pos_embedding", rebuilt, persistent=patch_embed.use_learned_positional_embeddings)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (buffers excluded), as the released model cards count them."""
    return sum(p.numel() for p in model.parameters())
