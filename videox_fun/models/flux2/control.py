"""VideoX-Fun's FLUX.2 Fun control (FLUX.2-dev-Fun-Controlnet-Union): a side stream of copied FLUX.2 double blocks
whose hints are added to the main double blocks' image stream (:mod:`~videox_fun.models.fun_control`).

The release ships ``control_transformer_blocks.N.*`` (4 copies of the double block, ``before_proj`` on the first,
``after_proj`` on each) and ``control_img_in`` (260 -> 6144): VideoX-Fun's ``Flux2ControlTransformer2DModel`` with
``control_layers [0, 2, 4, 6]``, ``control_in_dim 260``. The context per image token is 128 + 4 + 128 channels:
the control image's patchified normalised latents, the known-pixels mask at the VAE's resolution patchified 2x2
(1 = keep), the masked image's latents. On the meta device: 4,116,248,576 control parameters, 36,339,529,728 with
the transformer. No diffusers class holds these weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_flux2 import Flux2TransformerBlock
from torch import nn

from ..flux.attention import use_flux_attention
from ..fun_control import ControlFileKind, SideStreamControl

CONTROL_CLASS_NAME = "Flux2ControlTransformer2DModel"  # VideoX-Fun's transformer whose control part the file is
# control_img_in is Qwen-Image's too: the copies' after_proj tells the two apart.
KIND = ControlFileKind(
    "FLUX.2", "control_transformer_blocks.0.after_proj.weight", ("control_transformer_blocks.", "control_img_in.")
)


class Flux2Control(SideStreamControl):
    """The FLUX.2 side stream (released keys), strict, beside a :class:`~.transformer.Flux2Transformer`."""

    released_class_name = CONTROL_CLASS_NAME
    kind = KIND
    latent_channels = 128  # 32 VAE channels patchified 2x2
    blocks_name = "control_transformer_blocks"
    release_label = "FLUX.2-dev-Fun-Controlnet-Union"
    # It runs inside the transformer's forward (hooks on its blocks): memory modes keep the two on the device
    # together; the qfloat8 modes store its copies' linears in fp8 (VideoX-Fun's control transformer holds them,
    # quantised whole), the norms staying high precision as in the transformer.
    _runs_beside_transformer = True
    _fp8_skip_modules: ClassVar[tuple[str, ...]] = ("norm",)
    # Under sequence parallelism the copies run on each rank's tokens (their attention's seam, the context split as
    # the image tokens it follows), inside the transformer's split blocks.
    _block_lists = ("control_transformer_blocks",)
    _attention_seam = "attn.processor"
    _sequence_parallel_module_inputs: ClassVar[dict[str, str]] = {"control_img_in": "hidden_states"}

    @register_to_config
    def __init__(
        self,
        control_layers: Sequence[int] = (0, 2, 4, 6),
        control_in_dim: int = 260,
        num_attention_heads: int = 48,
        attention_head_dim: int = 128,
        mlp_ratio: float = 3.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.build(list(control_layers), control_in_dim, num_attention_heads * attention_head_dim)

    def make_block(self) -> nn.Module:
        """A FLUX.2 double block of the transformer's size (no biases, as the release)."""
        config = self.config
        block = Flux2TransformerBlock(config.num_attention_heads * config.attention_head_dim,
                                      config.num_attention_heads, config.attention_head_dim, config.mlp_ratio,
                                      config.eps)  # fmt: skip
        use_flux_attention([block.attn])  # the package's dispatch and seam, as the main double blocks
        return block

    @classmethod
    def block_config(cls, transformer_config: Mapping[str, Any]) -> dict[str, Any]:
        """The double block's MLP ratio and norm eps, as the transformer's."""
        return {"mlp_ratio": transformer_config.get("mlp_ratio", 3.0), "eps": transformer_config.get("eps", 1e-6)}
