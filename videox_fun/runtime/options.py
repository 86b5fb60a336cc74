"""Command-line flags of the speed and memory features, and attaching them to a loaded pipeline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..argparsing import DefaultsHelpFormatter
from .cache import CALIBRATION_FILE, FirstBlockCache, StepCache, TeaCache, coefficients_for
from .offload import MEMORY_MODES

if TYPE_CHECKING:
    from ..models.wan.transformer import WanTransformer3DModel
    from ..pipelines.wan import WanPipeline

logger = logging.getLogger(__name__)

CACHES = ("none", "teacache", "first-block")
DEFAULT_THRESHOLDS = {"teacache": 0.1, "first-block": 0.05}
DEFAULT_SKIP_START_STEPS = 5
# Flags that only mean something with a step cache: given without --cache they would be ignored.
CACHE_FLAGS = ("cache_threshold", "teacache_indicator", "num_skip_start_steps", "cache_offload_residuals")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Memory mode, fp8, step cache, CFG, compile and RIFLEx flags."""
    group = parser.add_argument_group("speed and memory")
    group.add_argument(
        "--gpu-memory-mode",
        choices=MEMORY_MODES,
        default="model_full_load",
        help="where weights live while generating (default model_full_load)",
    )
    group.add_argument(
        "--resident-blocks",
        type=int,
        default=4,
        help="model_group_offload: transformer blocks kept on the GPU (default 4)",
    )
    group.add_argument(
        "--fp8",
        choices=("plain", "scaled"),
        default="plain",
        help="fp8 kind of the *_qfloat8 modes: plain cast or per-channel scaled (default plain)",
    )
    group.add_argument(
        "--transformer-path",
        type=Path,
        help="load the transformer weights from this file or (sharded) folder: original, ComfyUI (fp8_scaled "
        "too) or diffusers names; the low-noise expert's on Wan2.2 A14B",
    )
    group.add_argument(
        "--transformer-high-path",
        type=Path,
        help="Wan2.2 A14B: the high-noise expert's weights from this file or folder",
    )
    lora = parser.add_argument_group("LoRA (merged into the transformer before offload and fp8)")
    lora.add_argument(
        "--lora-path",
        action="append",
        help="LoRA .safetensors (ours, ComfyUI, diffusers or VideoX-Fun/kohya keys), or a file name under "
        "models/Personalized_Model; repeat for several",
    )
    lora.add_argument(
        "--lora-weight",
        type=float,
        action="append",
        help="strength of each LoRA: one for all or one per --lora-path (default 1.0)",
    )
    lora.add_argument(
        "--lora-high-path",
        action="append",
        help="Wan2.2 A14B: LoRA for the high-noise expert (--lora-path is then the low-noise one's)",
    )
    lora.add_argument("--lora-high-weight", type=float, action="append", help="strength of each --lora-high-path")
    group.add_argument("--cache", choices=CACHES, default="none", help="step cache (default none)")
    group.add_argument(
        "--enable-teacache", dest="cache", action="store_const", const="teacache", help="same as --cache teacache"
    )
    group.add_argument(
        "--teacache-threshold",
        "--cache-threshold",
        dest="cache_threshold",
        type=float,
        help="skip while the accumulated change stays below this (default 0.1 TeaCache, 0.05 first-block)",
    )
    group.add_argument(
        "--teacache-indicator",
        choices=("time_embedding", "time_projection"),
        help="what TeaCache compares across steps (default: time_projection for Wan2.2 A14B, whose "
        "published set is for it, else time_embedding)",
    )
    group.add_argument(
        "--num-skip-start-steps",
        type=int,
        help=f"steps computed in full before caching starts (default {DEFAULT_SKIP_START_STEPS})",
    )
    group.add_argument("--cache-offload-residuals", action="store_true", help="keep cached residuals in CPU memory")
    group.add_argument(
        "--cfg-skip-ratio",
        type=float,
        default=0.0,
        help="share of the last steps run without the unconditional pass (default 0)",
    )
    group.add_argument(
        "--cfg-sequential",
        action="store_true",
        help="run cond and uncond passes one after the other (less memory) instead of batched",
    )
    group.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    group.add_argument(
        "--riflex-k",
        type=int,
        help="RIFLEx: lower this frame frequency (6 for Wan2.1) to generate past the trained length",
    )


