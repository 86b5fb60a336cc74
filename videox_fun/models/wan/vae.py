"""The Wan video VAE: diffusers' ``AutoencoderKLWan`` plus Wan's latent normalisation and loaders.

The network itself is diffusers' (it is the field's implementation and already has causal
chunked encoding and spatial tiling). What this module adds:

* latents normalised per channel, ``(mu - latents_mean) / latents_std``, as the Wan DiTs expect;
* input checks that diffusers does not make (a frame count that is not 4k+1 would silently lose
  its last frames, a size not divisible by 8 would silently change shape);
* strict loading of both layouts people download: a diffusers folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) and the original ``Wan2.1_VAE.pth`` of the Wan-AI /
  alibaba-pai releases, with every missing / unexpected / mis-shaped key named;
* the reverse key conversion, so a VAE can be saved in the original layout.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from torch import nn

from videox_fun.models.loading import (
    WEIGHT_SUFFIXES,
    CheckpointMismatchError,
    cast_floating,
    load_into,
    read_folder_state_dict,
    read_state_dict,
    rename_key,
    rename_rules,
    strip_prefix,
)

from ...config import read_json_mapping
from ...io.files import atomic_path, reset_tree_modes, save_safetensors
from ..component import OffloadableComponent
from ..cpu_kernels import CPUFastPaths

logger = logging.getLogger(__name__)

# File names of the original-layout VAE in the Wan-AI and alibaba-pai model folders.
ORIGINAL_VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
# Prefixes some single-file exports put in front of every VAE key.
_WRAPPER_PREFIXES = ("first_stage_model.", "vae.")

# The released Wan2.2 VAE (Wan2.2_VAE.pth of Wan2.2-TI2V-5B) as diffusers configures it: 4x16x16
# compression (2x2 patches of pixels, 12 channels in), residual blocks, 48 latent channels.
WAN22_VAE_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "base_dim": 160,
        "decoder_base_dim": 256,
        "z_dim": 48,
        "is_residual": True,
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_temporal": 4,
        "scale_factor_spatial": 16,
        "latents_mean": [
            -0.2289,
            -0.0052,
            -0.1323,
            -0.2339,
            -0.2799,
            0.0174,
            0.1838,
            0.1557,
            -0.1382,
            0.0542,
            0.2813,
            0.0891,
            0.1570,
            -0.0098,
            0.0375,
            -0.1825,
            -0.2246,
            -0.1207,
            -0.0698,
            0.5109,
            0.2665,
            -0.2108,
            -0.2158,
            0.2502,
            -0.2055,
            -0.0322,
            0.1109,
            0.1567,
            -0.0729,
            0.0899,
            -0.2799,
            -0.1230,
            -0.0313,
            -0.1649,
            0.0117,
            0.0723,
            -0.2839,
            -0.2083,
            -0.0520,
            0.3748,
            0.0152,
            0.1957,
            0.1433,
            -0.2944,
            0.3573,
            -0.0548,
            -0.1681,
            -0.0667,
        ],
        "latents_std": [
            0.4765,
            1.0364,
            0.4514,
            1.1677,
            0.5313,
            0.4990,
            0.4818,
            0.5013,
            0.8158,
            1.0344,
            0.5894,
            1.0901,
            0.6885,
            0.6165,
            0.8454,
            0.4978,
            0.5759,
            0.3523,
            0.7135,
            0.6804,
            0.5833,
            1.4146,
            0.8986,
            0.5659,
            0.7069,
            0.5338,
            0.4889,
            0.4917,
            0.4069,
            0.4999,
            0.6866,
            0.4093,
            0.5709,
            0.6065,
            0.6415,
            0.4944,
            0.5726,
            1.2042,
            0.5458,
            1.6887,
            0.3971,
            1.0600,
            0.3943,
            0.5537,
            0.5444,
            0.4089,
            0.7468,
            0.7744,
        ],
    }
)


def tiny_vae_config(base_dim: int = 8, z_dim: int = 16) -> dict[str, Any]:
    """A small ``AutoencoderKLWan`` config for tests: the released structure with few channels.

    It keeps what the original-layout key conversion relies on: four levels (``dim_mult`` of
    length 4, so 8x spatial and, with two temporal downsamples, 4x temporal compression), two
    residual blocks per level and no attention outside the middle blocks. Only the width shrinks.
    """
    config: dict[str, Any] = {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
    }
    if z_dim != 16:  # the Wan2.1 statistics have 16 entries; other widths get an identity normalisation
        config["latents_mean"] = [0.0] * z_dim
        config["latents_std"] = [1.0] * z_dim
    return config


def tiny_wan22_vae_config(base_dim: int = 8) -> dict[str, Any]:
    """A small config of the Wan2.2 VAE's structure: residual blocks, 2x2 patchified pixels, z_dim 48, 4x16x16."""
    return {
        **tiny_vae_config(base_dim, z_dim=48),
        "in_channels": 12,
        "out_channels": 12,
        "is_residual": True,
        "patch_size": 2,
        "scale_factor_spatial": 16,
    }


