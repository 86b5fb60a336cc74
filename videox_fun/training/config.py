"""The typed training config and its command-line flags (VideoX-Fun's flag names).

One dataclass, :class:`TrainConfig`, holds every setting. The flags of
``scripts/wan2.1_fun/train.py`` and ``videox-fun train`` are generated from its fields, and a
YAML file given with ``--config FILE`` holds the same field names. Precedence: the dataclass
defaults, then the YAML file, then the flags given on the command line. Unknown YAML fields
are an error, so a typo never passes silently.

Each setting is declared once, with its ``--help`` text (:func:`~videox_fun.training.data.config.setting`).
The data settings (paths, sample sizes and frames, buckets, text dropout, ``train_mode``,
``seed``...) are declared, with their rules, by :class:`~videox_fun.training.data.config.DataSettings`
beside the data layer that reads them; TrainConfig extends it (and :class:`ModelSettings`, so
that the model flags still come first) and declares the rest. Inheriting the fields keeps them
plain dataclass fields, with no generated code; the data flags, their YAML fields and the data
layer's :class:`~videox_fun.training.data.DataConfig` cannot drift apart.
``DataConfig.from_mapping(config.to_dict())`` is the one conversion (it also snaps the sizes to
multiples of 16, while TrainConfig keeps them as given), and :meth:`TrainConfig.validate` reports
the data rules, named as flags, at start.
"""

# setting() returns a dataclasses.field (with a default_factory for lists), which RUF009 cannot see.
# ruff: noqa: RUF009
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..argparsing import finite_float
from ..config import read_yaml_mapping, timestep_problem
from ..io.files import atomic_path
from .data.config import DataSettings, setting
from .reward import BACKPROP_STRATEGIES
from .reward_models import REWARD_NAMES, canonical_reward_name, parse_reward_kwargs, unknown_reward_message

logger = logging.getLogger(__name__)

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap")
# VideoX-Fun's one --weighting_scheme flag also names the sigma densities; they map to --timestep_sampling.
DENSITY_SCHEMES = ("logit_normal", "mode")
# VideoX-Fun flags that choose things set elsewhere here (accelerate's config picks DeepSpeed / FSDP;
# the text length is the model's): accepted so its scripts run unchanged, and reported as unused.
UNUSED_VIDEOX_FUN_FLAGS = {
    "use_deepspeed": "the accelerate config (config/accelerate/*.yaml) chooses DeepSpeed",
    "use_fsdp": "the accelerate config (config/accelerate/*.yaml) chooses FSDP",
    "local_rank": "accelerate / torchrun set the rank",
    "tracker_project_name": "logs go to OUTPUT_DIR/logs",
    "enable_text_encoder_in_dataloader": "the text encoder runs in the training process",
    "keep_all_node_same_token_length": "buckets already give every process the same token count per step",
    "tokenizer_max_length": "the text length is the model's (text_len in its config)",
    "backprop": "reward training (--train_mode reward) always backpropagates through the --backprop_strategy steps",
    "add_inpaint_info": "image control training: the control file decides (a 33 / 132 / 260-channel context reads a "
    "random mask and the masked image)",
}
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform", "mode")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
BOUNDARY_TYPES = ("full", "high", "low")


@dataclass
class ModelSettings:
    """Which model is trained and from which weights: the first fields (and flags) of :class:`TrainConfig`."""

    pretrained_model_name_or_path: str | None = setting(None, "model folder (original or diffusers layout) or name")
    config_path: str | None = setting(None, "YAML model config, e.g. config/wan2.1/wan_fun_civitai.yaml")
    family: str | None = setting(
        None, "training spec of the model family (default: the one the model folder's family names)"
    )
    transformer_path: str | None = setting(None, "start from these transformer weights (a folder or .safetensors)")
    init_from_t2v: bool = setting(
        False, "zero-pad the new input channels of patch_embedding when a T2V checkpoint starts an InP/Control model"
    )


