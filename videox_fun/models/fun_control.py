"""What VideoX-Fun's Fun control files share across bases (FLUX.2, Qwen-Image, Z-Image): telling a base's control
file from another base's in one line, reading one (a merged file's base weights dropped), the places of its copied
blocks, and the side stream of FLUX.2's and Qwen-Image's releases.

**The side stream** (FLUX.2-dev-Fun-Controlnet-Union, Qwen-Image-2512-Fun-Controlnet-Union; VACE's design): the
control context (patchified control latents, a known-pixels mask and the masked image's latents, one token per image
token) goes through ``control_img_in``, then through copies of the main dual-stream block (``before_proj`` on the
first adds the main image stream's embedded tokens; ``after_proj`` on each gives a hint). Hint ``i``, times
``control_context_scale``, is added to the main image stream after main block ``control_layers[i]``. The copies'
text stream runs on from block to block, the main blocks' does not see it. No diffusers class holds these weights
(diffusers' ``QwenImageControlNetModel`` is InstantX's, another design): :class:`SideStreamControl` holds them,
beside the family's diffusers transformer, and :func:`side_stream_attached` joins the two with hooks, so the
transformer runs its own forward unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..runtime.points import SEQUENCE_SIDE_MODEL
from .component import StrictDiffusersModel
from .loading import count_blocks, drop_prefixed, read_header, read_weights_at

# Keys of each base's control files, to name what was given instead (model-facts: the VideoX-Fun releases). The
# first prefix that matches names the file.
FOREIGN_MARKERS = {
    "control_transformer_blocks.": "a FLUX.2 Fun control file",
    "control_blocks.": "a Qwen-Image Fun control file",
    "control_all_x_embedder.": "a Z-Image Fun control file",
    "control_layers.": "a Z-Image Fun control file",
    "control_img_in.": "a FLUX.2 / Qwen-Image Fun control file",
    "vace_blocks.": "a Wan VACE file",
    "controlnet_blocks.": "another model's ControlNet",
}
MASK_CHANNELS = 4  # the known-pixels mask in the packed context: one value per pixel of a 2x2 latent patch


@dataclass(frozen=True)
class ControlFileKind:
    """What one base's Fun control files hold: a key every one has and the prefixes of all their keys."""

    label: str  # the base, in messages ("FLUX.2")
    marker: str
    prefixes: tuple[str, ...]

    def check(self, names: set[str] | Mapping[str, Any], source: str) -> None:
        """Fail in one line when the names are not of this base's control file (another base's control file, a
        transformer), before any weight is read when given a header's names."""
        if self.marker in names:
            return
        for prefix, what in FOREIGN_MARKERS.items():
            if prefix not in self.prefixes and any(name.startswith(prefix) for name in names):
                raise ValueError(f"{source}: {what} ({prefix}*), not a {self.label} Fun control file ({self.marker})")
        sample = ", ".join(sorted(names)[:3])
        raise ValueError(f"{source}: not a {self.label} Fun control file (no {self.marker}; its keys start {sample})")

    def read_state(self, path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """The control tensors of a file (or a folder's weights), checked; base-transformer tensors beside them (a
        merged file) are dropped, the folder's transformer serving instead."""
        path = Path(path)
        state = read_weights_at(path)
        self.check(state, str(path))
        others = tuple({key.split(".")[0] + "." for key in state if not key.startswith(self.prefixes)})
        drop_prefixed(state, others, "not control weights: the folder's transformer serves", str(path))
        return state

    def read_header(self, path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """A control file's tensors on the meta device (its header alone), checked to be this base's."""
        tensors = read_header(path).tensors
        self.check(set(tensors), str(path))
        return tensors


def spaced_places(main_blocks: int, control_blocks: int, source: str) -> list[int]:
    """Where the copies sit: evenly from block 0 over the main blocks (the places are not in the weights; every
    release spaces them so: FLUX.2 4 of 8 at [0, 2, 4, 6], Qwen-Image 5 of 60 at [0, 12, ..., 48], Z-Image 15 of 30)."""
    if control_blocks < 1 or main_blocks % control_blocks:
        raise ValueError(f"{source}: {control_blocks} control blocks do not space evenly over {main_blocks} main "
                         "blocks")  # fmt: skip
    return list(range(0, main_blocks, main_blocks // control_blocks))


@dataclass(frozen=True)
class SideRelease:
    """A side-stream control file as its shapes tell it."""

    label: str  # the release ("FLUX.2-dev-Fun-Controlnet-Union")
    control_in_dim: int  # latent channels (control only) | 2 x latent channels + 4 (control, mask, masked image)
    blocks: int
    dim: int
    latent_channels: int  # of a packed latent token of the base (its VAE's channels x 4)

    @property
    def name(self) -> str:
        """The release's name for messages and the sidecar."""
        return f"{self.label} ({self.blocks} control blocks)"

    @property
    def inpaint(self) -> bool:
        """Whether its context carries the known-pixels mask and the masked image's latents (control_inpaint)."""
        return self.control_in_dim == 2 * self.latent_channels + MASK_CHANNELS


class SideStreamControl(StrictDiffusersModel, ModelMixin, ConfigMixin):
    """The side stream's weights: ``control_img_in`` and the copied blocks (under :attr:`blocks_name`), each with
    ``after_proj``, the first with ``before_proj``. Subclasses build one copy (:meth:`make_block`) and read their
    base's transformer config (:meth:`config_for`).

    ``control_layers`` (config): the main block after which each copy's hint is added.
    """

    config_name = "config.json"
    kind: ClassVar[ControlFileKind]
    blocks_name: ClassVar[str]  # the copies' key prefix in the released file
    main_blocks_name: ClassVar[str] = "transformer_blocks"  # the transformer's blocks the hints go to
    release_label: ClassVar[str]
    latent_channels: ClassVar[int]  # of a packed latent token of the base: its VAE's channels x 4
    release: SideRelease | None = None

    def build(self, control_layers: Sequence[int], control_in_dim: int, dim: int) -> None:
        """Make the copies (one per place), their projections and ``control_img_in``: diffusers zero-initialises
        nothing here, VideoX-Fun zero-initialises the projections (an untrained stream steers nothing)."""
        if not control_layers or control_layers[0] != 0:
            raise ValueError(f"control layers must start at block 0 (before_proj joins there), got {control_layers}")
        blocks = nn.ModuleList()
        for index in range(len(control_layers)):
            block = self.make_block()
            if index == 0:
                block.before_proj = zero_linear(dim)
            block.after_proj = zero_linear(dim)
            blocks.append(block)
        setattr(self, self.blocks_name, blocks)
        self.control_img_in = nn.Linear(control_in_dim, dim)

    def make_block(self) -> nn.Module:
        """One copy of the base's main dual-stream block, as the config says."""
        raise NotImplementedError

    @classmethod
    def block_config(cls, transformer_config: Mapping[str, Any]) -> dict[str, Any]:
        """The copies' settings besides their heads, from the transformer's config (none by default)."""
        return {}

    @classmethod
    def config_for(cls, release: SideRelease, transformer_config: Mapping[str, Any], source: str) -> dict[str, Any]:
        """The control config of ``release`` beside a transformer of ``transformer_config`` (its copies spaced over
        the main blocks)."""
        heads, head_dim = transformer_config["num_attention_heads"], transformer_config["attention_head_dim"]
        places = cls.checked_config(release, transformer_config, heads * head_dim, transformer_config["num_layers"],
                                    source)  # fmt: skip
        return {"_class_name": cls.released_class_name, "control_layers": places,
                "control_in_dim": release.control_in_dim, "num_attention_heads": heads, "attention_head_dim": head_dim,
                **cls.block_config(transformer_config)}  # fmt: skip

    @classmethod
    def random_state(
        cls, transformer_config: Mapping[str, Any], blocks: int, inpaint: bool = True, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """A control state of ``blocks`` copies beside a transformer of ``transformer_config`` in the released keys,
        every weight random, the projections too (for tiny control files)."""
        latent = cls.latent_channels
        dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
        release = SideRelease(cls.release_label, 2 * latent + MASK_CHANNELS if inpaint else latent, blocks, dim, latent)
        torch.manual_seed(seed)
        model = cls.from_model_config(cls.config_for(release, transformer_config, "random"))
        return with_random_projections(model).state_dict()

    @classmethod
    def release_of(cls, state: Mapping[str, torch.Tensor]) -> SideRelease:
        """The release of a control state, from shapes alone (meta tensors will do)."""
        dim, control_in_dim = state["control_img_in.weight"].shape
        blocks = count_blocks(state, cls.blocks_name + ".")
        return SideRelease(cls.release_label, control_in_dim, blocks, dim, cls.latent_channels)

    @classmethod
    def read_release(cls, path: str | os.PathLike) -> SideRelease:
        """A control file's release from its header alone (no weights read), checked to be this base's."""
        return cls.release_of(cls.kind.read_header(path))

    @classmethod
    def checked_config(
        cls, release: SideRelease, transformer_config: Mapping[str, Any], dim: int, main_blocks: int, source: str
    ) -> list[int]:
        """The places of ``release``'s copies beside a transformer ``dim`` wide of ``main_blocks`` blocks, the width
        and the context channels checked (a control file for another size of the base is one line)."""
        if release.dim != dim:
            raise ValueError(f"{source}: its control blocks are {release.dim} wide, the transformer's {dim}: a "
                             f"control file for another {cls.kind.label} size")  # fmt: skip
        latent = cls.latent_channels
        if transformer_config["in_channels"] != latent:
            raise ValueError(f"{source}: a {cls.kind.label} control file, for a transformer reading {latent} "
                             f"channels a token; this one reads {transformer_config['in_channels']}")  # fmt: skip
        if release.control_in_dim not in (latent, 2 * latent + MASK_CHANNELS):
            raise ValueError(f"{source}: a control context of {release.control_in_dim} channels; {cls.kind.label} "
                             f"reads {latent} (control) or {2 * latent + MASK_CHANNELS} (control, mask, masked "
                             "image)")  # fmt: skip
        return spaced_places(main_blocks, release.blocks, source)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        transformer: nn.Module,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> SideStreamControl:
        """Load a released control file for ``transformer`` strictly (every key and shape), its release told from
        the weights."""
        state = cls.kind.read_state(path)
        release = cls.release_of(state)
        control = cls.from_state(cls.config_for(release, transformer.config, str(path)), state, str(path),
                                 torch_dtype, device)  # fmt: skip
        control.release = release
        return control

    @property
    def copies(self) -> nn.ModuleList:
        """The copied blocks, in place order."""
        return getattr(self, self.blocks_name)

    def hints(self, x: torch.Tensor, context: torch.Tensor, block_inputs: Mapping[str, Any]) -> list[torch.Tensor]:
        """One hint (B, N, dim) per copy: ``x`` (B, N, dim) the main image stream entering block 0, ``context``
        (1 or B, N, control_in_dim) the control tokens, ``block_inputs`` the rest of block 0's arguments (the
        embedded text, modulation, rotary tables), whose text stream runs on through the copies."""
        inputs = dict(block_inputs)
        c = self.control_img_in(context.to(x.dtype))  # (1 | B, N, dim)
        found = []
        for index, block in enumerate(self.copies):
            if index == 0:
                c = block.before_proj(c) + x  # (B, N, dim)
            inputs["encoder_hidden_states"], c = block(hidden_states=c, **inputs)
            found.append(block.after_proj(c))
        return found


def zero_linear(dim: int) -> nn.Linear:
    """A dim -> dim projection starting at zero (VideoX-Fun's initialisation of before_proj / after_proj)."""
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@contextlib.contextmanager
def side_stream_attached(
    transformer: nn.Module, control: SideStreamControl, context: torch.Tensor, scale: float
) -> Iterator[None]:
    """While the context lasts, every forward of ``transformer`` runs ``control``'s copies on main block 0's inputs
    and adds hint ``i`` times ``scale`` to the image stream after main block ``control_layers[i]``.

    Hooks, not a second forward: the transformer's own forward (and every runtime feature on it) stays as it is.
    Main blocks return ``(text, image)``.
    """
    blocks = getattr(transformer, control.main_blocks_name)
    signature = inspect.signature(blocks[0].forward)  # checkpointed blocks are called positionally
    hints: list[torch.Tensor] = []

    def compute(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = signature.bind(*args, **kwargs).arguments
        hints[:] = [hint * scale for hint in control.hints(inputs.pop("hidden_states"), context, inputs)]

    def adder(index: int) -> Callable[[nn.Module, tuple, tuple], tuple]:
        return lambda _module, _inputs, out: (out[0], out[1] + hints[index])

    handles = [blocks[0].register_forward_pre_hook(compute, with_kwargs=True)]
    handles += [blocks[place].register_forward_hook(adder(i)) for i, place in enumerate(control.config.control_layers)]
    # Under sequence parallelism block 0's inputs are this rank's tokens: the copies run on them alike.
    split = getattr(transformer, SEQUENCE_SIDE_MODEL, None)
    try:
        with split(control) if split is not None else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
        hints.clear()


def with_random_projections(model: nn.Module) -> nn.Module:
    """``model`` with every ``before_proj`` / ``after_proj`` drawn at random (released ones are trained, zero ones
    would steer nothing): for tiny control files."""
    for name, module in model.named_modules():
        if name.endswith(("before_proj", "after_proj")):
            module.reset_parameters()
    return model


def control_parameter_count(cls: type[SideStreamControl], config: Mapping[str, Any]) -> int:
    """Parameters of a control model of ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = cls.from_model_config(config)
    return sum(p.numel() for p in model.parameters())
