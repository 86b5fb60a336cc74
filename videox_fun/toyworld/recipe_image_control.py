"""A Fun control stream for a toy-world image model: ``videox-fun toyworld train-image-control WORK --base FOLDER``.

The base is an image model of a family with Fun control files, e.g. the tiny toy Z-Image that
``toyworld train-image`` trains (:mod:`.recipe_image`). The stream trains through the normal trainer's control mode
(:mod:`videox_fun.training.specs.image_control`: the base frozen, a new stream of the release's layout started as
the base's blocks, VideoX-Fun's random masks and control drop) on the toy world's first frames with their Canny
control images (``WORK/image_data``, seen colour x shape pairs only, or ``--data``: a folder ``toyworld
write-dataset --images`` wrote, such as the base recipe's ``OUT/image_data``). The run lives in ``WORK/runs/NAME``
and resumes from its latest checkpoint when rerun; the finished model folder ``WORK/NAME`` (``NAME`` = the base's
name + ``-Control``) is the base's folder with the trained control file beside it, named by its folder config
(``control_path``, ``control_context_scale`` 1: the scale it trained at), so that ``videox-fun generate --model
WORK/NAME --mode control --control-video EDGES.png`` steers it. The record goes to ``WORK/recipe_image_control.json``
and into the folder as ``recipe_control.json`` (written last: the folder is finished).

:mod:`.report_image_control` measures it: the centroid error of the generated shape against the control image's,
and colour / shape accuracy, seen vs held-out.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import FOLDER_CONFIG_NAME, read_yaml_mapping
from ..io.files import atomic_dir, reset_tree_modes

CONTROL_FILE = "toy-fun-control.safetensors"
SUFFIX = "-Control"
DATA = "image_data"


@dataclass
class ImageControlRecipe:
    """Every number of the control recipe; written to the record. The step budget is small on purpose (raise
    ``steps`` for a better stream): a step at batch 16 encodes 48 images (image, control, masked image)."""

    seed: int = 0
    train_images: int = 4000  # stills rendered into WORK/image_data when no --data is given
    steps: int = 1000
    batch: int = 16
    learning_rate: float = 5e-4
    warmup_steps: int = 50
    text_drop_ratio: float = 0.1
    checkpointing_steps: int = 250
    checkpoints_kept: int = 3
    vae_mini_batch: int = 16  # images the VAE encodes at once (a whole batch: no gain from splitting on a CPU)
    sample_size: int = 64  # the toy world's frames

    @classmethod
    def smoke(cls, seed: int = 0) -> ImageControlRecipe:
        """Eight images, two steps at batch 2: checks the chain in seconds."""
        return replace(cls(seed=seed), train_images=8, steps=2, batch=2, warmup_steps=0, checkpointing_steps=1,
                       vae_mini_batch=2)  # fmt: skip


def write_control_data(work: Path, recipe: ImageControlRecipe) -> Path:
    """``WORK/image_data``: ``recipe.train_images`` stills of the seen pairs with their control images (kept when
    already written)."""
    from .dataset import write_dataset

    data = work / DATA
    if not (data / "metadata_train.json").is_file():
        write_dataset(data, n=0, images=recipe.train_images, seed=recipe.seed, split="train")
    return data


def train_stream(work: Path, base: Path, data: Path, name: str, recipe: ImageControlRecipe) -> Path:
    """The trainer's control mode on the stills (resuming from the latest checkpoint); returns the control file."""
    from ..training.config import TrainConfig
    from ..training.trainer import train

    config = TrainConfig(
        pretrained_model_name_or_path=str(base),
        train_data_dir=str(data),
        train_data_meta=str(data / "metadata_train.json"),
        train_mode="control",
        image_sample_size=[recipe.sample_size],
        output_dir=str(work / "runs" / name),
        seed=recipe.seed,
        train_batch_size=recipe.batch,
        max_train_steps=recipe.steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler="cosine",
        lr_warmup_steps=recipe.warmup_steps,
        adam_weight_decay=0.0,
        text_drop_ratio=recipe.text_drop_ratio,
        checkpointing_steps=recipe.checkpointing_steps,
        checkpoints_total_limit=recipe.checkpoints_kept,
        resume_from_checkpoint="latest",
        report_to="none",
        vae_mini_batch=recipe.vae_mini_batch,
    )
    return train(config).transformer_dir / "diffusion_pytorch_model.safetensors"


def control_folder(base: Path, control: Path, target: Path, note: str) -> Path:
    """``target``: the base's folder with ``control`` beside it, named by the folder config (scale 1, as trained)."""
    with atomic_dir(target) as staging:
        shutil.copytree(base, staging, dirs_exist_ok=True)
        shutil.copyfile(control, staging / CONTROL_FILE)
        settings: dict[str, Any] = read_yaml_mapping(staging / FOLDER_CONFIG_NAME, "folder config")
        settings.update(control_path=CONTROL_FILE, control_context_scale=1.0, note=note)
        (staging / FOLDER_CONFIG_NAME).write_text(yaml.safe_dump(settings, sort_keys=False))
        reset_tree_modes(staging)
    return target


def train_image_control(
    work: str | Path, base: str | Path, recipe: ImageControlRecipe | None = None, data: str | Path | None = None
) -> dict:
    """Data (unless ``data`` names a folder), the control stream, the model folder; returns (and writes) the
    record. A finished folder (its ``recipe_control.json``) is kept as it is."""
    from ..registry import resolve_model

    recipe = recipe or ImageControlRecipe()
    work, base = Path(work), resolve_model(str(base))
    if not (base / FOLDER_CONFIG_NAME).is_file():
        raise ValueError(f"--base {base}: a model folder with its {FOLDER_CONFIG_NAME} (e.g. the one `toyworld "
                         "train-image` writes) is needed, to name the control file in")  # fmt: skip
    name = base.name + SUFFIX
    target = work / name
    record: dict = {"base": str(base), "model": name, "recipe": asdict(recipe), "timings_s": {}}
    if (target / "recipe_control.json").is_file():
        return json.loads((target / "recipe_control.json").read_text())
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    folder = Path(data) if data is not None else write_control_data(work, recipe)
    record["data"] = str(folder)
    record["timings_s"]["data"] = time.perf_counter() - started
    control = train_stream(work, base, folder, name, recipe)
    record["timings_s"]["control"] = time.perf_counter() - started - record["timings_s"]["data"]
    note = f"{base.name} with a Fun control stream trained on toy-world edges (toyworld train-image-control)"
    control_folder(base, control, target, note)
    (target / "recipe_control.json").write_text(json.dumps(record, indent=2))
    (work / "recipe_image_control.json").write_text(json.dumps(record, indent=2))
    return record