def check_runtime_options(args: argparse.Namespace) -> None:
    """Fail on speed / memory / weight flags that cannot work or would be ignored, before loading."""
    if not 0.0 <= args.cfg_skip_ratio <= 1.0:
        raise ValueError(f"--cfg-skip-ratio is a share of the steps, between 0 and 1; got {args.cfg_skip_ratio}")
    if args.fp8 != "plain" and "qfloat8" not in args.gpu_memory_mode:
        raise ValueError(f"--fp8 {args.fp8} needs a *_qfloat8 --gpu-memory-mode (got {args.gpu_memory_mode})")
    if args.cache == "none":
        ignored = [name for name in CACHE_FLAGS if getattr(args, name) not in (None, False)]
        if ignored:
            raise ValueError(f"{_flag_names(ignored)}: no effect without --cache teacache or first-block")
    if args.num_skip_start_steps is not None and args.num_skip_start_steps < 0:
        raise ValueError(f"--num-skip-start-steps must be 0 or more, got {args.num_skip_start_steps}")
    if args.cache_threshold is not None and args.cache_threshold < 0:
        raise ValueError(f"--cache-threshold must be 0 or more, got {args.cache_threshold}")
    if args.riflex_k is not None and args.riflex_k < 1:
        raise ValueError(f"--riflex-k is a frame frequency index from 1, got {args.riflex_k}")
    for suffix in ("", "_high"):
        paths, weights = getattr(args, f"lora{suffix}_path") or [], getattr(args, f"lora{suffix}_weight")
        if weights and not paths:
            raise ValueError(f"{_flag_names([f'lora{suffix}_weight'])} without {_flag_names([f'lora{suffix}_path'])}")
        lora_weights(weights, len(paths))  # one weight for all, or one each
        for name in paths:
            resolve_lora(name)
        path = getattr(args, f"transformer{suffix}_path")
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{_flag_names([f'transformer{suffix}_path'])} {path}: no such file or folder")


