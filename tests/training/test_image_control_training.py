"""Control training of the image families' Fun control streams (Z-Image 2.1, FLUX.2, Qwen-Image) through the generic
trainer (``--train_mode control``): only the control weights change, the written control file loads through
``--control-path`` and reproduces the trained model exactly, a stopped and resumed run equals an uninterrupted one,
the training context equals the one the family's pipeline builds from the same images, a new stream in the release's
layout, LoRA on a trained stream, the entry scripts and the refusals.

``pytest tests/training/test_image_control_training.py -s`` prints the measured figures.
"""

from __future__ import annotations

import copy
import math
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from control_helpers import control_images, write_pngs
from diffusers import Flux2Transformer2DModel, ZImageControlNetModel
from helpers import max_diff, state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import REPO

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.cli import main
from videox_fun.io.video import frames_to_tensor
from videox_fun.models.flux2.tiny import build_tiny_control_file as build_flux2_control
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.models.zimage.control import read_control_release
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import write_test_dataset
from videox_fun.training.specs import get_spec
from videox_fun.training.specs.image_control import WEIGHTS_FILE, ControlTrainee, control_grid, draw_context
from videox_fun.training.trainer import Trainer, TrainResult, train

FAMILIES = ("zimage", "flux2", "qwenimage")
# family: (folder builder, variant with a tiny control file in its folder config, the base variant without one)
BUILDS = {"zimage": (build_tiny_zimage_folder, "turbo-control", "turbo"),
          "flux2": (build_tiny_flux2_folder, "dev-control", "dev"),
          "qwenimage": (build_tiny_qwenimage_folder, "t2i-control", "t2i")}  # fmt: skip
SCRIPTS = {"zimage": "z_image", "flux2": "flux2", "qwenimage": "qwenimage"}
SIZE, STEPS, SEED, PROMPT = 32, 2, 7, "a red square"
# A side stream copy's text-stream output layers (FLUX.2, Qwen-Image): the last copy's output text is not used.
TEXT_OUTPUT = ("to_add_out", "ff_context", "txt_mlp")
FAST: dict[str, Any] = dict(image_sample_size=[48], enable_bucket=True, report_to="none", checkpointing_steps=1000,
                            train_batch_size=2, learning_rate=1e-3, train_mode="control")  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """Tiny folders by family, with the tiny control file in their folder config (``control=True``) or without."""
    built: dict[tuple[str, bool], Path] = {}

    def get(family: str, control: bool = True) -> Path:
        if (family, control) not in built:
            build, with_control, base = BUILDS[family]
            variant = with_control if control else base
            built[family, control] = build(tmp_path_factory.mktemp(family) / variant, variant, seed=3)
        return built[family, control]

    return get


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images with their control images, in two aspect ratios (32x64, 48x48)."""
    return write_test_dataset(tmp_path_factory.mktemp("control_images"), n_videos=0, n_images=4,
                              sizes=((32, 64), (48, 48)), with_control=True)  # fmt: skip


@pytest.fixture(scope="module")
def make_config(folders, data, tmp_path_factory) -> Callable[..., TrainConfig]:
    """TrainConfig factory: control training of ``family``'s tiny folder on the control images."""

    def make(family: str, control: bool = True, **overrides: Any) -> TrainConfig:
        values = {**FAST, "pretrained_model_name_or_path": str(folders(family, control)), "train_data_meta": str(data),
                  "output_dir": str(tmp_path_factory.mktemp("out") / "out"), **overrides}  # fmt: skip
        return TrainConfig(**values)

    return make


@pytest.fixture(scope="module")
def trained(make_config) -> Callable[[str], tuple[Trainer, TrainResult]]:
    """Three control-training steps per family from the folder's control file, run once: (trainer, result)."""
    runs: dict[str, tuple[Trainer, TrainResult]] = {}

    def get(family: str) -> tuple[Trainer, TrainResult]:
        if family not in runs:
            trainer = Trainer(make_config(family, max_train_steps=3))
            runs[family] = trainer, trainer.train()
        return runs[family]

    return get


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """The keys whose tensors differ."""
    assert before.keys() == after.keys()
    return [key for key in before if not torch.equal(before[key].float(), after[key].float())]


