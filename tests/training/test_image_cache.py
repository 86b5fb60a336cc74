"""The latent cache of the image families (FLUX.1, FLUX.2, Z-Image, Qwen-Image): ``videox-fun cache`` on an image
folder, then ``--use_cached_latents``.

A run from the cache is the run from the images: the same losses and, after 3 steps, the same weights (max diff
printed; 0 on these tiny models), for text-to-image full and LoRA runs and for control training, with half the texts
dropped (a cached run reads the dataset's own text-dropout draws and the empty prompt's cached encoding), from a copy
of the folder without its text encoders (and, for text to image, its VAE's weights). The cached text inputs equal the
encoders' (the empty prompt's too); a failed rebuild leaves the previous cache whole (cache.py's machinery); a cache
that lacks what the mode needs is one line.

``pytest tests/training/test_image_cache.py -s`` prints the measured figures.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import max_diff, state_dict_max_diff
from image_helpers import BUILDERS, IMAGE_FAST
from safetensors.torch import load_file
from training_helpers import write_train_yaml

from videox_fun.cli import main
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.training.cache import CachedLatentDataset, build_cache, collate_cached
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import write_test_dataset
from videox_fun.training.data.dataset import drops_text
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.specs.image import FlowImageSpec
from videox_fun.training.trainer import train

FOLDER_BUILDERS = {**BUILDERS, "flux2": build_tiny_flux2_folder}
# Control training: the tiny folders whose config names a tiny Fun control file (each context reads a mask).
CONTROL_BUILDS = {"zimage": (build_tiny_zimage_folder, "turbo-control"),
                  "flux2": (build_tiny_flux2_folder, "dev-control"),
                  "qwenimage": (build_tiny_qwenimage_folder, "t2i-control")}  # fmt: skip
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
DROP = 0.5  # text_drop_ratio of the comparisons: the cached run must drop the texts the decoded run drops
WEIGHTS = {False: "transformer/diffusion_pytorch_model.safetensors", True: "lora.safetensors"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny folders by family ("<family>-control": with its tiny control file), built once per module."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            family, _, control = name.partition("-")
            root = tmp_path_factory.mktemp(name)
            if control:
                build, variant = CONTROL_BUILDS[family]
                built[name] = build(root / variant, variant, seed=3)
            else:
                built[name] = FOLDER_BUILDERS[family](root / family, seed=3)
        return built[name]

    return get


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images in two aspect ratios (32x64, 48x48), with control images."""
    return write_test_dataset(tmp_path_factory.mktemp("images"), n_videos=0, n_images=4,
                              sizes=((32, 64), (48, 48)), with_control=True)  # fmt: skip