# A dataclass puts the fields of its last base first: ModelSettings', then DataSettings', then its own.
@dataclass
class TrainConfig(DataSettings, ModelSettings):
    """Every training setting. Field names are the flag names (``--train_batch_size`` ...).

    The model settings (:class:`ModelSettings`), the data settings (:class:`DataSettings`), then
    the training, LoRA, flow-matching, checkpoint, validation and cache settings below.
    """

    # Validation videos take one size or height width, as the sample sizes do.
    SIZE_FIELDS: ClassVar[tuple[str, ...]] = (*DataSettings.SIZE_FIELDS, "validation_sample_size")

    # -- data loading (the data settings are DataSettings') ----------------------------------
    dataloader_num_workers: int = setting(0, "data loading worker processes")
    # -- training ----------------------------------------------------------------------------
    output_dir: str = setting("output_dir", "where checkpoints, logs, samples and final weights go")
    train_batch_size: int = setting(1, "samples per process and step")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    num_train_epochs: int = setting(100, "epochs (max_train_steps wins when given)")
    max_train_steps: int | None = setting(None, "optimizer steps in all (overrides num_train_epochs)")
    learning_rate: float = setting(1e-4, "peak learning rate")
    lr_scheduler: str = setting("constant", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = setting(0, "warm-up steps of the schedule")
    adam_beta1: float = setting(0.9, "Adam beta1")
    adam_beta2: float = setting(0.999, "Adam beta2")
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay")
    adam_epsilon: float = setting(1e-10, "Adam epsilon")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 = off)")
    use_8bit_adam: bool = setting(False, "8-bit AdamW from bitsandbytes")
    mixed_precision: str | None = setting(None, "no, fp16 or bf16 (default: accelerate's setting)")
    gradient_checkpointing: bool = setting(False, "recompute block activations in backward to save memory")
    low_vram: bool = setting(False, "keep the VAE and text encoder off the accelerator between uses")
    vae_mini_batch: int = setting(1, "videos the VAE encodes at once")
    trainable_modules: list[str] | None = setting(
        None, "full fine-tune: train only parameters whose names contain one of these (default: all)"
    )
    use_ema: bool = setting(
        False,
        "keep an exponential moving average of the trained weights: the final weights and the validation samples "
        "are the average (checkpoints hold it as ema.safetensors)",
    )
    ema_decay: float | None = setting(None, "use_ema: decay of the average, within (0, 1) (default 0.9999)")
    # -- LoRA --------------------------------------------------------------------------------
    use_lora: bool = setting(False, "train a LoRA (peft) instead of the full transformer")
    rank: int = setting(64, "LoRA rank")
    network_alpha: float = setting(32.0, "LoRA alpha (scale = alpha / rank)")
    lora_target_modules: list[str] | None = setting(None, "module names to adapt (default: the family's list)")
    lora_skip_name: list[str] | None = setting(None, "skip modules whose names contain one of these")
    # -- flow matching -----------------------------------------------------------------------
    timestep_sampling: str = setting("logit_normal", "sigma density", choices=TIMESTEP_SAMPLINGS)
    uniform_sampling: bool = setting(False, "uniform sigmas (same as --timestep_sampling uniform)")
    logit_mean: float = setting(0.0, "mean of the logit-normal density")
    logit_std: float = setting(1.0, "std of the logit-normal density")
    mode_scale: float = setting(1.29, "scale of the 'mode' density")
    weighting_scheme: str = setting(
        "none",
        "loss weighting over sigma; VideoX-Fun's logit_normal / mode set --timestep_sampling instead",
        choices=WEIGHTING_SCHEMES + DENSITY_SCHEMES,
    )
    shift: float | None = setting(None, "flow shift applied to sampled sigmas as at inference (default: model's)")
    boundary_type: str = setting(
        "full",
        "Wan2.2 A14B: train the high-noise expert on t >= boundary*1000 (high) or the low-noise one below (low)",
        choices=BOUNDARY_TYPES,
    )
    vace_reference_share: float = setting(
        0.35, "--train_mode vace: share of micro-batches given a subject frame in front (reference-to-video)"
    )
    # -- reward fine-tuning (--train_mode reward: prompts only, videos sampled with gradients) --------
    prompt_path: str | None = setting(
        None, "reward: the prompts, a .txt (one per line) or a .json / .jsonl list (instead of --train_data_meta)"
    )
    reward_fn: str | None = setting(None, f"reward: the differentiable reward, one of {', '.join(REWARD_NAMES)}")
    reward_fn_kwargs: str | None = setting(
        None, 'reward: its keyword arguments as JSON, e.g. its local weights \'{"model_path": "PATH"}\''
    )
    num_sampling_steps: int = setting(
        50, "reward: denoising steps of each sampled video", aliases=("num_inference_steps",)
    )
    guidance_scale: float | None = setting(None, "reward: CFG scale of the sampling (default: the model's; 1 = off)")
    backprop_strategy: str = setting(
        "last", "reward: the steps whose transformer call keeps gradients", choices=BACKPROP_STRATEGIES
    )
    backprop_num_steps: int = setting(5, "reward: how many steps tail / uniform / random keep")
    backprop_step_list: list[int] | None = setting(
        None, "reward: explicit steps (0-based) that keep gradients; overrides --backprop_strategy"
    )
    detach_input: bool = setting(
        False,
        "reward: cut the kept steps' transformer inputs from the latent chain (DRTune)",
        aliases=("stop_latent_model_input_gradient",),
    )
    num_decoded_latents: int = setting(3, "reward: latent frames decoded (from the first) for the reward")
    num_sampled_frames: int | None = setting(
        None, "reward: frames, evenly spaced among the decoded ones, that the reward judges (default: all)"
    )
    max_reward: float | None = setting(
        None, "reward: the loss is mean(|r - max_reward| * loss_scale) (default: the reward's own)"
    )
    loss_scale: float | None = setting(None, "reward: scale of the loss (default: the reward's own)")
    vae_gradient_checkpointing: bool = setting(True, "reward: recompute the VAE decode in backward to save memory")
    # -- step distillation (DMD: scripts/wan2.1_fun/train_distill.py) -----------------------------
    distill: bool = setting(
        False, "train a few-step student by distribution matching (DMD): generator, frozen teacher, critic"
    )
    denoising_step_list: list[int] | None = setting(
        None, "distill: the student's timesteps, decreasing within (0, 1000] (default 1000 750 500 250)"
    )
    generator_update_ratio: int | None = setting(
        None,
        "distill: update the generator every n steps, the critic every step (default 5)",
        aliases=("dfake_gen_update_ratio",),
    )
    critic_learning_rate: float | None = setting(
        None, "distill: learning rate of the critic (fake score) (default: --learning_rate)"
    )
    real_guidance_scale: float | None = setting(None, "distill: CFG scale of the teacher (default: the model's)")
    distill_prompt_path: str | None = setting(
        None,
        "distill: prompts (a .txt, one per line, or a .json / .jsonl list) the student also learns text to video "
        "from, without videos (DMD needs only the teacher there), at --video_sample_size x --video_sample_n_frames",
    )
    distill_prompt_share: float | None = setting(
        None, "distill: share of micro-batches drawn from --distill_prompt_path instead of the data (default 0.5)"
    )
    distill_regression_path: str | None = setting(
        None,
        "distill: the teacher's own samples (a .safetensors of noise / target latents with their prompts, written by "
        "videox-fun teacher-pairs) the student's sample from the same noise is regressed onto, as in DMD",
    )
    distill_regression_weight: float | None = setting(
        None, "distill: weight of that regression beside the distribution-matching loss (default 0.25)"
    )
    # -- checkpoints and logs ----------------------------------------------------------------
    checkpointing_steps: int = setting(500, "save a resumable checkpoint every n steps")
    checkpoints_total_limit: int | None = setting(None, "keep at most this many checkpoints")
    resume_from_checkpoint: str | None = setting(None, "a checkpoint folder, or 'latest'")
    report_to: str = setting("tensorboard", "tensorboard (when installed) or none")
    logging_dir: str = setting("logs", "log folder inside output_dir")
    # -- validation --------------------------------------------------------------------------
    validation_steps: int | None = setting(None, "sample the validation prompts every n steps (off by default)")
    validation_prompts: list[str] | None = setting(None, "prompts sampled during training")
    validation_num_frames: int | None = setting(None, "frames of validation videos (default: the model's)")
    validation_sample_size: list[int] | None = setting(None, "height width of validation videos (default: model's)")
    validation_inference_steps: int | None = setting(None, "sampling steps of validation (default: the model's)")
    validation_control_video: str | None = setting(None, "control video for validation of control modes")
    validation_image: str | None = setting(None, "reference image for validation of control_ref")
    # -- latent cache ------------------------------------------------------------------------
    use_cached_latents: bool = setting(False, "read VAE latents / text embeddings from the cache")
    cache_dir: str | None = setting(None, "latent cache folder (default: OUTPUT_DIR/latent_cache)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uniform_sampling:
            self.timestep_sampling = "uniform"
        if self.weighting_scheme in DENSITY_SCHEMES:
            self.timestep_sampling, self.weighting_scheme = self.weighting_scheme, "none"

    # -- derived -----------------------------------------------------------------------------
    @property
    def resolved_cache_dir(self) -> Path:
        """The latent cache folder."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "latent_cache"

    def validate(self) -> None:
        """Fail at start, saying what to change, when settings cannot work together."""
        # The data rules as the data layer applies them (to the values it is given: None means the default).
        problems = ["--" + problem for problem in DataSettings.from_mapping(self.to_dict()).data_problems()]
        if not self.pretrained_model_name_or_path:
            problems.append("--pretrained_model_name_or_path is required (a model folder or name)")
        if not self.use_cached_latents and not self.train_data_meta and self.train_mode != "reward":
            problems.append("--train_data_meta is required (or train from a cache with --use_cached_latents)")
        problems += count_problems(self)
        problems += reward_problems(self)
        problems += distill_problems(self)
        problems += ema_problems(self)
        if self.use_lora and self.trainable_modules:
            problems.append("--trainable_modules is for full fine-tuning; LoRA trains only its adapters")
        if self.validation_steps and not self.validation_prompts:
            problems.append("--validation_steps needs --validation_prompts")
        if self.validation_steps and self.train_mode.startswith("control") and not self.validation_control_video:
            problems.append("--validation_steps in a control mode needs --validation_control_video")
        if self.boundary_type != "full" and self.validation_steps:
            problems.append("--validation_steps with --boundary_type high/low (one expert) is not supported yet")
        if self.mixed_precision not in (None, *MIXED_PRECISIONS):
            problems.append(f"--mixed_precision must be one of {MIXED_PRECISIONS}")
        if not 0.0 <= self.vace_reference_share <= 1.0:  # NaN too
            problems.append(f"--vace_reference_share must be within [0, 1] (got {self.vace_reference_share:g})")
        if self.shift is not None and not self.shift > 0:  # NaN too
            problems.append(f"--shift must be > 0 (got {self.shift:g}); leave it out for the model's own shift")
        if problems:  # one line, however many: a message that fits a terminal line and a log record
            raise ValueError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping of every field, as written to YAML."""
        return dataclasses.asdict(self)


# Counts that must be 1 or more: 0 or fewer would train nothing (and still write a run's files) or divide by 0.
AT_LEAST_ONE = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "checkpointing_steps",
    "vae_mini_batch",
    "num_sampling_steps",
    "backprop_num_steps",
    "num_decoded_latents",
    "num_sampled_frames",
)
AT_LEAST_ZERO = ("dataloader_num_workers", "lr_warmup_steps")


