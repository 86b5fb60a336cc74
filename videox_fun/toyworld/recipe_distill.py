"""The recipe of the distilled tiny students (``videox-fun toyworld train-distill``): DMD on the toy world.

A packaged model is the teacher (``Wan2.1-Fun-Tiny-InP`` or ``-Control``: 20 steps with guidance 1.5 by
default); its student, ``<teacher>-Distill``, samples in 4 steps without guidance (``Flow_Distill``, written
in its folder's defaults). Training is the generic trainer's ``--distill`` in the teacher's own mode
(``inpaint``, ``control``) on a latent cache, so the student keeps the variant's tasks (text-to-video, start
image, first and last frames...; control videos).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.files import reset_tree_modes
from ..models.wan.tiny import write_folder_config
from ..models.wan.transformer import WanTransformer3DModel
from ..pipelines.schedulers import NUM_TRAIN_TIMESTEPS, distill_sigmas
from ..training.distill import DEFAULT_DENOISING_STEPS
from .recipe import DEFAULTS, MODELS, Recipe, train_on_cache
from .world import caption, combinations

if TYPE_CHECKING:
    from ..training.trainer import TrainResult

TEACHER = "Wan2.1-Fun-Tiny-InP"
SUFFIX = "-Distill"
STUDENT_DEFAULTS = replace(DEFAULTS, steps=4, guidance_scale=1.0, sampler="Flow_Distill")
PAIRS_SEED = 900_000  # the teacher samples' seeds: the reports use 0..10^4, the validation 50,000 and up


@dataclass
class DistillRecipe:
    """Every number of the distillation; written to recipe.json beside the student's weights."""

    seed: int = 0
    steps: int = 2000
    learning_rate: float = 1e-4  # the student's
    critic_learning_rate: float = 1e-4
    batch: int = 16
    clips: int = 1200
    generator_update_ratio: int = 5
    denoising_steps: tuple[int, ...] = DEFAULT_DENOISING_STEPS
    # A LoRA student (merged into the teacher's weights in the folder; the LoRA file is kept beside them).
    use_lora: bool = False
    rank: int = 32
    # Share of micro-batches that are text-to-video prompts alone (--distill_prompt_share; 0: none), drawn from the
    # captions of every combination, the held-out ones too: prompts only, no held-out clip (DMD needs only the teacher).
    prompt_share: float = 0.0
    # Decay of the moving average of the student's weights (--use_ema --ema_decay; 0: none), over its updates (one
    # in generator_update_ratio steps); the folder then holds the average.
    ema_decay: float = 0.0
    # Teacher samples (20 steps with guidance, every combination's caption in turn, seeds PAIRS_SEED + i) the student's
    # sample from the same noise is regressed onto (--distill_regression_path; 0: none), with this weight.
    regression_pairs: int = 0
    regression_weight: float = 0.25


def student_folder(out: Path, teacher: Path, timesteps: Sequence[int] = DEFAULT_DENOISING_STEPS) -> Path:
    """The student's folder: the teacher's files, with the few-step defaults (weights replaced after training):
    Flow_Distill at as many steps as the student's training ``timesteps``, which the folder names unless uniform."""
    folder = out / (teacher.name + SUFFIX)
    if (folder / "config.json").is_file():
        return folder
    shutil.copytree(teacher, folder, ignore=shutil.ignore_patterns("recipe.json", "cache_calibration.json"))
    reset_tree_modes(folder)
    uniform = tuple(timesteps) == tuple(distill_sigmas(len(timesteps)) * NUM_TRAIN_TIMESTEPS)
    defaults = replace(STUDENT_DEFAULTS, steps=len(timesteps), distill_timesteps=None if uniform else list(timesteps))
    note = f"the {len(timesteps)}-step DMD student of {teacher.name} (videox-fun toyworld train-distill)"
    write_folder_config(folder, defaults, note)
    return folder


def prompt_settings(out: Path, share: float) -> dict:
    """The trainer's prompt-only distillation settings: OUT/prompts.txt (every combination's caption) drawn for
    ``share`` of the micro-batches, at the toy world's video size."""
    path = out / "prompts.txt"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(caption(spec) + "\n" for spec in combinations("all")))
    return {
        "distill_prompt_path": str(path),
        "distill_prompt_share": share,
        "video_sample_size": [DEFAULTS.height, DEFAULTS.width],
        "video_sample_n_frames": DEFAULTS.num_frames,
    }


