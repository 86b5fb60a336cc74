"""Training the flow-matching image families (FLUX.1, Z-Image, Qwen-Image) through the generic trainer: the shift
their schedulers use, LoRA and full fine-tunes that lower a fixed-noise loss on a small image dataset (two aspect-ratio
buckets), exact resume, LoRA files that diffusers' pipelines load with the same effect as our ``--lora-path`` merge,
full fine-tunes that diffusers' transformer classes load, the scripts and ``videox-fun train``, and the refusals.

``pytest tests/training/test_image_training.py -s`` prints the measured figures.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, QwenImageTransformer2DModel
from diffusers import ZImageTransformer2DModel as DiffusersZImageTransformer
from helpers import state_dict_max_diff
from image_helpers import (
    BUILDERS,
    FAMILIES,
    IMAGE_FAST,
    TRANSFORMERS,
    diffusers_latents,
    diffusers_pipeline,
    our_latents,
    trained_transformer,
    write_image_dataset,
)
from safetensors.torch import load_file
from training_helpers import REPO, check_resume_matches_uninterrupted, fixed_noise_loss, subprocess_env

from videox_fun.cli import main
from videox_fun.families.flux import FLUX
from videox_fun.models.flux.tiny import SCHEDULER_CONFIGS
from videox_fun.models.qwenimage.variants import SCHEDULER_CONFIG as QWENIMAGE_SCHEDULER
from videox_fun.models.zimage.variants import SCHEDULER_CONFIG as ZIMAGE_SCHEDULER
from videox_fun.pipelines.common import calculate_shift
from videox_fun.training.config import TrainConfig
from videox_fun.training.objectives import FlowMatching, shift_sigmas
from videox_fun.training.specs import get_spec, spec_name
from videox_fun.training.specs.image import TokenShiftFlowMatching, image_objective
from videox_fun.training.trainer import train

DIFFUSERS_TRANSFORMERS = {"flux": FluxTransformer2DModel, "zimage": DiffusersZImageTransformer,
                          "qwenimage": QwenImageTransformer2DModel}  # fmt: skip
SCRIPTS = {"flux": "flux", "flux2": "flux2", "zimage": "z_image", "qwenimage": "qwenimage"}


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny folders by family (Qwen-Image also "qwenimage-edit"), built once per module."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            root = tmp_path_factory.mktemp(family)
            if family.startswith("qwenimage-edit"):  # "qwenimage-edit", "qwenimage-edit-plus" (Edit-2509)
                built[family] = BUILDERS["qwenimage"](root / family, family.removeprefix("qwenimage-"), seed=3)
            else:
                built[family] = BUILDERS[family](root / family, seed=3)
        return built[family]

    return get


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Metadata of four images in two aspect ratios (32x64, 48x48)."""
    return write_image_dataset(tmp_path_factory.mktemp("images"))


@pytest.fixture
def image_config(image_folders, image_data, tmp_path) -> Callable[..., TrainConfig]:
    """TrainConfig factory on a tiny folder of ``family`` (no --family: the folder's family picks the spec)."""

    def make(family: str, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            **IMAGE_FAST,
            "pretrained_model_name_or_path": str(image_folders(family)),
            "train_data_meta": str(image_data),
            "output_dir": str(tmp_path / "out"),
            **overrides,
        }
        return TrainConfig(**values)

    return make


def flags(config: TrainConfig) -> list[str]:
    """``config``'s set fields as command-line flags."""
    out: list[str] = []
    for name, value in config.to_dict().items():
        if value is None or value is False or value == []:
            continue
        if value is True:
            out.append(f"--{name}")
        elif isinstance(value, list):
            out += [f"--{name}", *map(str, value)]
        else:
            out += [f"--{name}", str(value)]
    return out