# --------------------------------------------------------------------------------------------
# Key conversion between the original Wan layout and diffusers
# --------------------------------------------------------------------------------------------

# Inside a residual block: original ``residual`` Sequential indices <-> diffusers names.
_RESNET_NAMES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6"}
_RESNET_NAMES["conv_shortcut"] = "shortcut"
_RESNET = "(norm1|conv1|norm2|conv2|conv_shortcut)"


def _original_key_rules(res_blocks: int) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    """Regex rules from diffusers names to original names for a VAE with ``res_blocks`` per level.

    The original decoder is one flat Sequential per level: ``res_blocks + 1`` residual blocks
    then one upsampler, so diffusers' ``up_blocks.i.resnets.j`` is ``upsamples.{i * (res_blocks + 2) + j}``.
    The encoder is flat in both layouts (same indices, only the residual names differ).
    """
    per_level = res_blocks + 2
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"quant_conv\.(.+)", lambda m: f"conv1.{m[1]}"),
        (r"post_quant_conv\.(.+)", lambda m: f"conv2.{m[1]}"),
        (r"(encoder|decoder)\.conv_in\.(.+)", lambda m: f"{m[1]}.conv1.{m[2]}"),
        (r"(encoder|decoder)\.norm_out\.(.+)", lambda m: f"{m[1]}.head.0.{m[2]}"),
        (r"(encoder|decoder)\.conv_out\.(.+)", lambda m: f"{m[1]}.head.2.{m[2]}"),
        (
            rf"(encoder|decoder)\.mid_block\.resnets\.([01])\.{_RESNET}\.(.+)",
            lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{_RESNET_NAMES[m[3]]}.{m[4]}",
        ),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", lambda m: f"{m[1]}.middle.1.{m[2]}"),
        (
            rf"encoder\.down_blocks\.(\d+)\.{_RESNET}\.(.+)",
            lambda m: f"encoder.downsamples.{m[1]}.{_RESNET_NAMES[m[2]]}.{m[3]}",
        ),
        (
            r"encoder\.down_blocks\.(\d+)\.((?:resample|time_conv)\..+)",
            lambda m: f"encoder.downsamples.{m[1]}.{m[2]}",
        ),
        (
            rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET}\.(.+)",
            lambda m: f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}.{_RESNET_NAMES[m[3]]}.{m[4]}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
            lambda m: f"decoder.upsamples.{int(m[1]) * per_level + res_blocks + 1}.{m[2]}",
        ),
    ]
    return [(re.compile(pattern), rename) for pattern, rename in rules]


