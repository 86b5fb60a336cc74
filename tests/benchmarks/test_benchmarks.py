"""The benchmarks' own measuring code, run for real on small models (figures are not asserted)."""

from __future__ import annotations

import torch

from videox_fun.benchmarks.cache import IDENTICAL_PSNR_DB, generate_one, psnr_summary, whole_call_ceiling
from videox_fun.benchmarks.pipeline import MID_CONFIG, per_step_comparison
from videox_fun.benchmarks.vae import compare as compare_vae
from videox_fun.models.wan.vae import WanVAE, tiny_vae_config
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.registry import resolve_model

SMALL = {**MID_CONFIG, "num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 2}


def test_generate_one_splits_the_call_into_nested_times():
    pipe = WanPipeline.from_pretrained(resolve_model(None))
    frames, times = generate_one(pipe, "a red circle moving right", seed=0)
    assert frames.shape == (17, 64, 64, 3)
    assert 0 < times["denoising_s"] < times["sampling_s"] < times["wall_s"]
    assert not pipe.transformer._forward_pre_hooks  # the timing hook is removed
    assert whole_call_ceiling(times) == times["wall_s"] / (times["wall_s"] - times["denoising_s"]) > 1


def test_per_step_comparison_runs_every_contender_on_the_cpu():
    settings = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 5.0}
    result = per_step_comparison(repeats=2, device="cpu", transformer_config=SMALL, settings=settings)
    for name in ("ours_batched_cfg", "ours_sequential_cfg", "diffusers"):
        assert len(result["step_s"][name]) == 2 * (3 - 1)  # the first step of each run is left out
        assert result[f"s_per_step_{name}"] > 0
    assert result["ratio_ours_batched_cfg"] > 0 and result["peak_gpu_bytes"] == {}
    assert torch.get_default_dtype() == torch.float32  # the bf16 build does not leak


def test_vae_comparison_times_both_calls_on_the_same_weights():
    torch.manual_seed(0)
    entry = compare_vae(WanVAE.from_config(tiny_vae_config()).eval(), 5, 32, 32, repeats=1)
    for op in ("decode", "encode"):
        assert entry[f"{op}_ratio_wall_s_median"] > 0
        assert entry[f"{op}_max_abs_diff"] < 1e-5  # the same result by either route


def test_identical_videos_count_as_a_finite_psnr_in_the_mean_and_the_minimum():
    summary = psnr_summary([float("inf"), 40.0])
    assert summary == {"psnr_db_mean": (IDENTICAL_PSNR_DB + 40.0) / 2, "psnr_db_min": 40.0, "identical_videos": 1}
    assert psnr_summary([float("inf")])["psnr_db_min"] == IDENTICAL_PSNR_DB  # strict JSON: no Infinity


def test_cache_curve_has_every_threshold_and_counts_the_skipped_stacks():
    from videox_fun.benchmarks.cache import FIRST_BLOCK_THRESHOLDS, TEACACHE_THRESHOLDS, run

    result = run(prompts=1, skip_start=1, evaluate=False, steps=8)  # the curve's shape, not the model's default 20
    assert [p["threshold"] for p in result["curves"]["teacache"]] == list(TEACACHE_THRESHOLDS)
    assert [p["threshold"] for p in result["curves"]["first-block"]] == list(FIRST_BLOCK_THRESHOLDS)
    steps = result["steps"]
    for point in (*result["curves"]["teacache"], *result["curves"]["first-block"]):
        assert (
            point["block_evaluations"] + point["block_evaluations_skipped"] == steps
        )  # one pass per step (CFG 1.5: batched)
        assert point["psnr_db_mean"] <= IDENTICAL_PSNR_DB
    loosest = result["curves"]["teacache"][-1]
    assert loosest["block_evaluations_skipped"] > 0 and loosest["psnr_db_mean"] < IDENTICAL_PSNR_DB


def test_cogvideox_comparison_runs_both_transformers_on_the_same_weights_and_rope():
    from videox_fun.benchmarks.cogvideox import build_pair, compare, make_inputs
    from videox_fun.models.cogvideox.tiny import tiny_transformer_config

    config = tiny_transformer_config("inp")  # the 5b-style tiny config: rotary positions
    ours, theirs = build_pair(config, torch.float32)
    inputs = make_inputs(ours, (1, 3, config["in_channels"], 8, 8), torch.float32, "cpu")
    assert inputs["image_rotary_emb"][0].shape[0] == 3 * 4 * 4  # one row per video token
    entry = compare(ours, theirs, inputs, repeats=2)
    assert entry["max_abs_diff"] < 1e-5  # our attention processor is diffusers' math through our dispatch
    assert entry["ratio_wall_s_median"] > 0 and len(entry["runs"]["ours"]["wall_s"]) == 2