def start_file(folder: Path) -> Path:
    """The control file a folder's config names."""
    return next(folder.glob("*Fun-Controlnet-Union-Tiny.safetensors"))


def control_request(mode: str, control_path: Path) -> GenerationRequest:
    """A control (or control_inpaint) request at the test settings with a control file, as --control-path gives it."""
    images = control_images(SIZE)
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:24, 4:20] = 255
    inpaint = {"image": images["depth"], "mask": mask} if mode == "control_inpaint" else {}
    return GenerationRequest(PROMPT, mode=mode, control_video=images["canny"], height=SIZE, width=SIZE, steps=STEPS,
                             seed=SEED, extra={"control_path": str(control_path)}, **inpaint)  # fmt: skip


def controlled_latents(pipe: Any, mode: str) -> torch.Tensor:
    """Final latents of a control (or control_inpaint) call at the test settings."""
    images = control_images(SIZE)
    inputs: dict[str, Any] = {"control_video": images["canny"]}
    if mode == "control_inpaint":
        mask = np.zeros((SIZE, SIZE, 3), np.uint8)
        mask[8:24, 4:20] = 255
        inputs.update(image=images["depth"], mask=mask)
    out = pipe(PROMPT, mode=mode, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False,
               **inputs)  # fmt: skip
    return out.latents


# ----------------------------------------------------------------------------------------
# What trains, and what the run writes
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_control_weights_change(trained, folders, family):
    trainer, result = trained(family)
    assert len(result.losses) == 3 and all(math.isfinite(loss) for loss in result.losses), result.losses
    fresh = trainer.spec.pipeline_class.from_pretrained(folders(family))
    frozen = {name: module for name, (module, _) in trainer.spec.pipe.components().items() if name != "control"}
    counts = {}
    for name, module in frozen.items():
        before = fresh.components()[name][0].state_dict()
        counts[name] = (len(changed(before, module.state_dict())), len(before))
    start, saved = load_file(str(start_file(folders(family)))), load_file(str(result.transformer_dir / WEIGHTS_FILE))
    counts["control"] = (len(changed(start, saved)), len(start))
    print(f"{family}: losses {[round(x, 4) for x in result.losses]}; tensors changed / all: "
          + ", ".join(f"{name} {n}/{total}" for name, (n, total) in counts.items()))  # fmt: skip
    assert all(n == 0 for name, (n, _) in counts.items() if name != "control")
    # Every control tensor moved but the last copy's text-stream output layers: the stream never reads that output.
    still = sorted(set(start) - set(changed(start, saved)))
    control = trainer.spec.control
    last = f"{control.blocks_name}.{len(control.copies) - 1}." if family != "zimage" else "(none)"
    assert all(key.startswith(last) and any(part in key for part in TEXT_OUTPUT) for key in still), still
    # What the optimizer stepped is exactly the control model's parameters.
    trainee = trainer.models.transformer
    assert isinstance(trainee, ControlTrainee)
    assert {id(p) for p in trainer.params} == {id(p) for p in trainee.control.parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_written_control_file_reproduces_the_trained_model(trained, folders, family):
    trainer, result = trained(family)
    saved = result.transformer_dir / WEIGHTS_FILE
    trainer.models.transformer.eval()
    loaded = load_pipeline(str(folders(family)), RuntimeOptions(device="cpu"))
    gaps = {}
    with torch.no_grad():
        for mode in ("control", "control_inpaint"):
            request = control_request(mode, saved)
            theirs = loaded.generate(request, progress=False)  # what `generate --control-path FILE` runs
            assert theirs.sidecar["control_path"] == str(saved)
            loaded.pipe.control = trainer.spec.control  # the trained model in memory (kept: the same path is named)
            ours = loaded.generate(request, progress=False)
            loaded.pipe.control = None
            start = loaded.generate(control_request(mode, start_file(folders(family))), progress=False)
            gaps[mode] = max_diff(ours.latents, theirs.latents)
            gaps[f"{mode}, the start file's"] = max_diff(start.latents, theirs.latents)
    loaded.close()
    print(f"{family}: final latents, trained model in memory vs its file through --control-path, max diff "
          + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items()))  # fmt: skip
    assert gaps["control"] == 0.0 and gaps["control_inpaint"] == 0.0
    assert gaps["control, the start file's"] > 1e-3  # training moved the output
    if family == "zimage":  # diffusers' own class reads the folder: the same weights
        theirs = ZImageControlNetModel.from_pretrained(str(result.transformer_dir))
        gap = state_dict_max_diff(theirs.state_dict(), load_file(str(saved)))
        print(f"zimage: diffusers' ZImageControlNetModel.from_pretrained(OUTPUT/transformer) vs the file: {gap}")
        assert gap == 0.0
        assert read_control_release(saved).name == "Fun-Controlnet-Union 2.x (2 control blocks)"