def teacher_pairs_file(out: Path, teacher: Path, count: int) -> Path:
    """OUT/teacher_pairs.safetensors: ``count`` t2v samples of ``teacher`` at its defaults, every combination's caption
    in turn, seeds PAIRS_SEED + i (apart from the report's and the validation's); made once, kept for a rerun."""
    from ..api import RuntimeOptions, load_pipeline
    from ..training.teacher_pairs import TeacherPairs, make_teacher_pairs

    path = out / "teacher_pairs.safetensors"
    if path.is_file() and len(TeacherPairs.load(path)) == count:
        return path
    prompts = [caption(spec) for spec in combinations("all")]
    loaded = load_pipeline(str(teacher), RuntimeOptions(device="cpu"))
    size = (DEFAULTS.num_frames, DEFAULTS.height, DEFAULTS.width)
    out.mkdir(parents=True, exist_ok=True)
    return make_teacher_pairs(loaded, prompts, count, PAIRS_SEED, size).save(path)


def save_student(folder: Path, teacher: Path, result: TrainResult) -> None:
    """The trained student's weights into its folder: the full transformer, or the teacher's with the LoRA merged
    (the LoRA file kept beside them, for ``--lora-path`` on the teacher)."""
    if result.lora_path is None:
        WanTransformer3DModel.from_pretrained(result.transformer_dir).save_original(folder)
        return
    from ..models.lora import merge_lora

    transformer = WanTransformer3DModel.from_pretrained(teacher)
    merge_lora(transformer, result.lora_path)
    transformer.save_original(folder)
    shutil.copy(result.lora_path, folder / "lora.safetensors")


def train_distill(
    out: str | Path, data: str | Path, teacher: str | Path = TEACHER, recipe: DistillRecipe | None = None,
    cache_dir: str | Path | None = None,
) -> Path:  # fmt: skip
    """Distil ``teacher`` (a packaged tiny model, by name or folder) on ``data``'s clips into
    OUT/<teacher>-Distill; resumable (the trainer's checkpoints). Returns the student's folder.

    cache_dir: an existing latent cache of the teacher's VAE and text encoder on the same clips (else built).
    """
    from ..registry import resolve_model

    recipe = recipe or DistillRecipe()
    out, data, teacher_folder = Path(out), Path(data), resolve_model(teacher)
    if teacher_folder.name not in MODELS:
        raise ValueError(f"{teacher}: the toy-world students are of {', '.join(MODELS)}")
    mode, _ = MODELS[teacher_folder.name]
    folder = student_folder(out, teacher_folder, recipe.denoising_steps)
    name = folder.name
    steps = Recipe.one_model(name, recipe.seed, recipe.batch, recipe.steps, recipe.learning_rate, recipe.clips)
    extra = {"cache_dir": str(cache_dir)} if cache_dir else {}
    if recipe.prompt_share:
        extra.update(prompt_settings(out, recipe.prompt_share))
    if recipe.ema_decay:
        extra.update(use_ema=True, ema_decay=recipe.ema_decay)
    if recipe.regression_pairs:
        pairs = teacher_pairs_file(out, teacher_folder, recipe.regression_pairs)
        extra.update(distill_regression_path=str(pairs), distill_regression_weight=recipe.regression_weight)
    # The teacher's weights, not the folder's: once a run finished the folder holds the student, and a rerun with
    # more --steps (resuming the run) must still start the teacher (and a LoRA student's base) from the teacher.
    result = train_on_cache(
        out, folder, data, steps, mode, transformer_path=str(teacher_folder),
        distill=True, text_drop_ratio=0.0, lr_warmup_steps=0, lr_scheduler="constant",
        critic_learning_rate=recipe.critic_learning_rate, generator_update_ratio=recipe.generator_update_ratio,
        denoising_step_list=list(recipe.denoising_steps), use_lora=recipe.use_lora, rank=recipe.rank,
        network_alpha=float(recipe.rank), **extra,
    )  # fmt: skip
    save_student(folder, teacher_folder, result)
    generator_losses = list(result.generator_losses.values())
    record = {
        "recipe": asdict(recipe),
        "teacher": teacher_folder.name,
        "final_critic_loss": result.losses[-1] if result.losses else None,
        "final_generator_loss": generator_losses[-1] if generator_losses else None,
    }
    (folder / "recipe.json").write_text(json.dumps(record, indent=1))
    return folder