def _wan22_key_pairs(res_blocks: int) -> list[tuple[str, str]]:
    """(original, diffusers) key templates of the Wan2.2 VAE.

    Its original levels nest one list each: ``encoder.downsamples.{i}.downsamples.{j}`` holds
    ``res_blocks`` residual blocks then the downsampler; ``decoder.upsamples.{i}.upsamples.{j}``
    ``res_blocks + 1`` then the upsampler. diffusers names these ``resnets.{j}`` and
    ``downsampler`` / ``upsampler`` (no index). Everything else is named as in Wan2.1.
    """
    pairs = []
    for ours, original in _RESNET_NAMES.items():
        for side in ("encoder", "decoder"):  # middle: residual (0), attention (1), residual (2)
            for block in (0, 1):
                pairs.append(
                    (
                        f"{side}.middle.{2 * block}.{original}.{{tail}}",
                        f"{side}.mid_block.resnets.{block}.{ours}.{{tail}}",
                    )
                )
        down, up = "encoder.downsamples.{i}.downsamples.{j}", "decoder.upsamples.{i}.upsamples.{j}"
        pairs.append((f"{down}.{original}.{{tail}}", f"encoder.down_blocks.{{i}}.resnets.{{j}}.{ours}.{{tail}}"))
        pairs.append((f"{up}.{original}.{{tail}}", f"decoder.up_blocks.{{i}}.resnets.{{j}}.{ours}.{{tail}}"))
    pairs += [
        (f"encoder.downsamples.{{i}}.downsamples.{res_blocks}.{{tail}}", "encoder.down_blocks.{i}.downsampler.{tail}"),
        (f"decoder.upsamples.{{i}}.upsamples.{res_blocks + 1}.{{tail}}", "decoder.up_blocks.{i}.upsampler.{tail}"),
        ("conv1.{p}", "quant_conv.{p}"),
        ("conv2.{p}", "post_quant_conv.{p}"),
    ]
    for side in ("encoder", "decoder"):
        pairs += [
            (f"{side}.conv1.{{p}}", f"{side}.conv_in.{{p}}"),
            (f"{side}.head.0.{{tail}}", f"{side}.norm_out.{{tail}}"),
            (f"{side}.head.2.{{p}}", f"{side}.conv_out.{{p}}"),
            (f"{side}.middle.1.{{tail}}", f"{side}.mid_block.attentions.0.{{tail}}"),
        ]
    return pairs


def _rename_all(
    state: Mapping[str, torch.Tensor], rules: Sequence[tuple[re.Pattern[str], str]], direction: str
) -> dict[str, torch.Tensor]:
    """Every key renamed by the first matching rule; keys no rule knows fail, named."""
    converted, unknown = {}, []
    for key, value in state.items():
        renamed = rename_key(key, rules)
        if renamed is None:
            unknown.append(key)
        else:
            converted[renamed] = value
    if unknown:
        raise CheckpointMismatchError(f"no {direction} name for Wan2.2 VAE keys: {sorted(unknown)[:12]}")
    return converted


def is_wan22_structure(config: Mapping[str, Any]) -> bool:
    """Whether a VAE config is the Wan2.2 structure (residual blocks, patchified pixels)."""
    return bool(config.get("is_residual") or config.get("patch_size"))


def wan_vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKLWan`` state dict to the original ``Wan2.1_VAE.pth`` key layout.

    Raises :class:`CheckpointMismatchError` naming any key no rule knows, so nothing is passed
    through unconverted.
    """
    if is_wan22_structure(config):
        pairs = _wan22_key_pairs(int(config.get("num_res_blocks", 2)))
        return _rename_all(state, rename_rules(pairs, reverse=True), "original-layout")
    rules = _original_key_rules(int(config.get("num_res_blocks", 2)))
    converted, unknown = {}, []
    for key, value in state.items():
        for pattern, rename in rules:
            match = pattern.fullmatch(key)
            if match:
                converted[rename(match)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"no original-layout name for diffusers VAE keys: {sorted(unknown)[:12]}")
    return converted


def wan_vae_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout Wan2.1 VAE state dict to diffusers names (diffusers' own converter).

    Keys it does not know are passed through unchanged; the strict check at load time names them.
    """
    return convert_wan_vae_to_diffusers(dict(state))


def is_original_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a VAE state dict has original Wan key names (``encoder.conv1``, ``decoder.upsamples``...)."""
    return "encoder.conv1.weight" in state or any(
        k.startswith(("decoder.upsamples.", "encoder.downsamples.")) for k in state
    )


def has_nested_levels(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether an original-layout VAE state dict nests a list per level, as the Wan2.2 VAE does."""
    return any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", key) for key in state)


