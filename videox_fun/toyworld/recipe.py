"""The recipe of the packaged tiny models: data, VAE, text encoder, transformers, calibration.

``videox-fun toyworld train-all OUT`` runs every stage; each stage is skipped when its output
exists, so a killed run continues where it stopped. The transformers go through the normal
training path (:func:`videox_fun.training.trainer.train` on a latent cache), exactly as a user's
fine-tune would. Seeds, step counts and timings are written to ``OUT/recipe.json`` and copied
next to the weights of each model folder. The CogVideoX-Fun model's recipe
(:mod:`.recipe_cogvideox`, ``--family cogvideox``) reuses these stages: data, the VAE phases,
the latent statistics, the training on a latent cache and the calibration.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import FOLDER_CONFIG_NAME, GenerationDefaults
from ..io.files import atomic_dir, reset_tree_modes
from ..models.wan.text_encoder import WanTextEncoder, build_word_tokenizer, tiny_umt5_config
from ..models.wan.tiny import write_folder_config
from ..models.wan.transformer import WanTransformer3DModel
from .world import vocabulary

if TYPE_CHECKING:
    from ..training.trainer import TrainResult

TEXT_DIM = 64
TEXT_LEN = 32
# Guidance 1.5: a sweep over 1-8 (24 prompts, then all 144 t2v videos at 1.5 and 2) showed that
# stronger guidance shrinks the shapes (a square's fill ratio 0.90 at 1.5, 0.82 at 5: read as a
# circle) while colour and direction hold from 1.5 up; control and i2v were also best at 1.5.
DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=17, fps=8, steps=20, guidance_scale=1.5, shift=3.0, sampler="Flow"
)
TRANSFORMER = {
    "model_type": "t2v",
    "patch_size": [1, 2, 2],
    "text_len": TEXT_LEN,
    "dim": 128,
    "ffn_dim": 384,
    "freq_dim": 64,
    "text_dim": TEXT_DIM,
    "out_dim": 16,
    "num_heads": 4,
    "num_layers": 4,
}
MODELS = {"Wan2.1-Fun-Tiny-InP": ("inpaint", 36), "Wan2.1-Fun-Tiny-Control": ("control", 48)}


@dataclass
class Recipe:
    """Every number of the recipe; written to recipe.json."""

    seed: int = 0
    train_clips: int = 1200
    heldout_clips: int = 48
    vae_steps: int = 4000
    vae_batch: int = 4
    # Foreground-centred 32x32 crops: the convolutional VAE learns the same edges at a quarter
    # of the cost per step, and the shape fills a larger share of each crop.
    vae_crop: int = 32
    # The cropped phase's cosine schedule spans vae_steps; it was stopped here (None: not stopped).
    vae_crop_stop_after: int | None = None
    # Then full frames: crops never show a VAE the empty far side of a frame, and a crop-trained
    # one paints blobs there. A short full-frame phase at a lower rate removes them.
    vae_full_steps: int = 300
    vae_full_learning_rate: float = 3e-4
    # Last, the decoder alone on full frames: sharper edges (square corners) while the encoder,
    # and so the latents the transformers learn, stay fixed.
    vae_decoder_steps: int = 1500
    vae_decoder_learning_rate: float = 2e-4
    vae_refine_steps: int = 1000
    vae_refine_learning_rate: float = 1e-4
    # Then a decoder twice as wide (decoder_base_dim 16), grown from the trained one so that it
    # starts with the same reconstruction (Net2Net), and trained alone: the base_dim 8 decoder
    # had stopped gaining (+0.8 dB, then +0.2 dB per phase) with its error on the shapes' edges.
    vae_wide_factor: int = 2
    vae_wide_steps: int = 1000
    # Half the narrow decoder's rate: Adam moves each weight by about the rate, and a layer with
    # twice the inputs sums twice the moves (2e-4 diverged here, the loss doubling by step 150).
    vae_wide_learning_rate: float = 1e-4
    vae_wide_warmup_steps: int = 100
    # Last, plain MSE (no L1, no foreground weight): the loss PSNR measures, once the earlier
    # losses have kept the background black and drawn the shapes.
    vae_mse_steps: int = 500
    vae_mse_learning_rate: float = 1e-4
    vae_mse_warmup_steps: int = 50
    # Full-length clips: a VAE trained on 5-frame clips decodes later latent frames of a 17-frame
    # video badly (its causal cache never saw that regime).
    vae_frames: int = 17
    transformer_steps: int = 2000
    # Per-model overrides of transformer_steps / learning_rate. Text-to-video (a third of the InP
    # model's samples) needs the longest training; the control model follows its video sooner.
    model_steps: dict[str, int] = field(default_factory=lambda: {"Wan2.1-Fun-Tiny-InP": 12000})
    model_learning_rates: dict[str, float] = field(default_factory=lambda: {"Wan2.1-Fun-Tiny-InP": 1e-3})
    transformer_batch: int = 16
    # The transformers see the first this-many training clips: caching the latents of the inpaint
    # masks is four VAE encodes per clip, the slowest part of the recipe on a CPU.
    transformer_clips: int = 600
    # Per-model overrides of transformer_clips: the InP model's t2v mode learns colour and motion
    # from the caption alone and gains most from more clips.
    model_clips: dict[str, int] = field(default_factory=lambda: {"Wan2.1-Fun-Tiny-InP": 1200})
    learning_rate: float = 5e-4
    models: list[str] = field(default_factory=lambda: list(MODELS))

    @classmethod
    def one_model(cls, name: str, seed: int, batch: int, steps: int, learning_rate: float, clips: int) -> Recipe:
        """The transformer settings of one model folder ``name`` (a later recipe's, e.g. VACE or a student)."""
        return cls(
            seed=seed,
            transformer_batch=batch,
            model_steps={name: steps},
            model_learning_rates={name: learning_rate},
            model_clips={name: clips},
        )

    @classmethod
    def smoke(cls, seed: int = 0, models: list[str] | None = None) -> Recipe:
        """Every stage of the recipe on 8 clips for one or two steps each: checks the whole chain in minutes."""
        return cls(
            seed=seed,
            train_clips=8,
            heldout_clips=2,
            vae_steps=2,
            vae_batch=2,
            vae_full_steps=1,
            vae_decoder_steps=1,
            vae_refine_steps=1,
            vae_wide_steps=1,
            vae_mse_steps=1,
            transformer_steps=2,
            model_steps={},
            transformer_batch=2,
            transformer_clips=6,
            model_clips={},
            models=models or list(MODELS),
        )


def write_data(out: Path, recipe: Recipe) -> Path:
    """The training clips (train split) and held-out clips (held-out combinations, other seeds)."""
    from .dataset import write_dataset

    data = out / "data"
    if not (data / "metadata_train.json").is_file():
        write_dataset(data, n=recipe.train_clips, seed=recipe.seed, split="train")
    if not (data / "metadata_heldout.json").is_file():
        write_dataset(data, n=recipe.heldout_clips, seed=recipe.seed + 1, split="heldout")
    return data


def train_toy_vae(
    out: Path, data: Path, recipe: Recipe, vae_class: str = "wan", vae_config: dict | None = None, prefix: str = ""
) -> Path:
    """A tiny VAE (z 16, 4x8x8): cropped, then full frames, then phases of the decoder alone.

    ``vae_class`` / ``vae_config`` choose the VAE (default: the Wan one, base_dim 8); its run
    folders are ``OUT/{prefix}vae_run*``. The widened-decoder phase runs when
    ``recipe.vae_wide_factor`` > 1 (Wan only: the training refuses it for other classes).
    """
    from ..models.wan.vae import tiny_vae_config
    from ..training.vae import VAETrainConfig, train_vae

    common = {
        "train_data_meta": str(data / "metadata_train.json"),
        "vae_class": vae_class,
        "video_sample_n_frames": recipe.vae_frames,
        "batch_size": recipe.vae_batch,
        "seed": recipe.seed,
        "foreground_weight": 5.0,
        "checkpointing_steps": 50,
    }
    cropped = VAETrainConfig(
        output_dir=str(out / f"{prefix}vae_run"),
        vae_config=vae_config if vae_config is not None else tiny_vae_config(base_dim=8),
        max_train_steps=recipe.vae_steps,
        stop_after_steps=recipe.vae_crop_stop_after,
        crop_size=recipe.vae_crop,
        **common,
    )
    trained = train_vae(cropped)
    # Each later phase starts from the one before; a phase of 0 steps ends the chain. The refine
    # phase is a warm restart of the decoder's cosine schedule, on a new clip order.
    wide = [
        {"output_dir": "vae_run_wide", "max_train_steps": recipe.vae_wide_steps,
         "learning_rate": recipe.vae_wide_learning_rate, "decoder_only": True, "seed": recipe.seed + 2,
         "widen_decoder": recipe.vae_wide_factor, "lr_warmup_steps": recipe.vae_wide_warmup_steps},
    ]  # fmt: skip
    later = [
        {"output_dir": "vae_run_full", "max_train_steps": recipe.vae_full_steps,
         "learning_rate": recipe.vae_full_learning_rate},
        {"output_dir": "vae_run_decoder", "max_train_steps": recipe.vae_decoder_steps,
         "learning_rate": recipe.vae_decoder_learning_rate, "decoder_only": True},
        {"output_dir": "vae_run_refine", "max_train_steps": recipe.vae_refine_steps,
         "learning_rate": recipe.vae_refine_learning_rate, "decoder_only": True, "seed": recipe.seed + 1},
        *(wide if recipe.vae_wide_factor > 1 else []),
        {"output_dir": "vae_run_mse", "max_train_steps": recipe.vae_mse_steps,
         "learning_rate": recipe.vae_mse_learning_rate, "decoder_only": True, "seed": recipe.seed + 3,
         "lr_warmup_steps": recipe.vae_mse_warmup_steps, "foreground_weight": 0.0, "l1_weight": 0.0},
    ]  # fmt: skip
    for phase in later:
        if not phase["max_train_steps"]:
            break
        settings = {**common, **phase, "output_dir": str(out / f"{prefix}{phase['output_dir']}")}
        trained = train_vae(VAETrainConfig(init_from=str(trained), **settings))
    return trained


def finished_vae(out: Path, trained: Path, data: Path, name: str = "vae") -> Path:
    """``OUT/vae`` (or ``OUT/name``): the trained VAE without its optimizer state, with its own latent statistics.

    The statistics (Wan: per-channel mean / std of the training clips' latents; CogVideoX: the
    scaling factor) replace the released ones in its config, so the transformers train on latents
    of about unit variance.
    """
    from ..training.vae import fit_latent_statistics

    final = out / name
    if (final / "config.json").is_file():
        return final
    with atomic_dir(final) as staging:  # a crash while fitting leaves no VAE with the Wan2.1 statistics as OUT/vae
        shutil.copytree(trained, staging, ignore=shutil.ignore_patterns("training_state.pt"), dirs_exist_ok=True)
        fit_latent_statistics(staging, str(data / "metadata_train.json"))
    return final


STAGES = ("data", "vae", "all")


def data_and_vae(
    out: Path,
    record: dict,
    write: Callable[[Path], Path],
    train_vae: Callable[[Path], Path],
    vae_name: str,
    vae: str | Path | None = None,
    until: str = "all",
) -> tuple[Path, Path | None]:
    """A recipe's first stages, timed into ``record["timings_s"]``: its data (``write(out)``), then, unless ``until``
    is "data", its VAE (``train_vae(data)``, or the trained ``vae`` folder given) finished as ``OUT/vae_name``
    (:func:`finished_vae`). Returns the data folder and the VAE folder (None when ``until`` is "data")."""
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, not {until!r}")
    started = time.perf_counter()
    data = write(out)
    record["timings_s"]["data"] = time.perf_counter() - started
    if until == "data":
        return data, None
    vae_dir = finished_vae(out, Path(vae) if vae else train_vae(data), data, name=vae_name)
    record["vae"] = str(vae_dir)
    record["timings_s"]["vae"] = time.perf_counter() - started
    return data, vae_dir


def text_encoder(seed: int) -> WanTextEncoder:
    """A frozen small UMT5 over the world's vocabulary (seeded random weights: it only has to tell words apart)."""
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(vocabulary())
    return WanTextEncoder.from_config(
        tiny_umt5_config(len(tokenizer), d_model=TEXT_DIM, num_heads=4, d_ff=128), tokenizer
    )


def model_folder(out: Path, name: str, vae_dir: Path, recipe: Recipe) -> Path:
    """A release-layout folder with an untrained transformer, the trained VAE and the text encoder."""
    folder = out / name
    if (folder / FOLDER_CONFIG_NAME).is_file():
        return folder
    _, in_dim = MODELS[name]
    torch.manual_seed(recipe.seed)
    WanTransformer3DModel.from_config({**TRANSFORMER, "in_dim": in_dim}).save_original(folder)
    shutil.copytree(vae_dir, folder / "vae", dirs_exist_ok=True)
    text_encoder(recipe.seed).save_pretrained(folder / "text_encoder")
    reset_tree_modes(folder / "text_encoder")  # transformers' safetensors would be 0600
    write_folder_config(folder, DEFAULTS, "trained on the toy world (videox-fun toyworld train-all); see recipe.json")
    return folder


def transformer_metadata(data: Path, clips: int) -> Path:
    """The metadata file of the first ``clips`` training clips (what one transformer trains on)."""
    path = data / f"metadata_train_{clips}.json"
    if not path.is_file():
        entries = json.loads((data / "metadata_train.json").read_text())[:clips]
        path.write_text(json.dumps(entries, indent=2))
    return path


def train_transformer(out: Path, folder: Path, data: Path, recipe: Recipe) -> Path:
    """Cache the latents, then train the transformer with the normal trainer; weights go back into ``folder``."""
    mode, _ = MODELS[folder.name]
    result = train_on_cache(out, folder, data, recipe, mode)
    trained = WanTransformer3DModel.from_pretrained(result.transformer_dir)
    trained.save_original(folder)
    return folder


def train_on_cache(out: Path, folder: Path, data: Path, recipe: Recipe, mode: str, **settings: Any) -> TrainResult:
    """The latent cache of ``folder``'s model (built once), then the normal trainer on it in ``OUT/runs/NAME``.

    Any family's folder: the trainer picks the family's spec from the folder. ``settings``: more
    training settings (e.g. ``trainable_modules``), or other values of these; with
    ``use_cached_latents=False`` no cache is built and the trainer reads the files (the image
    families offer no cache). Returns the trainer's result.
    """
    from ..training.cache import build_cache
    from ..training.config import TrainConfig
    from ..training.trainer import train

    run = out / "runs" / folder.name
    values: dict[str, Any] = dict(
        pretrained_model_name_or_path=str(folder),
        train_data_dir=str(data),
        train_data_meta=settings.pop("train_data_meta", None)
        or str(transformer_metadata(data, recipe.model_clips.get(folder.name, recipe.transformer_clips))),
        video_sample_size=[64],
        image_sample_size=[64],
        video_sample_n_frames=17,
        video_sample_stride=1,
        random_clip_start=False,
        train_mode=mode,
        output_dir=str(run),
        seed=recipe.seed,
        train_batch_size=recipe.transformer_batch,
        max_train_steps=recipe.model_steps.get(folder.name, recipe.transformer_steps),
        learning_rate=recipe.model_learning_rates.get(folder.name, recipe.learning_rate),
        lr_scheduler="cosine",
        lr_warmup_steps=100,
        adam_weight_decay=0.0,
        checkpointing_steps=250,
        resume_from_checkpoint="latest",
        report_to="none",
        use_cached_latents=True,
        vae_mini_batch=8,
        text_drop_ratio=0.1,
    )
    config = TrainConfig(**{**values, **settings})
    if config.use_cached_latents and not (config.resolved_cache_dir / "index.json").is_file():
        build_cache(config)
    return train(config)


def calibrate(folder: Path) -> None:
    """Fit the folder's own TeaCache coefficients (cache_calibration.json), with the command's defaults."""
    from ..runtime.calibrate import calibrate_cache

    calibrate_cache(folder, device="cpu")


def train_all(out: str | Path, recipe: Recipe | None = None, vae: str | Path | None = None) -> dict:
    """Every stage; returns (and writes) the recipe record."""
    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"recipe": asdict(recipe), "transformer": TRANSFORMER, "timings_s": {}}
    started = time.perf_counter()
    data = write_data(out, recipe)
    record["timings_s"]["data"] = time.perf_counter() - started
    vae_dir = finished_vae(out, Path(vae) if vae else train_toy_vae(out, data, recipe), data)
    record["vae"] = str(vae_dir)
    record["timings_s"]["vae"] = time.perf_counter() - started
    for name in recipe.models:
        folder = model_folder(out, name, vae_dir, recipe)
        if (folder / "recipe.json").is_file():  # written last: this model is finished
            continue
        train_transformer(out, folder, data, recipe)
        if MODELS[name][0] == "inpaint":  # its t2v mode runs on prompts alone; control needs videos
            calibrate(folder)
        record["timings_s"][name] = time.perf_counter() - started
        (folder / "recipe.json").write_text(json.dumps(record, indent=2))
    (out / "recipe.json").write_text(json.dumps(record, indent=2))
    return record
