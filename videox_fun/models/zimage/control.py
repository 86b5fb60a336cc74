"""VideoX-Fun's Z-Image Fun control (Z-Image-Turbo-Fun-Controlnet-Union 1.0, 2.0, 2.1 and 2.1-lite): a side
stream of copied Z-Image blocks whose hints are added to the main blocks.

The control weights ship as a separate file (``control_layers.N.*``, ``control_all_x_embedder.2-1.*``,
``control_noise_refiner.N.*``): diffusers' ``ZImageControlNetModel`` has exactly these keys (its single-file
converter renames nothing; for 2.0 it drops the unused refiner), so that class holds them, loaded strictly. It
shares the base transformer's embedders and refiners (linked, not owned: the control model's parameters are
the file's alone). What each release does:

* **1.0** (control in 16 channels: the control image's latents): the control context is refined by two plain
  blocks, joined with the caption tokens, then run through copies of the main blocks at ``[0, 5, ..., 25]``; block
  0 adds ``before_proj(c)`` to the main stream, every block's ``after_proj`` output is the hint added (times the
  control scale) after the main block of its place.
* **2.1** (33 channels: control latents, the known-pixels mask, the masked image's latents; places ``[0, 2, ...,
  28]``): the refiner is a control stream too, whose hints are added after the main noise refiner's blocks
  ``[0, 1]``. **2.0** ran that stage through the main control blocks (its own refiner weights stayed unused,
  ``before_proj`` zero: how 2.0 is told from 2.1, as diffusers tells them).

The refiner hints go into the main stream as VideoX-Fun's ``ZImageControlTransformer2DModel`` adds them; diffusers'
``ZImageControlNetPipeline`` uses them only inside the control model (it returns the main-block hints alone), so
for 2.x the two agree exactly only where the refiner's ``after_proj`` is zero (v1: always).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import ZImageControlNetModel
from diffusers.loaders.single_file_utils import convert_z_image_controlnet_checkpoint_to_diffusers
from torch import nn

from ..component import StrictDiffusersModel
from ..fun_control import ControlFileKind, spaced_places
from ..loading import count_blocks
from .attention import use_zimage_attention
from .transformer import F_PATCH, PATCH, ZImageTransformer

CONTROL_CLASS_NAME = "ZImageControlNetModel"
MARKER = f"control_all_x_embedder.{PATCH}-{F_PATCH}.weight"  # (dim, 2 * 2 * control_in_dim): every release has it
CONTROL_PREFIXES = ("control_layers.", "control_all_x_embedder.", "control_noise_refiner.")
KIND = ControlFileKind("Z-Image", MARKER, CONTROL_PREFIXES)
# What the base transformer lends the control model (diffusers' ZImageControlNetModel.from_transformer).
SHARED_MODULES = ("t_embedder", "all_x_embedder", "cap_embedder", "rope_embedder", "noise_refiner",
                  "context_refiner", "x_pad_token", "cap_pad_token", "t_scale")  # fmt: skip
LATENT_CHANNELS = 16  # the control image's latents; 2.x adds 1 mask + 16 masked-image channels


@dataclass(frozen=True)
class ControlRelease:
    """What a control file is, read off its keys and shapes (and, for 2.0 / 2.1, one tensor's values)."""

    version: str  # "1.0" | "2.x" (shapes only) | "2.0" | "2.1"
    control_in_dim: int  # 16 (control only) | 33 (control + mask + masked image)
    blocks: int  # copied main blocks (6 in 1.0, 15 in 2.x, 3 in 2.1-lite)
    dim: int

    @property
    def inpaint(self) -> bool:
        """Whether the control context carries a mask and the masked image (2.x): inpainting with control."""
        return self.control_in_dim > LATENT_CHANNELS

    @property
    def name(self) -> str:
        """The release's name for messages and the sidecar (2.1-lite: 2.1 with 3 control blocks)."""
        return f"Fun-Controlnet-Union {self.version} ({self.blocks} control blocks)"


def check_is_zimage_control(names: set[str] | Mapping[str, Any], source: str) -> None:
    """Fail in one line when the weights are not a Z-Image Fun control file (another base's control file, a
    transformer) — before any weight is read when given a header's names."""
    KIND.check(names, source)


def release_of(state: Mapping[str, torch.Tensor]) -> ControlRelease:
    """The release of a control state (meta tensors will do for all but telling 2.0 from 2.1)."""
    dim, patch_in = state[MARKER].shape
    blocks = count_blocks(state, "control_layers.")
    if "control_noise_refiner.0.after_proj.weight" not in state and patch_in == PATCH * PATCH * LATENT_CHANNELS:
        version = "1.0"  # its refiner blocks are plain ones (no after_proj)
    else:
        before = state.get("control_noise_refiner.0.before_proj.weight")
        version = "2.x" if before is not None and before.is_meta else "2.1"
        if before is None or (not before.is_meta and not before.any()):
            version = "2.0"  # the refiner never trained: 2.0 ran that stage through control_layers
    return ControlRelease(version, patch_in // (PATCH * PATCH * F_PATCH), blocks, dim)


def read_control_release(path: str | os.PathLike) -> ControlRelease:
    """A control file's release from its header alone (no weights read), checked to be a Z-Image control file."""
    return release_of(KIND.read_header(path))


def control_config(release: ControlRelease, transformer_config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """diffusers' ``ZImageControlNetModel`` config of ``release`` beside a transformer of ``transformer_config``.

    The places are not in the weights: every release spaces its copies evenly from block 0 over the main blocks
    (6 of 30 at [0, 5, ..., 25], 15 at [0, 2, ..., 28], 3 at [0, 10, 20]); the 2.x refiner hints go to every
    refiner block.
    """
    layers, refiners = transformer_config["n_layers"], transformer_config["n_refiner_layers"]
    if release.dim != transformer_config["dim"]:
        raise ValueError(f"{source}: its control blocks are {release.dim} wide, the transformer's "
                         f"{transformer_config['dim']}: a control file for another Z-Image size")  # fmt: skip
    refiner = {"1.0": None, "2.0": "control_layers"}.get(release.version, "control_noise_refiner")
    return {
        "_class_name": CONTROL_CLASS_NAME,
        "control_layers_places": spaced_places(layers, release.blocks, source),
        "control_refiner_layers_places": list(range(refiners)) if refiner else None,
        "control_in_dim": release.control_in_dim,
        "add_control_noise_refiner": refiner,
        "all_patch_size": [PATCH],
        "all_f_patch_size": [F_PATCH],
        "dim": release.dim,
        "n_refiner_layers": refiners,
        "n_heads": transformer_config["n_heads"],
        "n_kv_heads": transformer_config["n_kv_heads"],
        "norm_eps": transformer_config.get("norm_eps", 1e-5),
        "qk_norm": transformer_config.get("qk_norm", True),
    }


class ZImageControl(StrictDiffusersModel, ZImageControlNetModel):
    """diffusers' Z-Image control model (the released keys), strict, beside a :class:`ZImageTransformer`.

    :meth:`hints` runs it on a step's inputs: the refiner hints and the main-block hints, scaled.
    """

    released_class_name = CONTROL_CLASS_NAME
    release: ControlRelease | None = None
    # It runs beside the transformer and reads its embedders and refiners: memory modes keep the two on the device
    # together; the qfloat8 modes store its copied blocks' linears in fp8 (VideoX-Fun's control transformer holds
    # them, quantised whole), the modulation staying high precision as in the transformer. 2.0 builds no refiner.
    _runs_beside_transformer = True
    _block_lists = ("control_layers", "control_noise_refiner")
    _fp8_skip_modules: ClassVar[tuple[str, ...]] = ("adaLN_modulation",)

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(ZImageControlNetModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The copied blocks' attention goes through the package's dispatch (SDPA / flash / sage), as the main ones.
        use_zimage_attention([*self.control_layers, *(self.control_noise_refiner or [])])

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        transformer: ZImageTransformer,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> ZImageControl:
        """Load a released control file for ``transformer`` (its release told from the weights), linked to it."""
        state = KIND.read_state(path)
        release = release_of(state)
        config = control_config(release, transformer.config, str(path))
        state = convert_z_image_controlnet_checkpoint_to_diffusers(state, config)  # 2.0: drops the unused refiner
        control = cls.from_state(config, state, str(path), torch_dtype, device)
        control.release = release
        return control.attach(transformer)

    def attach(self, transformer: nn.Module) -> ZImageControl:
        """Read the transformer's embedders and refiners through plain attributes (not submodules: they stay the
        transformer's to move, cast and count)."""
        for name in SHARED_MODULES:
            object.__setattr__(self, name, getattr(transformer, name))
        return self

    def hints(
        self,
        latents: list[torch.Tensor],
        t: torch.Tensor,
        captions: list[torch.Tensor],
        context: torch.Tensor,
        scale: float,
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """(refiner hints by noise-refiner block, main hints by main block), each (B, L, dim) times ``scale``.

        ``latents`` B x (16, 1, h, w), ``t`` (B,) in [0, 1] (1 = clean), ``captions`` B x (L_i, D), ``context``
        (B, control_in_dim, 1, h, w). diffusers' forward computes the refiner hints but keeps them: the last block
        of that stage is listened to for them.
        """
        stage = self.control_noise_refiner if self.add_control_noise_refiner == "control_noise_refiner" else None
        stage = self.control_layers if self.add_control_noise_refiner == "control_layers" else stage
        caught: list[torch.Tensor] = []
        with listening(stage[-1] if stage is not None else None, caught):
            main = self(latents, t, captions, list(context.unbind(0)), conditioning_scale=scale)
        if not caught:
            return {}, main
        refined = caught[0].unbind(0)[:-1]  # the stage's first run: its after_proj outputs, then the stream
        return {place: refined[i] * scale for i, place in enumerate(self.control_refiner_layers_places)}, main


@contextlib.contextmanager
def listening(block: nn.Module | None, caught: list[torch.Tensor]) -> Iterator[None]:
    """Keep every output of ``block`` in ``caught`` while the context lasts (nothing when None)."""
    handle = None if block is None else block.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def refiner_hints_added(transformer: ZImageTransformer, hints: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """While the context lasts, the transformer's noise-refiner block ``i`` adds ``hints[i]`` to its output (as
    VideoX-Fun's control transformer does)."""
    handles = [
        transformer.noise_refiner[place].register_forward_hook(lambda _m, _i, out, hint=hint: out + hint)
        for place, hint in hints.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def control_parameter_count(release: ControlRelease, transformer_config: Mapping[str, Any]) -> int:
    """Parameters of the control model of ``release`` beside ``transformer_config`` (built on the meta device)."""
    with torch.device("meta"):
        model = ZImageControl.from_model_config(control_config(release, transformer_config, "count"))
    return sum(p.numel() for p in model.parameters())