def count_problems(config: TrainConfig) -> list[str]:
    """Counts out of range (:data:`AT_LEAST_ONE`, :data:`AT_LEAST_ZERO`) and numbers that are NaN or infinite."""
    problems = []
    for names, least in ((AT_LEAST_ONE, 1), (AT_LEAST_ZERO, 0)):
        for name in names:
            value = getattr(config, name)
            if value is not None and value < least:
                problems.append(f"--{name} must be at least {least}, got {value}")
    for name, value in config.to_dict().items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            problems.append(f"--{name} must be a finite number, got {value}")
    return problems


# Settings that only distillation reads, None when not given: without --distill they are refused.
DISTILL_ONLY = ("denoising_step_list", "generator_update_ratio", "critic_learning_rate", "real_guidance_scale",
                "distill_prompt_path", "distill_prompt_share", "distill_regression_path",
                "distill_regression_weight")  # fmt: skip
DEFAULT_DISTILL_PROMPT_SHARE = 0.5
DEFAULT_DISTILL_REGRESSION_WEIGHT = 0.25  # DMD's (Yin et al., 2024) weight of its regression loss
DEFAULT_GENERATOR_UPDATE_RATIO = 5


def distill_problems(config: TrainConfig) -> list[str]:
    """What stops ``--distill`` (or distillation settings given without it), one entry per problem."""
    if not config.distill:
        given = [f"--{name}" for name in DISTILL_ONLY if getattr(config, name) is not None]
        return [f"{', '.join(given)}: distillation settings; add --distill or leave them out"] if given else []
    problems = []
    if config.train_mode == "reward":
        problems.append("--distill and --train_mode reward are two objectives; choose one")
    steps = config.denoising_step_list
    if steps is not None and timestep_problem(steps):
        problems.append(f"--denoising_step_list {steps} must be decreasing timesteps within (0, 1000]")
    if config.generator_update_ratio is not None and config.generator_update_ratio < 1:
        problems.append(f"--generator_update_ratio must be 1 or more (got {config.generator_update_ratio})")
    for name in ("critic_learning_rate", "real_guidance_scale", "distill_regression_weight"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} must be a finite number above 0 (got {value:g})")
    if config.distill_prompt_path is not None and not Path(config.distill_prompt_path).is_file():
        problems.append(f"--distill_prompt_path {config.distill_prompt_path} is not a file")
    share = config.distill_prompt_share
    if share is not None and not (math.isfinite(share) and 0 < share <= 1):
        problems.append(f"--distill_prompt_share must be within (0, 1] (got {share:g})")
    if share is not None and config.distill_prompt_path is None:
        problems.append("--distill_prompt_share is the share of --distill_prompt_path's batches; give the prompts")
    if config.distill_regression_path is not None and not Path(config.distill_regression_path).is_file():
        problems.append(f"--distill_regression_path {config.distill_regression_path} is not a file")
    if config.distill_regression_weight is not None and config.distill_regression_path is None:
        problems.append("--distill_regression_weight weighs --distill_regression_path's pairs; give the pairs")
    if config.text_drop_ratio:
        problems.append(
            f"--distill trains the student on its prompts: set --text_drop_ratio 0 (got {config.text_drop_ratio:g}); "
            "the teacher's guidance brings in the empty prompt"
        )
    return problems