def config_for(folder: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    """A 3-step run of ``folder`` on ``data`` into ``out`` (cache in ``out/cache``)."""
    values = {**IMAGE_FAST, "pretrained_model_name_or_path": str(folder), "train_data_meta": str(data),
              "output_dir": str(out / "run"), "cache_dir": str(out / "cache"), "max_train_steps": 3,
              "text_drop_ratio": DROP, **overrides}  # fmt: skip
    return TrainConfig(**values)


def lean_copy(folder: Path, target: Path, keep_vae: bool) -> Path:
    """``folder`` without its text encoders and, unless ``keep_vae``, its VAE's weights (recognising the folder reads
    the VAE's config): what a cached run may not read."""
    shutil.copytree(folder, target)
    for name in TEXT_ENCODERS:
        shutil.rmtree(target / name, ignore_errors=True)
    if not keep_vae:
        for weights in (target / "vae").glob("*.safetensors"):
            weights.unlink()
    return target


def compare_runs(folder: Path, data: Path, tmp_path: Path, label: str, keep_vae: bool, **settings: Any) -> None:
    """Cache the data, train 3 steps from the images and 3 from the cache (on a lean copy of the folder): the same
    losses exactly and the same weights (max diff printed, 0 asserted)."""
    lora = bool(settings.get("use_lora"))
    assert main(["cache", "--config", str(write_train_yaml(config_for(folder, data, tmp_path, **settings),
                                                           tmp_path / "cache.yaml"))]) == 0  # fmt: skip
    decoded = train(config_for(folder, data, tmp_path / "decoded", **settings, cache_dir=str(tmp_path / "cache")))
    lean = lean_copy(folder, tmp_path / "lean", keep_vae)
    cached = train(config_for(lean, data, tmp_path / "cached", **settings, cache_dir=str(tmp_path / "cache"),
                              use_cached_latents=True))  # fmt: skip
    gap = state_dict_max_diff(load_file(str(decoded.output_dir / WEIGHTS[lora])),
                              load_file(str(cached.output_dir / WEIGHTS[lora])))  # fmt: skip
    print(f"{label}: from the cache vs from the images, 3 steps: losses {cached.losses} vs {decoded.losses}; "
          f"weights max diff {gap:.1e}")  # fmt: skip
    assert cached.losses == decoded.losses and gap == 0.0


def test_the_comparisons_drop_texts():
    """The seed's text-dropout draws (seed 42 of TrainConfig, epochs 0 and 1) drop some prompts and keep others."""
    draws = [drops_text(TrainConfig().seed, epoch, index, DROP) for epoch in (0, 1) for index in range(4)]
    assert any(draws) and not all(draws), draws


# (family, LoRA): every family's full fine-tune, LoRA on two of them
T2I_RUNS = [
    ("flux", False),
    ("flux2", False),
    ("zimage", False),
    ("qwenimage", False),
    ("zimage", True),
    ("flux", True),
]


@pytest.mark.parametrize(("family", "lora"), T2I_RUNS)
def test_a_run_from_the_cache_is_the_run_from_the_images(folders, image_data, tmp_path, family, lora):
    settings = dict(use_lora=True, rank=4, network_alpha=4.0, learning_rate=1e-2) if lora else {}
    compare_runs(folders(family), image_data, tmp_path, f"{family} {'LoRA' if lora else 'full'}", False, **settings)


@pytest.mark.parametrize("family", sorted(CONTROL_BUILDS))
def test_a_control_run_from_the_cache_is_the_run_from_the_images(folders, image_data, tmp_path, family):
    """The control latents are cached; the masked image's latents (a mask drawn per step) come from the cached
    pixels through the VAE, which such a run loads (and no text encoder)."""
    compare_runs(folders(f"{family}-control"), image_data, tmp_path, f"{family} control", True, train_mode="control")
    record = load_file(str(tmp_path / "cache" / "00000000.safetensors"))
    assert {"control_latents", "pixels"} <= set(record) and record["pixels"].dtype == torch.uint8


@pytest.mark.parametrize("family", sorted(FOLDER_BUILDERS))
def test_cached_text_inputs_are_the_encoders_and_dropped_ones_the_empty_prompts(folders, image_data, tmp_path, family):
    """A cached batch's transformer inputs (kept and dropped prompts of different lengths) equal those the text
    encoders make from the prompts, "" for the dropped one; records hold no padding beyond a prompt's tokens."""
    config = config_for(folders(family), image_data, tmp_path)
    build_cache(config)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    dataset = CachedLatentDataset(config.resolved_cache_dir, config)
    batch = collate_cached([dataset[0], dataset[2]])  # 32x64 and 48x48 buckets hold 0, 1 and 2, 3: same shape
    batch["text_dropped"] = torch.tensor([False, True])
    texts = [dataset.entries[0]["text"], ""]
    assert isinstance(spec, FlowImageSpec)
    expected = spec.encoded_text(models, texts, torch.device("cpu"))
    cached = spec.build_inputs(models, batch, "normal", sample_generators(0, 0, 0, range(2)), "cpu").conditions
    gaps = {name: max_diff(cached[name], value) for name, value in expected.items() if value is not None}
    print(f"{family}: cached text inputs vs the encoders' (a prompt and the empty one), max diff {gaps}")
    assert gaps and all(gap == 0.0 for gap in gaps.values())
    assert all(cached[name] is None for name, value in expected.items() if value is None)
    record = load_file(str(Path(config.resolved_cache_dir) / "00000000.safetensors"))
    assert record["context"].shape[0] == int(record["context_length"])


def test_a_failed_rebuild_keeps_the_previous_cache(folders, image_data, tmp_path, monkeypatch):
    config = config_for(folders("qwenimage"), image_data, tmp_path)
    cache = build_cache(config)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert len(json.loads((cache / "index.json").read_text())["entries"]) == 4
    calls: list[int] = []
    encode = FlowImageSpec.encode_for_cache

    def fail_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(FlowImageSpec, "encode_for_cache", fail_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        build_cache(config)
    assert len(calls) == 2 and {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_cache_without_what_the_mode_needs_is_one_line(folders, image_data, tmp_path):
    config = config_for(folders("zimage-control"), image_data, tmp_path)  # built for text to image: no control
    build_cache(config)
    control = config_for(folders("zimage-control"), image_data, tmp_path, train_mode="control",
                         use_cached_latents=True, output_dir=str(tmp_path / "control"))  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"the latent cache has no 'control_latents' \(control images' latents\): "
        "rebuild it with `videox-fun cache` and the --train_mode of this run",
    ):
        train(control)