@pytest.mark.parametrize("family", FAMILIES)
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(make_config, tmp_path, family):
    def run(name: str, steps: int, **more: Any) -> TrainResult:
        return train(make_config(family, output_dir=str(tmp_path / name), max_train_steps=steps,
                                 gradient_accumulation_steps=2, checkpointing_steps=2, **more))  # fmt: skip

    whole = run("whole", 4)
    first = run("split", 2)
    rest = run("split", 4, resume_from_checkpoint="latest")
    assert first.losses + rest.losses == whole.losses
    gap = state_dict_max_diff(load_file(str(whole.transformer_dir / WEIGHTS_FILE)),
                              load_file(str(rest.transformer_dir / WEIGHTS_FILE)))  # fmt: skip
    print(f"{family}: control weights after 2 + resumed 2 steps vs 4 straight, max diff {gap}")
    assert gap == 0.0


# ----------------------------------------------------------------------------------------
# The inputs
# ----------------------------------------------------------------------------------------
def pixels_of(image: np.ndarray) -> torch.Tensor:
    """A uint8 (H, W, 3) image as the dataset gives it: (1, 3, H, W) in [-1, 1]."""
    return frames_to_tensor(torch.from_numpy(image)[None])[:, 0][None]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_training_context_is_the_pipelines(make_config, family):
    config = make_config(family)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    pipe, images = spec.pipe, control_images(SIZE)
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:24, 4:20] = 255
    inputs = {"control_video": images["canny"], "image": images["depth"], "mask": mask}
    control_inputs = {"control_video": images["canny"]}
    generate = torch.from_numpy(mask[None, None, :, :, 0] / 255.0).float()  # (1, 1, H, W), 1 = generate
    with torch.no_grad():
        ours = pipe.pack_control(control_grid(spec, models, pixels_of(images["canny"]), pixels_of(images["depth"]),
                                              generate, torch.device("cpu")))  # fmt: skip
        settings = pipe.resolve_settings("control_inpaint", inputs, height=SIZE, width=SIZE)
        theirs = pipe.control_context(settings, inputs)
        gap = max_diff(ours, theirs)
        # A sample drawn with everything generated and the masked image kept (the 10 % of all-generate samples
        # T2I_ZEROED leaves: the grey picture's latents) is the control mode's context (VideoX-Fun's control-only run).
        control_settings = pipe.resolve_settings("control", control_inputs, height=SIZE, width=SIZE)
        control_context = pipe.control_context(control_settings, control_inputs)
        latent = pipe.vae.latent_channels
        for seed in range(100):
            grid = draw_context(spec, models, pixels_of(images["canny"]), pixels_of(images["depth"]),
                                [torch.Generator().manual_seed(seed)], torch.device("cpu"))  # fmt: skip
            kept = grid[:, -latent:].abs().sum() > 0 and grid[:, :latent].abs().sum() > 0
            if grid[:, latent:-latent].abs().sum() == 0 and kept:  # known-pixels mask 0: everything generated
                break
        else:
            raise AssertionError("no seed of 100 drew an all-generate mask with the masked image kept")
        control_gap = max_diff(pipe.pack_control(grid), control_context)
    print(f"{family}: training context vs the pipeline's, control_inpaint max diff {gap:.1e}; an all-generate draw "
          f"(seed {seed}) vs the control mode's {control_gap:.1e}; shape {tuple(theirs.shape)}")  # fmt: skip
    assert gap == 0.0 and control_gap == 0.0