def is_diffusers_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a VAE state dict uses diffusers' key names (``encoder.conv_in``, ``decoder.up_blocks``...)."""
    return "encoder.conv_in.weight" in state or any(
        k.startswith(("decoder.up_blocks.", "encoder.down_blocks.")) for k in state
    )


# --------------------------------------------------------------------------------------------
# Finding and reading checkpoints
# --------------------------------------------------------------------------------------------


def _read_vae_config(path: Path) -> dict[str, Any] | None:
    """The JSON at ``path`` if it is a Wan VAE config; ``None`` if absent or another model's config.

    Wan release folders keep the transformer's ``config.json`` next to ``Wan2.1_VAE.pth``: that
    one must not be taken for the VAE's.
    """
    if not path.is_file():
        return None
    config = read_json_mapping(path, "VAE config")
    is_vae = config.get("_class_name") == "AutoencoderKLWan" or {"base_dim", "z_dim", "dim_mult"} <= config.keys()
    if not is_vae:
        logger.info("%s is not a Wan VAE config (another model's?): using the VAE defaults", path)
        return None
    return config


def _find_original_file(folder: Path) -> Path:
    """The original-layout VAE file of a model folder (``Wan2.1_VAE.pth`` or similar)."""
    named = [folder / name for name in ORIGINAL_VAE_FILES if (folder / name).is_file()]
    # Hidden files are skipped: a save killed midway leaves its temporary (``.{stem}.<random>.partial.pth``).
    weights = (p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and "vae" in p.name.lower())
    candidates = named or sorted(p for p in weights if not p.name.startswith("."))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise FileNotFoundError(
            f"cannot tell which file in {folder} is the Wan VAE: expected a diffusers VAE folder "
            f"(config.json + diffusion_pytorch_model.safetensors), a 'vae' subfolder, or one of "
            f"{ORIGINAL_VAE_FILES}; found: {found}"
        )
    return candidates[0]


def build_checked(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype
) -> AutoencoderKLWan:
    """A VAE of ``config`` with ``state``'s weights in ``dtype``: the state (original or diffusers names, a
    ``vae.`` / ``first_stage_model.`` wrapper prefix off) converted to diffusers names if needed, then loaded
    strictly into a model built on the meta device. The one strict build of the VAE, for folders and single
    files alike."""
    state = strip_prefix(state, _WRAPPER_PREFIXES)
    if is_original_layout(state):
        if is_wan22_structure(config):
            pairs = _wan22_key_pairs(int(config.get("num_res_blocks", 2)))
            state = _rename_all(state, rename_rules(pairs), "diffusers")
        else:
            state = wan_vae_to_diffusers(state)
    elif not is_diffusers_layout(state):
        raise CheckpointMismatchError(
            f"{source} is not a Wan VAE checkpoint: neither 'encoder.conv1.weight' (original layout) nor "
            f"'encoder.conv_in.weight' (diffusers layout) is among its keys, e.g. {sorted(state)[:5]}"
        )
    # Cast the tensors, not the model: diffusers' model.to(dtype) warns about fp32-kept modules.
    state = cast_floating(state, dtype)
    with torch.device("meta"):  # no wasted random init: load_into assigns the checkpoint tensors
        model = AutoencoderKLWan.from_config(dict(config))
    return load_into(model, state, source)


