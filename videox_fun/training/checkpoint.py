"""Resumable checkpoints, written atomically.

A checkpoint is ``OUTPUT_DIR/checkpoint-<step>/``: accelerate's ``save_state`` (optimizer, LR
scheduler, the RNG states of every process, and the model's trainable parameters) plus our
``training_state.json`` (step, epoch, position in the data order, and the settings that define
the run). It is written under a temporary name and renamed when complete, so a run killed while
saving leaves the previous checkpoint intact and never a half-written one under a real name.

Before anything loads, :func:`check_run_start` refuses a new run in an output folder that holds
another run, and a resume whose run-defining settings differ from the checkpoint's.

Only trainable parameters are stored (the LoRA adapters, or the fine-tuned modules): the frozen
rest is the pretrained model the run starts from anyway. When accelerate shards the model
itself (FSDP / DeepSpeed on accelerators) it saves its own sharded state instead; a model that
we shard ourselves on CPU (see :func:`videox_fun.training.trainer.shard_on_cpu`) is saved whole
through torch's distributed state-dict API.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..io.files import replace_dir, save_safetensors
from .config import TrainConfig, changed_run_settings, check_output_folder

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.distributed.checkpoint.state_dict import StateDictOptions

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
TRAINABLE_FILE = "trainable_{}.safetensors"
SHARDED_FILE = "sharded_state.pt"
LORA_FILE = "lora.safetensors"
TRANSFORMER_DIR = "transformer"
TRAIN_YAML = "train_config.yaml"  # the run's settings, readable with --config
SETTINGS_KEY = "settings"  # the run-defining settings in training_state.json


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint folder, None for anything else."""
    if not path.name.startswith(CHECKPOINT_PREFIX) or not (path / STATE_FILE).is_file():
        return None
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if suffix.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | os.PathLike, value: str | None) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: a folder, or ``latest`` (None when there is none yet)."""
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no checkpoint in %s yet: starting a new run", output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not path.is_dir():
        path = Path(output_dir) / value
    if checkpoint_step(path) is None:
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint folder ({path})")
    return path


def run_outputs(output_dir: str | os.PathLike) -> list[str]:
    """What of a run's outputs ``output_dir`` holds: checkpoint folders, the LoRA file, the full model folder."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    checkpoints = sorted(names, key=lambda name: (len(name), name))  # checkpoint-2 before checkpoint-10
    return checkpoints + [name for name in (LORA_FILE, TRANSFORMER_DIR) if (folder / name).exists()]


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[str]:
    """Delete the hidden ``.checkpoint-N.tmp`` folders a killed save left in ``output_dir``; returns their names.

    Only one run writes a folder at a time (:func:`check_run_start`), so at its start any such
    folder is a leftover: never a checkpoint (resume reads complete folders only), only garbage
    the size of one.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".{CHECKPOINT_PREFIX}*.tmp") if p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed %s, left by a checkpoint save that did not finish", path)
    return sorted(p.name for p in stale)


def read_training_state(folder: Path) -> dict:
    """A checkpoint's ``training_state.json``."""
    return json.loads((folder / STATE_FILE).read_text())