def test_the_random_draws_follow_videox_funs_mix(make_config):
    count = 160  # samples: the binomial sd is 2.4 points at 10 %, 3.6 at 70 %
    config = make_config("qwenimage")
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    latent, image = spec.pipe.vae.latent_channels, pixels_of(control_images(SIZE)["depth"])
    generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
    with torch.no_grad():
        grid = draw_context(spec, models, image.expand(count, -1, -1, -1), image.expand(count, -1, -1, -1), generators,
                            torch.device("cpu"))  # fmt: skip
    dropped = (grid[:, :latent].abs().flatten(1).sum(1) == 0).float().mean().item()
    keep = grid[:, latent : latent + 4]  # the packed known-pixels mask (4 pixels a token)
    everything = (keep.flatten(1).sum(1) == 0).float().mean().item()
    print(f"control latents dropped in {dropped:.0%} of {count} samples (VideoX-Fun 10 %); all-generate masks "
          f"{everything:.0%} (70 %)")  # fmt: skip
    assert 0.04 <= dropped <= 0.17 and 0.6 <= everything <= 0.8


# ----------------------------------------------------------------------------------------
# A new stream, LoRA, gradient checkpointing
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_a_new_stream_has_the_release_layout_and_starts_as_the_base(make_config, family):
    config = make_config(family, control=False, max_train_steps=2)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    control, base = models.transformer.control, models.transformer.base
    copies = control.control_layers if family == "zimage" else control.copies
    main = base.layers if family == "zimage" else base.transformer_blocks
    places = control.control_layers_places if family == "zimage" else control.config.control_layers
    gap = max(max_diff(copied.state_dict()[key], value) for copied, place in zip(copies, places, strict=True)
              for key, value in main[place].state_dict().items())  # fmt: skip
    projections = [p for name, p in control.named_parameters() if "before_proj" in name or "after_proj" in name]
    channels = {"zimage": 33, "flux2": 260, "qwenimage": 132}[family]
    in_dim = control.config.control_in_dim
    print(f"{family}: a new stream of {len(copies)} copies, context {in_dim} channels; copies vs the base's blocks "
          f"max diff {gap}")  # fmt: skip
    assert in_dim == channels and gap == 0.0 and all(not p.any() for p in projections)
    result = train(config)
    saved = result.transformer_dir / WEIGHTS_FILE
    if family == "zimage":
        assert read_control_release(saved).version == "2.x"  # a refiner stream: 2.1's layout
    loaded = load_pipeline(str(config.pretrained_model_name_or_path), RuntimeOptions(device="cpu"))
    request = GenerationRequest(PROMPT, mode="control_inpaint", control_video=control_images(SIZE)["pose"],
                                image=control_images(SIZE)["depth"], mask=control_images(SIZE)["canny"],
                                height=SIZE, width=SIZE, steps=STEPS, extra={"control_path": str(saved)})  # fmt: skip
    assert loaded.generate(request, progress=False).latents.isfinite().all()
    loaded.close()


def test_a_lora_on_the_control_stream_is_merged_into_its_file(make_config, folders):
    config = make_config("zimage", use_lora=True, rank=4, network_alpha=4.0, learning_rate=1e-2, max_train_steps=3)
    trainer = Trainer(config)
    result = trainer.train()
    assert result.lora_path == Path(config.output_dir) / "transformer" / WEIGHTS_FILE
    start, saved = load_file(str(start_file(folders("zimage")))), load_file(str(result.lora_path))
    moved = changed(start, saved)
    adapted = {name.split(".lora_A.")[0].removeprefix("control.") + ".weight"
               for name, _ in trainer.models.transformer.named_parameters() if ".lora_A." in name}  # fmt: skip
    with torch.no_grad():
        ours = controlled_latents(copy.copy(trainer.spec.pipe), "control")  # the adapters unmerged
        pipe = trainer.spec.pipeline_class.from_pretrained(folders("zimage"))
        pipe.use_control(result.lora_path)
        theirs = controlled_latents(pipe, "control")
    gap = max_diff(ours, theirs)
    print(f"zimage LoRA on the control stream: {len(moved)} of {len(start)} tensors changed, all adapted weights "
          f"({len(adapted)} layers); trained model vs its merged file, final latents max diff {gap:.1e}")  # fmt: skip
    assert set(moved) == adapted and gap <= 1e-5