def ema_problems(config: TrainConfig) -> list[str]:
    """What stops ``--use_ema`` (or ``--ema_decay`` without it)."""
    decay = config.ema_decay
    if decay is None:
        return []
    if not config.use_ema:
        return ["--ema_decay is the decay of --use_ema's average; add --use_ema or leave it out"]
    return [] if 0 < decay < 1 else [f"--ema_decay must be within (0, 1) (got {decay:g})"]


# Settings that only reward training reads, None when not given: another mode refuses them (they would be ignored).
REWARD_ONLY = ("prompt_path", "reward_fn", "reward_fn_kwargs", "backprop_step_list", "num_sampled_frames",
               "guidance_scale", "max_reward", "loss_scale")  # fmt: skip


def reward_problems(config: TrainConfig) -> list[str]:
    """What stops ``--train_mode reward`` (or reward settings given to another mode), one entry per problem."""
    if config.train_mode != "reward":
        given = [f"--{name}" for name in REWARD_ONLY if getattr(config, name) is not None]
        return (
            [f"{', '.join(given)}: reward-training settings; add --train_mode reward or leave them out"]
            if given
            else []
        )
    problems = []
    if not config.prompt_path:
        problems.append("--train_mode reward needs --prompt_path (a .txt, one prompt per line, or a .json list)")
    elif not Path(config.prompt_path).is_file():
        problems.append(f"--prompt_path {config.prompt_path} is not a file")
    if config.train_data_meta or config.use_cached_latents:
        problems.append("--train_mode reward samples its videos from --prompt_path; leave out --train_data_meta / "
                        "--use_cached_latents")  # fmt: skip
    if not config.reward_fn:
        problems.append(f"--train_mode reward needs --reward_fn, one of {', '.join(REWARD_NAMES)}")
    elif canonical_reward_name(config.reward_fn) is None:
        problems.append(unknown_reward_message(config.reward_fn))
    try:
        parse_reward_kwargs(config.reward_fn_kwargs)
    except ValueError as err:
        problems.append(str(err))
    problems += backprop_problems(config)
    if config.guidance_scale is not None and config.guidance_scale < 1.0:
        problems.append(f"--guidance_scale must be at least 1 (1 = no CFG), got {config.guidance_scale:g}")
    if config.loss_scale is not None and not config.loss_scale > 0:
        problems.append(f"--loss_scale must be above 0, got {config.loss_scale:g}")
    if config.boundary_type != "full":
        problems.append("--train_mode reward samples whole videos: it trains single-transformer models, not one "
                        "Wan2.2 A14B expert (--boundary_type)")  # fmt: skip
    return problems