# ----------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["FLUX.1-dev", "Qwen-Image"])
def test_the_dynamic_shift_is_the_schedulers_at_the_batch_token_count(name):
    scheduler_config = SCHEDULER_CONFIGS[name] if name != "Qwen-Image" else QWENIMAGE_SCHEDULER
    objective = image_objective(TrainConfig(timestep_sampling="uniform"), scheduler_config)
    assert isinstance(objective, TokenShiftFlowMatching)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    u = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    for tokens in (8, 9, 1024, 4096):
        mu = calculate_shift(tokens, scheduler_config)  # what the pipeline sets at this many tokens
        ours = shift_sigmas(u, objective.at_tokens(tokens).shift)
        theirs = scheduler.time_shift(mu, 1.0, u)
        gap = (ours - theirs).abs().max().item()
        print(f"{name}: {tokens} tokens, mu {mu:.4f}: shifted sigmas vs diffusers' time_shift max diff {gap:.1e}")
        assert gap <= 1e-12
    # A static --shift replaces the dynamic one, as --shift does at inference.
    static = image_objective(TrainConfig(shift=5.0), scheduler_config)
    assert type(static) is FlowMatching and static.shift == 5.0


def test_a_static_scheduler_trains_at_its_shift():
    for scheduler_config, shift in ((ZIMAGE_SCHEDULER, 3.0), (SCHEDULER_CONFIGS["FLUX.1-schnell"], 1.0)):
        objective = image_objective(TrainConfig(), scheduler_config)
        assert type(objective) is FlowMatching and objective.shift == shift


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_training_lowers_the_fixed_noise_loss(image_config, family, lora):
    settings = dict(use_lora=True, rank=4, network_alpha=4.0, learning_rate=1e-2) if lora else {"learning_rate": 2e-3}
    config = image_config(family, max_train_steps=20, **settings)
    assert spec_name(config) == family  # the folder's family names its spec
    result = train(config)
    folder = Path(config.pretrained_model_name_or_path)
    base = TRANSFORMERS[family].from_pretrained(folder / "transformer")
    trained = trained_transformer(family, folder, result)
    before, after = fixed_noise_loss(config, base), fixed_noise_loss(config, trained)
    print(f"{family} {'LoRA' if lora else 'full'}: fixed-noise loss {before:.4f} -> {after:.4f} "
          f"({after / before:.2f}); step losses {result.losses[0]:.4f} ... {result.losses[-1]:.4f}")  # fmt: skip
    assert after < 0.9 * before, (before, after)
    if not lora:  # the folder is diffusers' layout: its class loads it to the same weights
        saved = json.loads((result.transformer_dir / "config.json").read_text())
        theirs = DIFFUSERS_TRANSFORMERS[family].from_pretrained(str(result.transformer_dir))
        assert saved["_class_name"] == DIFFUSERS_TRANSFORMERS[family].__name__
        assert state_dict_max_diff(trained.state_dict(), theirs.state_dict()) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(image_config, tmp_path, family, lora):
    settings = dict(use_lora=lora, rank=4, network_alpha=4.0, gradient_accumulation_steps=2)

    def run(name: str, steps: int, **more: Any):
        return train(image_config(family, output_dir=str(tmp_path / name / "out"), max_train_steps=steps,
                                  **settings, **more))  # fmt: skip

    check_resume_matches_uninterrupted(run, tmp_path, lora, f"{family} {'LoRA' if lora else 'full'}")
    assert f"family: {family}" in (tmp_path / "split" / "out" / "train_config.yaml").read_text()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lora_file_loads_in_diffusers_with_our_pipelines_effect(image_config, family):
    config = image_config(family, use_lora=True, rank=4, network_alpha=2.0, learning_rate=1e-2, max_train_steps=6)
    path = train(config).lora_path
    tensors = load_file(str(path))
    assert all(k.startswith("transformer.") and ".lora_" in k for k in tensors)  # diffusers' layout, no alphas
    folder = Path(config.pretrained_model_name_or_path)
    with_lora, without = our_latents(folder, path), our_latents(folder)
    pipe = diffusers_pipeline(family, folder)
    their_base = diffusers_latents(family, pipe)
    pipe.load_lora_weights(str(path))
    theirs = diffusers_latents(family, pipe)
    gap, base_gap = (with_lora - theirs).abs().max().item(), (without - their_base).abs().max().item()
    effect = (with_lora - without).abs().max().item()
    print(f"{family}: final latents with the LoRA, ours (--lora-path) vs diffusers (load_lora_weights) max diff "
          f"{gap:.2e} (without: {base_gap:.2e}); the LoRA moves them by up to {effect:.3f}")  # fmt: skip
    assert gap <= 1e-5 and base_gap <= 1e-5 and effect > 1e-2