def _load_any(path: Path, dtype: torch.dtype) -> AutoencoderKLWan:
    if not path.exists():
        raise FileNotFoundError(f"Wan VAE not found: {path}")
    if path.is_file():
        # A single file: its config is a VAE config.json beside it, else the release its keys show.
        state = read_state_dict(path)
        config = _read_vae_config(path.parent / "config.json") or (
            dict(WAN22_VAE_CONFIG) if has_nested_levels(state) else {}
        )
        return build_checked(config, state, str(path), dtype)
    config = _read_vae_config(path / "config.json")
    if config is not None and any(path.glob("diffusion_pytorch_model*")):
        # A diffusers folder. Not AutoencoderKLWan.from_pretrained: it only warns about unexpected
        # keys and randomly initialises missing ones, where we must fail and name them.
        return build_checked(config, read_folder_state_dict(path), str(path), dtype)
    if config is None and (path / "vae").is_dir():
        return _load_any(path / "vae", dtype)  # a diffusers model root
    return _load_any(_find_original_file(path), dtype)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class WanVAE(OffloadableComponent, nn.Module):
    """Wan video VAE with normalised latents: ``(B, 3, F, H, W)`` in [-1, 1] <-> ``(B, z, F', H', W')``.

    ``F' = (F - 1) / 4 + 1`` and ``H' = H / s``, ``W' = W / s`` with ``s`` = :attr:`spatial_compression`
    (8 for Wan2.1). The wrapped diffusers model is :attr:`model`.
    """

    def __init__(self, model: AutoencoderKLWan) -> None:
        super().__init__()
        self.model = model
        z_dim = model.config.z_dim
        mean, std = model.config.latents_mean, model.config.latents_std
        if len(mean) != z_dim or len(std) != z_dim:
            raise ValueError(f"latents_mean / latents_std have {len(mean)} / {len(std)} entries, z_dim is {z_dim}")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> WanVAE:
        """A randomly initialised VAE (``None``: the Wan2.1 defaults; see :func:`tiny_vae_config`)."""
        return cls(AutoencoderKLWan.from_config(dict(config or {})))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> WanVAE:
        """Load a Wan VAE strictly (every missing / unexpected / mis-shaped key is named).

        ``path`` may be a diffusers VAE folder (``config.json`` + weights), a diffusers model
        root with a ``vae/`` subfolder, an original-layout file (``Wan2.1_VAE.pth``, or a
        ``.safetensors`` with the same keys) or a model folder holding one. An original file
        takes its config from a VAE ``config.json`` beside it, else the Wan2.1 defaults.
        """
        return cls(_load_any(Path(path), dtype)).eval()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Save as a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        self.model.save_pretrained(str(folder))
        return reset_tree_modes(folder)  # diffusers' safetensors files are written 0600

    def save_original(self, path: str | os.PathLike, write_config: bool = True) -> Path:
        """Save the weights in the original Wan key layout (``.pth`` pickle or ``.safetensors``), atomically.

        With ``write_config`` a VAE ``config.json`` is written beside the file, unless a
        ``config.json`` of another model (a Wan release's transformer config) is already there.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = wan_vae_to_original(self.model.state_dict(), self.config)
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        with atomic_path(path) as temporary:
            if path.suffix == ".safetensors":
                save_safetensors(state, temporary)
            else:
                torch.save(state, temporary)
        config_path = path.parent / "config.json"
        if write_config:
            if config_path.exists() and _read_vae_config(config_path) is None:
                logger.warning("%s belongs to another model: the VAE config is not written", config_path)
            else:
                self.model.to_json_file(str(config_path))
        return path

    # -- properties ------------------------------------------------------------------------------

    @property
    def config(self) -> Mapping[str, Any]:
        """The diffusers config of the wrapped model."""
        return self.model.config

    @property
    def z_dim(self) -> int:
        """Latent channels (16 for Wan2.1, 48 for Wan2.2)."""
        return int(self.config.z_dim)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame after the first: 2 per temporal downsample (4 for Wan)."""
        return 2 ** sum(bool(t) for t in self.config.temperal_downsample)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel (H and W): 2 per level, times the patch size (8 for 2.1, 16 for 2.2)."""
        return 2 ** (len(self.config.dim_mult) - 1) * int(self.config.patch_size or 1)

    @property
    def video_channels(self) -> int:
        """Channels of the pixel video (3); the Wan2.2 VAE patchifies them 2x2 into its 12 input channels."""
        return int(self.config.in_channels) // int(self.config.patch_size or 1) ** 2

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(F', H', W')`` for a video of ``num_frames x height x width`` (validated)."""
        self._check_size(num_frames, height, width)
        s = self.spatial_compression
        return (num_frames - 1) // self.temporal_compression + 1, height // s, width // s

    def _check_size(self, num_frames: int, height: int, width: int) -> None:
        t, s = self.temporal_compression, self.spatial_compression
        if num_frames < 1 or (num_frames - 1) % t:
            below = (num_frames - 1) // t * t + 1
            raise ValueError(f"the Wan VAE encodes {t}k+1 frames; got {num_frames} (use {below} or {below + t})")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}; got {height}x{width}")

    # -- normalisation -------------------------------------------------------------------------

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Built from the config at float32 on each call rather than kept as buffers, which
        # vae.to(torch.bfloat16) would round to three significant digits.
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device).view(shape)
        return mean, std

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents -> the normalised latents the DiT uses: ``(z - mean) / std`` per channel."""
        mean, std = self._statistics(latents.device)
        return ((latents.float() - mean) / std).to(latents.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        mean, std = self._statistics(latents.device)
        return (latents.float() * std + mean).to(latents.dtype)

    # -- tiling ----------------------------------------------------------------------------------

    def enable_tiling(self, tile_size: int | tuple[int, int] = 256, tile_stride: int | tuple[int, int] = 192) -> None:
        """Encode / decode large videos in overlapping spatial tiles (diffusers' tiling), in pixels.

        ``tile_size`` and ``tile_stride`` are ``(height, width)`` or one number for both; both
        must be multiples of :attr:`spatial_compression`, and the overlap ``size - stride`` is
        blended. Videos no larger than a tile are processed whole.
        """
        size = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
        stride = (tile_stride, tile_stride) if isinstance(tile_stride, int) else tuple(tile_stride)
        s = self.spatial_compression
        if any(v <= 0 or v % s for v in (*size, *stride)):
            raise ValueError(f"tile size {size} and stride {stride} must be positive multiples of {s}")
        if stride[0] > size[0] or stride[1] > size[1]:
            raise ValueError(f"tile stride {stride} must not exceed the tile size {size} (tiles would leave gaps)")
        self.model.enable_tiling(size[0], size[1], stride[0], stride[1])

    def disable_tiling(self) -> None:
        """Process every video whole again."""
        self.model.use_tiling = False

    @property
    def tiling(self) -> bool:
        """Whether :meth:`enable_tiling` is on (every encode and decode then tiles)."""
        return bool(self.model.use_tiling)

    # -- encode / decode -------------------------------------------------------------------------

    def encode(
        self,
        video: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
    ) -> torch.Tensor:
        """Video ``(B, 3, F, H, W)`` in [-1, 1] -> normalised latents ``(B, z, (F-1)/4+1, H/s, W/s)``.

        The posterior mode by default; a sample drawn with ``generator`` when ``sample=True``.
        """
        if video.ndim != 5 or video.shape[1] != self.video_channels:
            raise ValueError(f"video must be (B, {self.video_channels}, F, H, W), got {tuple(video.shape)}")
        self._check_size(*video.shape[2:])
        video = video.to(device=self.device, dtype=self.dtype)  # (B, 3, F, H, W)
        with CPUFastPaths():  # fast CPU conv3d + normalize; a no-op elsewhere
            posterior = self.model.encode(video).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mode()  # (B, z, F', H', W')
        return self.normalize(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(B, z, F', H', W')`` -> video ``(B, 3, 4(F'-1)+1, H's, W's)`` in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be (B, {self.z_dim}, F, H, W), got {tuple(latents.shape)}")
        z = self.denormalize(latents.to(device=self.device, dtype=self.dtype))  # (B, z, F', H', W')
        with CPUFastPaths():  # fast CPU conv3d + normalize; a no-op elsewhere
            video = self.model.decode(z).sample  # (B, 3, F, H, W)
        return video.clamp(-1.0, 1.0)

    def forward(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruct a video: :meth:`decode` of :meth:`encode`."""
        return self.decode(self.encode(video, generator=generator, sample=sample))