def backprop_problems(config: TrainConfig) -> list[str]:
    """The chosen backprop steps must lie in the rollout of ``num_sampling_steps`` steps."""
    steps = config.num_sampling_steps
    if steps < 1:
        return []  # count_problems says it
    if config.backprop_step_list is not None:
        if not config.backprop_step_list or not all(0 <= s < steps for s in config.backprop_step_list):
            return [f"--backprop_step_list {config.backprop_step_list} must name steps in [0, {steps - 1}]"]
        return []
    if config.backprop_strategy not in BACKPROP_STRATEGIES:
        return [f"--backprop_strategy {config.backprop_strategy!r} is unknown; choose {', '.join(BACKPROP_STRATEGIES)}"]
    if config.backprop_strategy != "last" and config.backprop_num_steps > steps:
        return [f"--backprop_num_steps {config.backprop_num_steps} exceeds --num_sampling_steps {steps}"]
    return []


# ----------------------------------------------------------------------------------------
# YAML and flags
# ----------------------------------------------------------------------------------------
def config_fields() -> dict[str, dataclasses.Field]:
    """TrainConfig's fields by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def read_train_yaml(path: str | Path) -> dict[str, Any]:
    """The fields of a training YAML file; unknown names fail with the list of known ones."""
    data = read_yaml_mapping(path, "training config")
    unknown = sorted(set(data) - set(config_fields()))
    if unknown:
        raise ValueError(f"{path}: unknown training config fields {unknown}; see `videox-fun train --help`")
    return data


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation such as ``list[int] | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is list:
        return get_args(annotation)[0], True
    return annotation, False


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field (``--name``), plus ``--config FILE``.

    Defaults are SUPPRESSed so only the flags actually given override the YAML file; the
    documented defaults appear in ``--help``.
    """
    parser.add_argument("--config", type=Path, help="training YAML file holding the same fields as the flags")
    add_unused_videox_fun_flags(parser)
    hints = get_type_hints(TrainConfig)
    for name, f in config_fields().items():
        kind, is_list = _base_type(hints[name])
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        flags = [f"--{name}", *(f"--{alias}" for alias in meta.pop("aliases", ()))]  # VideoX-Fun's other spellings
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if "default" not in help_text:
            help_text = f"{help_text} (default: {default})"
        if kind is bool:
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                *flags,
                dest=name,
                type=finite_float if kind is float else kind,
                nargs="+" if is_list else None,
                default=argparse.SUPPRESS,
                help=help_text,
                **meta,
            )


