"""Step caches: exact when they never skip, skip when allowed, separate cond/uncond state, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videox_fun.models.wan.teacache import preset_of, published_coefficients
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.variants import PRESETS
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime.cache import (
    CALIBRATION_FILE,
    CacheRecorder,
    FirstBlockCache,
    TeaCache,
    coefficients_for,
    fit_coefficients,
    save_calibration,
)

STEPS = 8
SETTINGS = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": STEPS, "progress": False, "seed": 3}
LINEAR = [0.0, 0.0, 0.0, 1.0, 0.0]  # poly(x) = x: accumulate the raw indicator change


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("cache") / "inp", "inp")


@pytest.fixture(scope="module")
def uncached(folder):
    return WanPipeline.from_pretrained(folder)("a red circle moving right", **SETTINGS).latents


@pytest.mark.parametrize("make", [lambda m: TeaCache(m, LINEAR, 0.0), lambda m: FirstBlockCache(m, 0.0)])
def test_threshold_zero_computes_every_step_and_matches(folder, uncached, make):
    pipe = WanPipeline.from_pretrained(folder)
    cache = make(pipe.transformer)
    latents = pipe("a red circle moving right", **SETTINGS).latents
    assert cache.stats.skipped == 0 and cache.stats.computed == STEPS
    assert torch.allclose(latents, uncached, atol=1e-6)


@pytest.mark.parametrize("make", [lambda m: TeaCache(m, LINEAR, 10.0), lambda m: FirstBlockCache(m, 10.0)])
def test_large_threshold_skips_all_but_the_first_and_last_steps(folder, uncached, make):
    pipe = WanPipeline.from_pretrained(folder)
    cache = make(pipe.transformer)
    latents = pipe("a red circle moving right", **SETTINGS).latents
    assert cache.stats.decisions == [True] + [False] * (STEPS - 2) + [True]
    assert torch.isfinite(latents).all() and not torch.equal(latents, uncached)
    cache.remove()
    assert torch.allclose(pipe("a red circle moving right", **SETTINGS).latents, uncached, atol=1e-6)


def test_sequential_cfg_keeps_separate_state_for_cond_and_uncond(folder):
    pipe = WanPipeline.from_pretrained(folder)
    cache = TeaCache(pipe.transformer, LINEAR, 10.0)
    pipe("a red circle moving right", guidance=ClassifierFreeGuidance(6.0, batched=False), **SETTINGS)
    assert len(cache.states) == 2
    assert cache.stats.computed == 2 * 2 and cache.stats.skipped == 2 * (STEPS - 2)


def test_calibration_fits_and_is_found_beside_the_model(folder, tmp_path):
    pipe = WanPipeline.from_pretrained(folder)
    recorder = CacheRecorder(pipe.transformer)
    pipe("a red circle moving right", **SETTINGS)
    assert len(recorder.samples) == STEPS - 1 and all(x > 0 and y > 0 for x, y in recorder.samples)
    coefficients = fit_coefficients(recorder.samples)
    assert len(coefficients) == 5
    save_calibration(tmp_path / CALIBRATION_FILE, coefficients, "time_embedding", len(recorder.samples))
    assert coefficients_for(pipe.transformer, tmp_path) == coefficients
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text())["samples"] == STEPS - 1
    with pytest.raises(ValueError, match="calibrate-cache"):
        coefficients_for(pipe.transformer, None)


def test_published_coefficients_are_chosen_by_architecture():
    assert preset_of(PRESETS["Wan2.1-T2V-14B"]) == "Wan2.1-T2V-14B"
    assert published_coefficients(PRESETS["Wan2.1-T2V-1.3B"])[0] == pytest.approx(2.39676752e03)
    assert published_coefficients(PRESETS["Wan2.1-T2V-1.3B"], "time_projection")[0] == pytest.approx(-5.21862437e04)
    # VACE models: VideoX-Fun's sets by architecture (time_projection only; none published for time_embedding).
    assert published_coefficients(PRESETS["Wan2.1-VACE-1.3B"], "time_projection")[0] == pytest.approx(-5.21862437e04)
    assert published_coefficients(PRESETS["Wan2.1-VACE-14B"], "time_projection")[0] == pytest.approx(8.10705460e03)
    assert published_coefficients(PRESETS["Wan2.1-VACE-1.3B"]) is None


def test_wan22_experts_get_their_own_published_set_not_wan21s(tmp_path):
    from videox_fun.models.wan.transformer import WanTransformer3DModel

    with torch.device("meta"):
        expert = WanTransformer3DModel.from_config(PRESETS["Wan2.2-T2V-A14B"])
    assert preset_of(expert.config) == "Wan2.1-T2V-14B"  # the same architecture: the config cannot tell them apart
    wan22 = coefficients_for(expert, None, "time_projection", two_experts=True)
    assert wan22[0] == pytest.approx(8.10705460e03) and wan22 != coefficients_for(expert, None, "time_projection")
    with pytest.raises(ValueError, match="time_projection"):
        coefficients_for(expert, None, "time_embedding", two_experts=True)


@pytest.fixture
def meta_model():
    from videox_fun.models.wan.transformer import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel.from_config(PRESETS["Wan2.1-T2V-1.3B"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{trunc\n", r"cache_calibration\.json:1:2: cache calibration is not valid JSON"),
        ('{"coefficients": [1, 2]}', r"cache_calibration\.json: a cache calibration needs an 'indicator'"),
        ('{"indicator": "time_embedding"}', r"cache_calibration\.json: .*non-empty list of 'coefficients'"),
        ('{"indicator": "time_embedding", "coefficients": ["x"]}', r"list of 'coefficients', got \['x'\]"),
        ("[1, 2]", r"cache_calibration\.json: a cache calibration is a mapping"),
    ],
    ids=["bad_json", "no_indicator", "no_coefficients", "not_numbers", "not_a_mapping"],
)
def test_broken_calibration_file_is_named(meta_model, tmp_path, content, message):
    (tmp_path / CALIBRATION_FILE).write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        coefficients_for(meta_model, tmp_path)
    assert "\n" not in str(info.value)


def test_save_calibration_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CALIBRATION_FILE
    save_calibration(path, [1.0, 2.0], "time_embedding", 7)
    before = path.read_text()
    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # half of it lands, then the write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_calibration(path, [3.0, 4.0], "time_embedding", 9)
    with pytest.raises(OSError, match="No space"):
        save_calibration(tmp_path / "new.json", [3.0, 4.0], "time_embedding", 9)
    monkeypatch.undo()
    assert path.read_text() == before and json.loads(before)["samples"] == 7  # the old file, whole
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [CALIBRATION_FILE]  # no partial file
    with pytest.raises(ValueError, match="is a folder"):
        save_calibration(tmp_path, [1.0], "time_embedding", 1)
    save_calibration(tmp_path / "new" / "sub" / "cal.json", [1.0], "time_embedding", 1)  # folders are made
    assert json.loads((tmp_path / "new" / "sub" / "cal.json").read_text())["coefficients"] == [1.0]
