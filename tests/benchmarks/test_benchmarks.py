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


def test_image_and_stream_comparisons_run_ours_and_diffusers_on_the_same_weights():
    """The CPU path of ``bench images`` and ``bench streams``: every family's tiny config, fp32, one timed round."""
    from videox_fun.benchmarks import images, streams

    for module, kinds in ((images, images.FAMILIES), (streams, streams.TINY_CONFIGS)):
        result = module.run(repeats=1, cpu_dtypes=(torch.float32,))
        assert result["failed"] == []
        assert set(result["results"]) == {f"cpu_{kind}_float32" for kind in kinds}
        for name, entry in result["results"].items():
            # fp32: our classes are diffusers' math with our attention dispatch (measured: 0 for the image families,
            # 1.1e-6 VACE and 1.6e-6 Animate, whose outputs reach 2.4)
            assert entry["max_abs_diff"] <= 1e-5, name
            assert entry["single_call"]["ours"]["output_abs_max"] > 0.1, name  # a difference of a real output
            assert len(entry["runs"]["ours"]["wall_s"]) == 1 and entry["ratio_wall_s_median"] > 0
            assert entry["parameters"] > 0 and entry["dtype"] == "float32"
    assert torch.get_default_dtype() == torch.float32  # the bf16 / device builds do not leak


def test_gpu_cases_are_the_released_widths_and_load_strictly_on_the_meta_device():
    """Without a GPU: the GPU cases' configs at full depth have the released parameter counts (model-facts), and
    their few-block pairs build with diffusers' strict loading (keys and shapes) on the meta device."""
    from videox_fun.benchmarks import images, streams
    from videox_fun.benchmarks.pairs import parameter_count
    from videox_fun.models.wan.vace import WanVACETransformer3DModel

    released = {"flux": 11_901_408_320, "flux2": 32_223_281_152, "qwenimage": 20_430_401_088, "zimage": 6_154_908_736}
    for key, family in images.FAMILIES.items():
        with torch.device("meta"):
            assert parameter_count(family.ours.from_model_config(family.released)) == released[key], key
        pair = images.build_case(family, family.gpu_config(), torch.bfloat16, "meta", images.GPU_IMAGE, 16)
        assert parameter_count(pair.theirs) == parameter_count(pair.ours) < released[key]
        assert pair.facts["image_tokens"] == 4096  # 1024 x 1024
    with torch.device("meta"):  # the VACE case: Wan2.1-VACE-14B's widths (its count: 17,337,592,896)
        full_vace = WanVACETransformer3DModel.from_config(streams.PRESETS["Wan2.1-VACE-14B"])
    assert parameter_count(full_vace) == 17_337_592_896
    for kind, config in streams.GPU_CONFIGS.items():
        pair = streams.build_case(kind, config, streams.GPU_LATENTS, torch.bfloat16, "meta")
        assert parameter_count(pair.theirs) == parameter_count(pair.ours)
        assert pair.facts["video_tokens"] == 32_760
    assert pair.facts["face_crops"] == 77  # Animate: a 77-frame segment after the reference frame