# ----------------------------------------------------------------------------------------
# Entry points and refusals
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(SCRIPTS))
@pytest.mark.parametrize("script", ["train", "train_lora"])
def test_the_scripts_are_the_generic_entry_with_their_presets(monkeypatch, family, script):
    calls: list[dict] = []
    monkeypatch.setattr("videox_fun.training.cli.run_train_script", lambda **presets: calls.append(presets))
    runpy.run_path(str(REPO / "scripts" / SCRIPTS[family] / f"{script}.py"), run_name="__main__")
    assert calls == [{"use_lora": True} if script == "train_lora" else {}]


def test_a_script_trains_an_image_folder(image_config, tmp_path):
    config = image_config("zimage", max_train_steps=2, output_dir=str(tmp_path / "script"))
    script = REPO / "scripts" / "z_image" / "train_lora.py"
    done = subprocess.run([sys.executable, str(script), *flags(config), "--rank", "4"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transformer.layers.0.attention.to_q.lora_A.weight" in load_file(
        str(tmp_path / "script" / "lora.safetensors")
    )


def test_videox_fun_train_runs_on_an_image_folder(image_config, capsys):
    config = image_config("qwenimage", max_train_steps=2, validation_steps=2, validation_prompts=["a red square"],
                          validation_sample_size=[32], validation_inference_steps=2)  # fmt: skip
    assert main(["train", *flags(config)]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    output = Path(config.output_dir)
    assert (output / "transformer" / "config.json").is_file()
    assert (output / "samples" / "step-000002-00.png").is_file()  # validation: one frame is written as PNG


def refusal(argv: list[str], capsys) -> str:
    """The line ``videox-fun train`` printed when it refused ``argv`` (exit code 2); progress bars of the models
    it loaded first (and of the fixtures' folders, built before) aside."""
    capsys.readouterr()
    assert main(["train", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_family_that_declares_no_spec_is_refused_in_one_line(image_config, monkeypatch, capsys):
    monkeypatch.setattr(FLUX, "training_spec", "")
    err = refusal(flags(image_config("flux", max_train_steps=1)), capsys)
    assert "is a flux model, and that family declares no training spec" in err


@pytest.mark.parametrize(
    ("family", "overrides", "message"),
    [
        ("flux", {"train_mode": "control"}, "--train_mode control is not offered for FLUX.1"),
        ("zimage", {"train_mode": "inpaint"}, "--train_mode inpaint is not offered for Z-Image"),
        ("qwenimage-edit", {}, "training Qwen-Image-Edit (edit pairs) is not supported yet"),
        ("qwenimage-edit-plus", {}, "training Qwen-Image-Edit-2509 (edit pairs) is not supported yet"),
    ],
)
def test_what_the_image_specs_do_not_offer_is_refused_in_one_line(image_config, capsys, family, overrides, message):
    assert message in refusal(flags(image_config(family, max_train_steps=1, **overrides)), capsys)


def test_a_video_batch_is_refused(image_config):
    config = image_config("flux")
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    video = {"pixel_values": torch.zeros(1, 3, 5, 32, 32), "text": ["a red square"]}
    with pytest.raises(
        ValueError, match='trains on images: this batch holds 5-frame videos; give the metadata entries "type": "image"'
    ):
        spec.build_inputs(models, video, "normal", [torch.Generator()], "cpu")