def check_run_start(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from (None: a new run), after checking that the run may start.

    Cheap, so it runs before any model loads. Fails (ValueError, one line) when ``output_dir`` is a
    file; when a new run would write into a folder holding another run's outputs (overwriting
    some, and leaving checkpoints a later resume would pick); and when the settings that define
    the run differ from those the checkpoint was written with (each named with both values).
    A checkpoint without that record (written before it was kept) resumes unchecked, with a note.
    """
    output_dir = check_output_folder(config.output_dir, "--output_dir")
    folder = resolve_resume(output_dir, config.resume_from_checkpoint)
    if folder is None:
        found = run_outputs(output_dir)
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            if config.resume_from_checkpoint:  # 'latest' and no complete checkpoint
                raise ValueError(
                    f"--output_dir {output_dir} holds another run ({shown}) but no complete checkpoint to resume "
                    "from: give a new or empty --output_dir, or move those outputs away"
                )
            raise ValueError(
                f"--output_dir {output_dir} already holds a run ({shown}): continue it with "
                "--resume_from_checkpoint latest, or give a new or empty --output_dir"
            )
        return None
    saved = read_training_state(folder).get(SETTINGS_KEY)
    if saved is None:
        logger.warning(
            "%s holds no record of its run's settings (written by an older version): "
            "cannot check that this resume uses the same ones",
            folder,
        )
        return folder
    changed = changed_run_settings(saved, config)
    if changed:
        raise ValueError(
            f"--resume_from_checkpoint {config.resume_from_checkpoint}: {folder} was trained with other settings "
            f"({'; '.join(changed)}): resume with the run's settings ({folder.parent / TRAIN_YAML} holds them), "
            "or start a new run in another --output_dir"
        )
    return folder


# ----------------------------------------------------------------------------------------
# accelerate hooks: store trainable parameters only
# ----------------------------------------------------------------------------------------
def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, detached on the CPU (fp32 master copies as they are)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def check_trainable_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """One-line ValueError unless ``state`` holds exactly ``expected``'s names (trainable parameters), shapes too."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source} does not match the trainable parameters of this run (same --use_lora / --rank / "
            f"--trainable_modules needed): missing {missing[:6]}, unexpected {unexpected[:6]}, "
            f"mis-shaped {misshaped[:6]}"
        )


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load trainable parameters strictly: exactly the model's trainable names, with their shapes."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    check_trainable_state(params, state, source)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def register_trainable_hooks(accelerator: Accelerator) -> None:
    """Make accelerate's save_state / load_state keep only the trainable parameters of each model."""

    def save_hook(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        if len(weights) != len(models):
            return  # accelerate saves a sharded model its own way
        if accelerator.is_main_process:
            for i, model in enumerate(models):
                state = trainable_state(accelerator.unwrap_model(model))
                save_safetensors(state, os.path.join(output_dir, TRAINABLE_FILE.format(i)))
        weights.clear()

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        for i, model in enumerate(models):
            path = os.path.join(input_dir, TRAINABLE_FILE.format(i))
            load_trainable_state(accelerator.unwrap_model(model), load_file(path), path)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ----------------------------------------------------------------------------------------
# A model sharded by us (FSDP2 on CPU): whole state through torch.distributed.checkpoint
# ----------------------------------------------------------------------------------------
def _full_options(**extra: Any) -> StateDictOptions:
    """Whole (unsharded) state dicts gathered to the CPU, with ``extra`` options."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def save_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, is_main: bool) -> None:
    """Gather the model's trainable parameters and the optimizer state (collective) and write them on rank 0."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_full_options(ignore_frozen_params=True))
    if is_main:
        torch.save({"model": model_state, "optimizer": optim_state}, folder / SHARDED_FILE)


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Inverse of :func:`save_sharded_state` (every rank reads the file)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    saved = torch.load(folder / SHARDED_FILE, map_location="cpu", weights_only=True)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=saved["model"],
        optim_state_dict=saved["optimizer"],
        options=_full_options(strict=False),
    )


# ----------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------
def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict,
    write_extra: Callable[[Path], None] | None = None,
    total_limit: int | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (all processes call this; rank 0 renames).

    ``write_extra(folder)`` runs on every process inside the temporary folder (collective
    saves go there, e.g. a LoRA file or a sharded model state).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    # Not atomic_dir: every process writes into the folder, so its name must be one they all know
    # without talking (not a random one), and rank 0 alone creates and swaps it, between barriers.
    # A save killed midway leaves this hidden folder; the next save of the step clears it.
    temporary = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if write_extra is not None:
        write_extra(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
        replace_dir(temporary, final)  # replaces the folder a rerun from an earlier checkpoint wrote for this step
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path, read_extra: Callable[[Path], None] | None = None) -> dict:
    """Restore accelerate's state (and the extras) from ``folder``; returns our training state."""
    accelerator.load_state(str(folder))
    if read_extra is not None:
        read_extra(folder)
    return read_training_state(folder)


def save_transformer_folder(
    model_class: Any, class_name: str, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path
) -> None:
    """A fully trained transformer in the diffusers layout of a release: ``config.json`` naming ``class_name`` (the
    diffusers class, so diffusers' ``from_pretrained`` reads it too) + safetensors, written atomically.

    ``state`` (the whole model, gathered when sharded) is checked key by key against a clean ``model_class`` built
    on the meta device from ``transformer``'s config, so nothing is written that our strict loader would refuse.
    """
    from ..io.files import atomic_dir
    from ..models.loading import check_state_dict, public_config, save_sharded

    config = {"_class_name": class_name, **public_config(transformer.config)}
    with torch.device("meta"):
        clean = model_class.from_model_config(config)
    check_state_dict(clean, state, "trained weights")
    with atomic_dir(folder) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        save_sharded({k: state[k] for k in clean.state_dict()}, staging)