def _flag_names(names: list[str]) -> str:
    """Option names as flags (``cache_threshold`` -> ``--cache-threshold``)."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def apply_weight_options(pipe: WanPipeline, args: argparse.Namespace) -> dict:
    """Replace or adapt the transformers' weights as the flags ask (before sharding, offload and fp8).

    Per transformer, a ``--transformer-path`` file first, then each ``--lora-path`` merged at its
    ``--lora-weight``. With two experts (Wan2.2 A14B) these go to the low-noise one and the
    ``--*-high-*`` flags to the high-noise one, as in VideoX-Fun. Returns a summary for the sidecar.
    """
    experts = {"": pipe.transformers[-1], "high": pipe.transformer if len(pipe.transformers) > 1 else None}
    applied: dict = {}
    for expert, transformer in experts.items():
        suffix = f"_{expert}" if expert else ""
        file, names = getattr(args, f"transformer{suffix}_path"), getattr(args, f"lora{suffix}_path") or []
        if transformer is None:
            if file is not None or names:
                raise ValueError("--transformer-high-path / --lora-high-path are for two-expert (Wan2.2 A14B) models")
            continue
        if file is not None:
            load_transformer_file(transformer, file)
            applied[f"transformer{suffix}_path"] = str(file)
        loras = merge_loras(transformer, names, getattr(args, f"lora{suffix}_weight"))
        if loras:
            applied[f"loras{suffix}"] = loras
    return applied


def merge_loras(transformer: WanTransformer3DModel, names: list[str], given_weights: list[float] | None) -> list[dict]:
    """Merge LoRA files (paths or names under models/Personalized_Model) at their weights; returns the record."""
    from ..models.lora import merge_lora

    paths = [resolve_lora(name) for name in names]
    weights = lora_weights(given_weights, len(paths))
    for path, weight in zip(paths, weights, strict=True):
        modules = merge_lora(transformer, path, weight)
        logger.info("merged LoRA %s at weight %g into %d layers", path, weight, len(modules))
    return [{"path": str(path), "weight": weight} for path, weight in zip(paths, weights, strict=True)]


LORA_FOLDER = Path("models/Personalized_Model")


def resolve_lora(name: str) -> Path:
    """A LoRA file path, or a file name under ``models/Personalized_Model/`` (VideoX-Fun's folder)."""
    for candidate in (Path(name), LORA_FOLDER / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--lora-path: no file {name} (nor {LORA_FOLDER / name})")


def lora_weights(given: list[float] | None, count: int) -> list[float]:
    """One weight per LoRA: none given = 1.0 each, one given = that for all, else one each."""
    if not given:
        return [1.0] * count
    if len(given) == 1:
        return given * count
    if len(given) != count:
        raise ValueError(f"{len(given)} --lora-weight values for {count} --lora-path files: give one or one each")
    return list(given)


def apply_runtime_options(pipe: WanPipeline, args: argparse.Namespace, folder: Path) -> dict:
    """Attach what the flags ask for to a loaded pipeline; returns a summary for the sidecar JSON."""
    from .compile import apply_riflex, compile_blocks
    from .offload import apply_memory_mode

    applied: dict = {"gpu_memory_mode": args.gpu_memory_mode, **run_settings(args)}
    if "qfloat8" in args.gpu_memory_mode and args.fp8 == "scaled":
        from .fp8 import quantize_to_fp8

        for transformer in pipe.transformers:
            quantize_to_fp8(transformer, scaled=True, per_channel=True)  # the mode then finds it quantised
    apply_memory_mode(pipe, args.gpu_memory_mode, pipe.device, args.resident_blocks)
    if args.cache != "none":
        threshold = args.cache_threshold if args.cache_threshold is not None else DEFAULT_THRESHOLDS[args.cache]
        two_experts = len(pipe.transformers) > 1
        for transformer in pipe.transformers:  # each expert skips by its own accumulated change
            attach_cache(transformer, args.cache, threshold, args, folder, two_experts)
        applied.update(cache=args.cache, cache_threshold=threshold, num_skip_start_steps=skip_start_steps(args))
        if args.cache == "teacache":
            applied["teacache_indicator"] = teacache_indicator(args.teacache_indicator, two_experts)
    if args.riflex_k is not None:
        for transformer in pipe.transformers:
            apply_riflex(transformer, args.riflex_k)
        applied["riflex_k"] = args.riflex_k
    if args.compile:
        for transformer in pipe.transformers:
            compile_blocks(transformer)
        applied["compile"] = True
    return applied


def run_settings(args: argparse.Namespace) -> dict:
    """The flags that change the video or how it was made, for the sidecar JSON (beyond the sampling ones)."""
    settings: dict = {"cfg_skip_ratio": args.cfg_skip_ratio, "cfg_sequential": args.cfg_sequential}
    if "qfloat8" in args.gpu_memory_mode:
        settings["fp8"] = args.fp8
    if args.gpu_memory_mode == "model_group_offload":
        settings["resident_blocks"] = args.resident_blocks
    return settings


def attach_cache(
    transformer: WanTransformer3DModel,
    kind: str,
    threshold: float,
    args: argparse.Namespace,
    folder: Path,
    two_experts: bool = False,
) -> StepCache:
    """A TeaCache (coefficients from the folder's calibration or the published ones) or first-block cache."""
    common = {"num_skip_start_steps": skip_start_steps(args), "offload_residuals": args.cache_offload_residuals}
    if kind == "first-block":
        return FirstBlockCache(transformer, threshold, **common)
    indicator = teacache_indicator(args.teacache_indicator, two_experts)
    coefficients = coefficients_for(transformer, folder, indicator, two_experts)
    return TeaCache(transformer, coefficients, threshold, indicator=indicator, **common)


def skip_start_steps(args: argparse.Namespace) -> int:
    """``--num-skip-start-steps``, or its default."""
    return DEFAULT_SKIP_START_STEPS if args.num_skip_start_steps is None else args.num_skip_start_steps


def teacache_indicator(asked: str | None, two_experts: bool) -> str:
    """The indicator asked for, else the one the model's published coefficients were fitted on."""
    return asked or ("time_projection" if two_experts else "time_embedding")


def load_transformer_file(transformer: WanTransformer3DModel, path: Path) -> None:
    """Replace a transformer's weights with those of a file or folder of the same architecture (fp8 too)."""
    from ..models.wan.transformer import read_transformer_weights
    from .fp8 import load_state_with_fp8

    if not path.exists():
        raise FileNotFoundError(f"--transformer-path {path}: no such file or folder")
    load_state_with_fp8(transformer, read_transformer_weights(path), source=str(path))


def add_calibrate_command(subparsers: argparse._SubParsersAction) -> None:
    """``videox-fun calibrate-cache``: fit TeaCache coefficients for any model from full runs."""
    from ..cli import add_device_arguments

    parser = subparsers.add_parser(
        "calibrate-cache",
        help="fit TeaCache coefficients for a model from a few uncached runs",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--model", help="model folder or name (default: the built-in tiny model)")
    parser.add_argument("--prompts-file", type=Path, help="prompts to run (default: a few built in)")
    parser.add_argument(
        "--control-video", help="control video for the runs (models that serve control but not t2v need one)"
    )
    parser.add_argument("--image", help="start image for the runs (i2v calibration of an InP / I2V model)")
    add_device_arguments(parser)
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument(
        "--indicator",
        choices=("time_embedding", "time_projection"),
        help="what the change is measured on (default: what generate uses: time_projection for Wan2.2 A14B "
        "experts, else time_embedding)",
    )
    parser.add_argument("--degree", type=int, default=4, help="polynomial degree")
    parser.add_argument("--out", type=Path, help=f"output JSON (default MODEL/{CALIBRATION_FILE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_calibrate)


CALIBRATION_PROMPTS = (
    "a red circle moving right",
    "a blue square moving up",
    "a yellow triangle moving left",
    "a cyan square moving down",
)


def run_calibrate(args: argparse.Namespace) -> Path:
    """Run the prompts uncached, record (indicator change, residual change) per step, fit and save."""
    from ..cli import check_output_location, read_prompts, resolve_device_and_dtype
    from ..config import config_for_folder
    from ..pipelines.wan import WanPipeline
    from ..registry import PACKAGED_DIR, resolve_model
    from .cache import CacheRecorder, fit_coefficients, save_calibration

    folder = resolve_model(args.model, "control" if args.control_video else None)
    out = args.out or folder / CALIBRATION_FILE
    if args.out is None and folder.resolve().is_relative_to(PACKAGED_DIR.resolve()):
        raise ValueError(f"{folder.name} ships inside the package with its calibration: give --out FILE to fit another")
    check_output_location(out, None, "--out")  # before the runs, not after them
    prompts = read_prompts(args.prompts_file) if args.prompts_file else list(CALIBRATION_PROMPTS)
    steps = args.steps or config_for_folder(folder).defaults.steps
    if len(prompts) * (steps - 1) <= args.degree:  # each run gives steps - 1 pairs at most
        raise ValueError(
            f"{len(prompts)} prompt(s) x {steps - 1} step pairs cannot fit a degree-{args.degree} polynomial: "
            "give more --steps or prompts, or a lower --degree"
        )
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    pipe = WanPipeline.from_pretrained(folder, config=config_for_folder(folder), device=device, dtype=dtype)
    if "t2v" not in pipe.variant.modes and not (args.control_video or args.image):
        raise ValueError(
            f"{folder.name} does not generate from text alone ({', '.join(pipe.variant.modes)}): "
            "give the --control-video (or --image) to calibrate on"
        )
    two_experts = len(pipe.transformers) > 1
    indicator = teacache_indicator(args.indicator, two_experts)  # generate's default, so it finds the fit
    # Each expert records its own consecutive steps; one polynomial is fitted to them all, as
    # VideoX-Fun uses one set for both Wan2.2 A14B experts.
    recorders = [CacheRecorder(transformer, indicator) for transformer in pipe.transformers]
    inputs = {"control_video": args.control_video, "image": args.image}
    for i, prompt in enumerate(prompts):
        pipe(prompt, num_inference_steps=args.steps, seed=args.seed + i, **inputs)  # the model's defaults otherwise
    samples = [sample for recorder in recorders for sample in recorder.samples]
    coefficients = fit_coefficients(samples, args.degree)
    note = f"{len(prompts)} prompts"
    if two_experts:
        note += ", both experts (" + " + ".join(f"{len(r.samples)}" for r in recorders) + " step pairs, high + low)"
    save_calibration(out, coefficients, indicator, len(samples), note=note)
    print(f"wrote {out}: {len(samples)} step pairs ({indicator}), coefficients {coefficients}")
    return out