def test_gradient_checkpointing_changes_nothing(make_config, tmp_path):
    weights = {}
    for checkpointing in (False, True):
        result = train(make_config("flux2", max_train_steps=2, output_dir=str(tmp_path / str(checkpointing)),
                                   gradient_checkpointing=checkpointing))  # fmt: skip
        weights[checkpointing] = (result.losses, load_file(str(result.transformer_dir / WEIGHTS_FILE)))
    gap = state_dict_max_diff(weights[False][1], weights[True][1])
    print(f"flux2 control, gradient checkpointing on vs off: weights max diff {gap}")
    assert weights[False][0] == weights[True][0] and gap == 0.0


def test_flux2_trains_text_to_image_too(make_config, folders):
    config = make_config("flux2", control=False, train_mode="normal", max_train_steps=2)
    result = train(config)
    assert all(math.isfinite(loss) for loss in result.losses)
    theirs = Flux2Transformer2DModel.from_pretrained(str(result.transformer_dir))
    ours = load_file(str(next(result.transformer_dir.glob("*.safetensors"))))
    assert state_dict_max_diff(theirs.state_dict(), ours) == 0.0


# ----------------------------------------------------------------------------------------
# Entry points and refusals
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_the_scripts_are_the_generic_entry_in_control_mode(monkeypatch, family):
    calls: list[dict] = []
    monkeypatch.setattr("videox_fun.training.cli.run_train_script", lambda **presets: calls.append(presets))
    runpy.run_path(str(REPO / "scripts" / SCRIPTS[family] / "train_control.py"), run_name="__main__")
    assert calls == [{"train_mode": "control"}]


def test_videox_fun_train_control_validates_with_a_control_image(make_config, tmp_path, capsys):
    control = write_pngs(tmp_path, {"canny": control_images(SIZE)["canny"]})["canny"]
    config = make_config("qwenimage", max_train_steps=2, output_dir=str(tmp_path / "out"))
    flags = [f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}",
             f"--train_data_meta={config.train_data_meta}", f"--output_dir={config.output_dir}",
             "--train_mode=control", "--max_train_steps=2", "--image_sample_size=48", "--enable_bucket",
             "--report_to=none", "--train_batch_size=2", "--validation_steps=2", "--validation_prompts", PROMPT,
             f"--validation_control_video={control}", "--validation_sample_size=32", "--validation_inference_steps=2",
             "--trainable_modules", "control", "--add_inpaint_info"]  # fmt: skip
    assert main(["train", *flags]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "out" / "transformer" / WEIGHTS_FILE).is_file()
    assert (tmp_path / "out" / "samples" / "step-000002-00.png").is_file()


def refusal(argv: list[str], capsys) -> str:
    """The one line ``videox-fun train`` printed when it refused ``argv`` (exit code 2)."""
    capsys.readouterr()
    assert main(["train", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_refusals_are_one_line(make_config, folders, tmp_path, capsys):
    base = [f"--train_data_meta={make_config('zimage').train_data_meta}", "--train_mode=control", "--report_to=none",
            "--max_train_steps=1", f"--output_dir={tmp_path / 'out'}"]  # fmt: skip
    new_lora = refusal([f"--pretrained_model_name_or_path={folders('zimage', False)}", "--use_lora", *base], capsys)
    assert "--use_lora adapts a trained control stream" in new_lora
    other = build_flux2_control(tmp_path / "flux2.safetensors")
    foreign = refusal([f"--pretrained_model_name_or_path={folders('zimage', False)}",
                       f"--transformer_path={other}", *base], capsys)  # fmt: skip
    assert "a FLUX.2 Fun control file (control_transformer_blocks.*), not a Z-Image Fun control file" in foreign