def add_unused_videox_fun_flags(parser: argparse.ArgumentParser) -> None:
    """Accept the VideoX-Fun flags of :data:`UNUSED_VIDEOX_FUN_FLAGS` (reported when given)."""
    group = parser.add_argument_group("VideoX-Fun flags accepted and not used (each says why)")
    for name, why in UNUSED_VIDEOX_FUN_FLAGS.items():
        group.add_argument(f"--{name}", nargs="?", const=True, default=argparse.SUPPRESS, help=why)


def report_unused_flags(args: argparse.Namespace) -> list[str]:
    """Log each given VideoX-Fun flag that has no effect here, with the reason; returns their names."""
    given = [name for name in UNUSED_VIDEOX_FUN_FLAGS if name in vars(args)]
    for name in given:
        logger.warning("--%s has no effect here: %s", name, UNUSED_VIDEOX_FUN_FLAGS[name])
    return given


def config_from_args(args: argparse.Namespace, **presets: Any) -> TrainConfig:
    """Defaults, then ``presets`` (a script's own settings), then ``--config`` YAML, then the flags given."""
    report_unused_flags(args)
    values: dict[str, Any] = dict(presets)
    values.update(read_train_yaml(args.config) if getattr(args, "config", None) else {})
    known = config_fields()
    values.update({k: v for k, v in vars(args).items() if k in known})
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise ValueError(f"bad training config: {err}") from err


def parse_train_args(argv: list[str] | None = None, **presets: Any) -> TrainConfig:
    """Parse VideoX-Fun style training flags into a TrainConfig (used by scripts/*/train*.py).

    ``presets`` are a script's own defaults (``use_lora=True`` for train_lora.py); YAML and flags win.
    """
    from ..argparsing import FlagSpellingParser

    parser = FlagSpellingParser(description="Train a video DiT (full, LoRA, inpaint, control).")
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv), **presets)


def save_train_yaml(config: TrainConfig, path: str | Path) -> None:
    """Write a TrainConfig as YAML (the run's record, and a file ``--config`` reads back), atomically."""
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------
# The settings that define a run (checked on resume)
# ----------------------------------------------------------------------------------------
# Settings a resumed run may change: how long it runs, how it saves, logs and validates, where
# outputs and the cache go, and memory / speed knobs that do not change the numbers. Every other
# field defines the run (what is trained, on what data, with which optimizer and schedule):
# resuming with another value would silently train something else (the restored optimizer and
# scheduler states would even ignore a new learning rate), so it is refused.
RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "max_train_steps",
        "num_train_epochs",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "report_to",
        "logging_dir",
        "validation_steps",
        "validation_prompts",
        "validation_num_frames",
        "validation_sample_size",
        "validation_inference_steps",
        "validation_control_video",
        "validation_image",
        "cache_dir",
        "dataloader_num_workers",
        "max_bad_share",
        "gradient_checkpointing",
        "low_vram",
        "vae_mini_batch",
        "vae_gradient_checkpointing",
        "uniform_sampling",  # folded into timestep_sampling, which is compared
    }
)
# Paths compared as absolute paths when they exist, so a resume from another working folder matches.
PATH_SETTINGS = (
    "pretrained_model_name_or_path",
    "config_path",
    "transformer_path",
    "train_data_dir",
    "train_data_meta",
)


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that define ``config``'s run (stored in each checkpoint, compared on resume)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE}
    for name in PATH_SETTINGS:
        value = settings.get(name)
        if value and os.path.exists(value):
            settings[name] = os.path.abspath(value)
    return settings


def changed_run_settings(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``--name was OLD, now NEW`` for each run-defining setting of ``config`` that differs from ``saved``.

    A setting the record does not hold (written by a version without it) is not compared.
    """
    now = run_settings(config)
    return [
        f"--{name} was {_shown(saved[name])}, now {_shown(value)}"
        for name, value in now.items()
        if name in saved and saved[name] != value
    ]


def _shown(value: Any) -> str:
    """A setting's value as a flag would give it."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Fail with one line when ``path`` (a folder to write) or the nearest existing folder above it is a file."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise ValueError(f"{flag} {path}{where} is a file, not a folder; give a folder path")
    return path
