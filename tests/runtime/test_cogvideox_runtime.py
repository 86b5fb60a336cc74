"""Runtime features on a second family, CogVideoX, from its declared extension points alone.

diffusers' CogVideoX transformer runs its block loop inside its own ``forward`` (no ``run_blocks``
seam) and its blocks carry two streams (video and text tokens): offload, fp8, compile and the
step caches must attach all the same.
"""

from __future__ import annotations

import pytest
import torch
from cogvideox_runtime_helpers import STEPS, inputs, sample, tiny_cogvideox
from diffusers import CogVideoXTransformer3DModel
from torch import nn

from videox_fun.models.cogvideox.transformer import CogVideoXTransformer
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.runtime import offload
from videox_fun.runtime.cache import (
    CALIBRATION_FILE,
    CacheRecorder,
    FirstBlockCache,
    TeaCache,
    cache_branch,
    coefficients_for,
    fit_coefficients,
    save_calibration,
)
from videox_fun.runtime.compile import compile_blocks
from videox_fun.runtime.fp8 import Float8Linear, block_linears, quantize_to_fp8
from videox_fun.runtime.offload import (
    MEMORY_MODES,
    OFFLOAD_DEVICE,
    MoveLog,
    SequentialOffload,
    apply_memory_mode,
    swap_blocks,
)
from videox_fun.runtime.points import ExtensionPointError

# The CPU under another name (as in test_offload.py): moves onto the device and back to
# OFFLOAD_DEVICE (plain "cpu") can be told apart on a machine without an accelerator.
DEVICE = torch.device("cpu", 0)
LINEAR = [0.0, 0.0, 0.0, 1.0, 0.0]  # poly(x) = x: accumulate the raw indicator change
CACHES = {
    "teacache": lambda model, threshold: TeaCache(model, LINEAR, threshold),
    "first-block": lambda model, threshold: FirstBlockCache(model, threshold),
}


def one_call(model: nn.Module) -> torch.Tensor:
    """One forward of the transformer at a mid timestep."""
    noise, cond, _ = inputs()
    with torch.no_grad():
        return model(noise, cond, torch.tensor([500.0]), return_dict=False)[0]


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return one_call(tiny_cogvideox())


@pytest.fixture(scope="module")
def uncached() -> dict[bool, torch.Tensor]:
    """The guided sampling loop without a cache: batched and sequential CFG."""
    model = tiny_cogvideox()
    return {batched: sample(model, ClassifierFreeGuidance(5.0, batched=batched)) for batched in (True, False)}


# ----------------------------------------------------------------------------------------
# Offload
# ----------------------------------------------------------------------------------------
def test_block_swap_prefetches_and_matches_full_load(reference, monkeypatch):
    model = tiny_cogvideox()
    moved: dict[nn.Parameter, torch.device] = {}
    own_move = offload._move_own_tensors

    def tracked(module, device, non_blocking=False):
        moved.update(dict.fromkeys(module.parameters(recurse=False), torch.device(device)))
        return own_move(module, device, non_blocking)

    monkeypatch.setattr(offload, "_move_own_tensors", tracked)
    log = MoveLog()
    swap = swap_blocks(model, DEVICE, resident=1, log=log)
    out = one_call(model)
    assert torch.equal(out, reference)
    # block 0 is resident; block 1 is prefetched while block 0 runs, then unloaded after it ran
    assert log.order == ["prefetch 1", "unload 1"]
    # every weight outside the declared blocks went to the device, none inside them did by this path
    blocks = model.transformer_blocks
    inside = {p for block in blocks for p in block.parameters()}
    outside = [p for p in model.parameters() if p not in inside]
    assert outside and all(moved.get(p) == DEVICE for p in outside)
    assert not inside & set(moved)
    swap.remove()
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in blocks)


def test_sequential_offload_matches_full_load(reference):
    model = tiny_cogvideox()
    log = MoveLog()
    hooks = SequentialOffload(model, DEVICE, log)
    assert torch.equal(one_call(model), reference)
    assert log.onloads == log.offloads > 0
    assert all(p.device == OFFLOAD_DEVICE for p in model.parameters())
    hooks.remove()


class FakePipeline:
    """The pipeline protocol ``apply_memory_mode`` needs: transformers and named components."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.device = torch.device("cpu")

    @property
    def transformers(self) -> tuple[nn.Module, ...]:
        return (self.transformer,)

    def components(self) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
        return {"transformer": (self.transformer, ("forward",))}


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_every_memory_mode_runs_a_cogvideox_pipeline(reference, mode):
    pipe = FakePipeline(tiny_cogvideox())
    log = apply_memory_mode(pipe, mode, DEVICE, resident_blocks=1)
    out = one_call(pipe.transformer)
    if "qfloat8" in mode:
        assert torch.isfinite(out).all() and (out - reference).abs().max() < 0.05  # fp8 rounding
    else:
        assert torch.equal(out, reference)
    if mode == "model_group_offload":
        assert log.order == ["prefetch 1", "unload 1"]


# ----------------------------------------------------------------------------------------
# fp8
# ----------------------------------------------------------------------------------------
def test_fp8_stores_only_the_linears_inside_the_declared_blocks(reference):
    model = tiny_cogvideox()
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    inside = {name for name in linears if name.startswith("transformer_blocks.")}
    assert inside and linears - inside  # text projection, time embedding, norm_out, proj_out
    assert set(block_linears(model)) == inside
    quantize_to_fp8(model)
    stored = {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert stored == inside
    assert all(isinstance(model.get_submodule(name), nn.Linear) for name in linears - inside)
    assert model.transformer_blocks[0].norm1.norm.weight.dtype == torch.float32  # norms stay high precision
    out = one_call(model)
    assert torch.isfinite(out).all() and 0 < (out - reference).abs().max() < 0.05


class SkipsModulation(CogVideoXTransformer):
    """A family that keeps its blocks' modulation linears (``norm1.linear``, ``norm2.linear``) out of fp8."""

    _fp8_skip_modules = (r"\.norm\d\.linear$",)


def test_fp8_leaves_the_declared_skips_in_high_precision():
    model = tiny_cogvideox(cls=SkipsModulation)
    quantize_to_fp8(model)
    block = model.transformer_blocks[1]
    assert isinstance(block.norm1.linear, nn.Linear) and isinstance(block.norm2.linear, nn.Linear)
    assert isinstance(block.attn1.to_q, Float8Linear) and isinstance(block.ff.net[2], Float8Linear)


# ----------------------------------------------------------------------------------------
# compile
# ----------------------------------------------------------------------------------------
class CountingBackend:
    """A named torch.compile backend that counts the graphs it compiles and how often they run."""

    def __init__(self, name: str):
        self.backend = torch._dynamo.lookup_backend(name)
        self.compiled = 0
        self.runs = 0

    def __call__(self, graph, example_inputs):
        self.compiled += 1
        compiled = self.backend(graph, example_inputs)

        def run(*args):
            self.runs += 1
            return compiled(*args)

        return run


@pytest.mark.slow
def test_compile_blocks_compiles_each_declared_block(reference):
    model = tiny_cogvideox()
    torch._dynamo.reset()  # no graphs cached by other tests
    backend = CountingBackend("aot_eager")
    assert compile_blocks(model, backend=backend) is model
    assert torch.allclose(one_call(model), reference, atol=1e-5)
    # Each CogVideoXBlock ran whole through a compiled graph. Two graphs, not one: block 0's video
    # tokens are a strided slice of the patch embedding's output, block 1's are contiguous.
    assert backend.runs == len(model.transformer_blocks) == 2 and backend.compiled <= 2
    compiled = backend.compiled
    one_call(model)  # same shapes: nothing compiled again
    assert backend.compiled == compiled and backend.runs == 4


# ----------------------------------------------------------------------------------------
# Step caches
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False], ids=["batched_cfg", "sequential_cfg"])
@pytest.mark.parametrize("kind", list(CACHES))
def test_threshold_zero_computes_every_step_and_equals_uncached(uncached, kind, batched):
    model = tiny_cogvideox()
    cache = CACHES[kind](model, 0.0)
    latents = sample(model, ClassifierFreeGuidance(5.0, batched=batched))
    passes = STEPS if batched else 2 * STEPS
    assert cache.stats.skipped == 0 and cache.stats.computed == passes
    assert torch.equal(latents, uncached[batched])
    # the two streams (video and text tokens) each keep a residual
    assert all(len(state.residual) == 2 for state in cache.states.values())


@pytest.mark.parametrize("kind", list(CACHES))
def test_large_threshold_skips_all_but_the_first_and_last_steps_and_stays_close(uncached, kind):
    model = tiny_cogvideox()
    cache = CACHES[kind](model, 10.0)
    latents = sample(model)
    assert cache.stats.decisions == [True] + [False] * (STEPS - 2) + [True]
    difference = (latents - uncached[True]).abs().max().item()
    assert 0 < difference < 0.1 * uncached[True].abs().max().item()
    cache.remove()
    assert not any("forward" in vars(block) for block in model.transformer_blocks)
    assert torch.equal(sample(model), uncached[True])  # removed: every step computed again


@pytest.mark.parametrize("kind", list(CACHES))
def test_cond_and_uncond_passes_keep_separate_state(kind):
    """Sequential passes are kept apart by their branch, and a skipped pass adds its own branch's residual:
    the result equals the batched pass's, whose one state holds each sample's own residual."""
    model = tiny_cogvideox()
    cache = CACHES[kind](model, 10.0)
    sequential = sample(model, ClassifierFreeGuidance(5.0, batched=False))
    assert set(cache.states) == {("branch", "cond"), ("branch", "uncond")}
    cond, uncond = (cache.states[("branch", b)].residual for b in ("cond", "uncond"))
    assert not any(torch.equal(a, b) for a, b in zip(cond, uncond, strict=True))
    assert cache.stats.computed == 2 * 2 and cache.stats.skipped == 2 * (STEPS - 2)
    batched = sample(model, ClassifierFreeGuidance(5.0, batched=True))
    assert torch.allclose(sequential, batched, atol=1e-5)


def test_without_a_branch_different_text_contexts_never_share_a_residual():
    model = tiny_cogvideox()
    cache = FirstBlockCache(model, 10.0)
    cache.begin(STEPS)
    noise, cond, uncond = inputs()
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            for context in (cond, uncond):  # two passes per step, no cache_branch named
                model(noise, context, torch.tensor([t]), return_dict=False)
        with cache_branch("cond"):
            model(noise, cond, torch.tensor([600.0]), return_dict=False)
    assert len(cache.states) == 3  # two fingerprints, then the named branch
    assert [state.calls for state in cache.states.values()] == [3, 3, 1]


def test_calibration_records_steps_and_teacache_needs_coefficients(tmp_path):
    model = tiny_cogvideox()
    with pytest.raises(ValueError, match="calibrate-cache"):
        coefficients_for(model, tmp_path)  # nothing published for CogVideoX, no calibration file
    recorder = CacheRecorder(model)
    sample(model)
    assert len(recorder.samples) == STEPS - 1 and all(x > 0 and y > 0 for x, y in recorder.samples)
    recorder.remove()
    coefficients = fit_coefficients(recorder.samples)
    save_calibration(tmp_path / CALIBRATION_FILE, coefficients, "time_embedding", len(recorder.samples))
    assert coefficients_for(model, tmp_path) == coefficients


def test_caches_compose_with_block_swap(uncached):
    model = tiny_cogvideox()
    log = MoveLog()
    swap_blocks(model, DEVICE, resident=1, log=log)
    cache = FirstBlockCache(model, 0.0)
    assert torch.equal(sample(model), uncached[True])
    assert cache.stats.computed == STEPS and log.prefetches == STEPS


# ----------------------------------------------------------------------------------------
# Clear errors where a model declares nothing
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attach", "message"),
    [
        (lambda m: FirstBlockCache(m, 0.1), "declares no _block_lists: runtime feature FirstBlockCache"),
        (lambda m: TeaCache(m, LINEAR, 0.1), "declares no _cache_indicators: runtime feature TeaCache"),
        (quantize_to_fp8, "declares no _block_lists: runtime feature fp8 storage"),
        (compile_blocks, "declares no _repeated_blocks: runtime feature compile"),
        (lambda m: swap_blocks(m, DEVICE, 1), "declares no _block_lists: runtime feature block swap"),
    ],
    ids=["first-block", "teacache", "fp8", "compile", "block-swap"],
)
def test_a_model_that_declares_nothing_is_refused_by_name(attach, message):
    torch.manual_seed(0)
    bare = CogVideoXTransformer3DModel.from_config(tiny_cogvideox().config)  # diffusers' class: no declarations
    with pytest.raises(ExtensionPointError, match=message) as info:
        attach(bare)
    assert "CogVideoXTransformer3DModel" in str(info.value)
    assert not any("forward" in vars(block) for block in bare.transformer_blocks)
    assert not bare.time_embedding._forward_hooks


def test_teacache_indicator_must_be_declared():
    model = tiny_cogvideox()
    with pytest.raises(ExtensionPointError, match=r"no cache indicator 'time_projection'.*time_embedding"):
        TeaCache(model, LINEAR, 0.1, indicator="time_projection")
    assert not model.time_embedding._forward_hooks


# ----------------------------------------------------------------------------------------
# Through the CogVideoX pipeline (its guidance, its generation hooks)
# ----------------------------------------------------------------------------------------
PIPELINE_SETTINGS = {
    "height": 32,
    "width": 32,
    "num_frames": 5,
    "num_inference_steps": 5,
    "guidance_scale": 6.0,
    "seed": 0,
    "progress": False,
}


@pytest.fixture(scope="module")
def cogvideox_pipe(tmp_path_factory):
    from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder
    from videox_fun.pipelines.cogvideox import CogVideoXPipeline

    folder = build_tiny_cogvideox_folder(tmp_path_factory.mktemp("cog_runtime") / "inp", "inp", seed=1)
    pipe = CogVideoXPipeline.from_pretrained(folder)
    return pipe, pipe("a red circle", **PIPELINE_SETTINGS).latents


@pytest.mark.parametrize("kind", list(CACHES))
def test_caches_attach_to_the_cogvideox_pipeline(cogvideox_pipe, kind):
    pipe, uncached_latents = cogvideox_pipe
    steps = PIPELINE_SETTINGS["num_inference_steps"]
    exact = CACHES[kind](pipe.transformer, 0.0)
    assert torch.equal(pipe("a red circle", **PIPELINE_SETTINGS).latents, uncached_latents)
    assert exact.stats.decisions == [True] * steps
    exact.remove()
    skipping = CACHES[kind](pipe.transformer, 10.0)
    latents = pipe("a red circle", **PIPELINE_SETTINGS).latents
    skipping.remove()
    assert skipping.stats.decisions == [True] + [False] * (steps - 2) + [True]  # begin() came from the pipeline
    assert torch.isfinite(latents).all() and not torch.equal(latents, uncached_latents)


# -- through the programmatic entry, on the whole tiny CogVideoX-Fun InP pipeline ----------------
ENTRY_REQUEST = {"prompt": "a red circle moving right", "height": 32, "width": 32, "num_frames": 9, "seed": 3}


@pytest.fixture(scope="module")
def cogvideox_folder(tmp_path_factory):
    from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder

    return build_tiny_cogvideox_folder(tmp_path_factory.mktemp("cog-entry") / "inp", "inp")


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "model_group_offload"])
def test_every_memory_mode_gives_the_full_load_latents(cogvideox_folder, mode):
    from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline

    request = GenerationRequest(**ENTRY_REQUEST, steps=3)
    full = load_pipeline(cogvideox_folder, RuntimeOptions(device="cpu")).generate(request, progress=False)
    loaded = load_pipeline(cogvideox_folder, RuntimeOptions(device="cpu", gpu_memory_mode=mode, resident_blocks=1))
    assert torch.equal(loaded.generate(request, progress=False).latents, full.latents)


@pytest.mark.slow
def test_teacache_after_calibration_skips_steps_and_keeps_30_db(cogvideox_folder, tmp_path):
    """calibrate-cache fits the folder's own coefficients; TeaCache then skips with the frames >= 30 dB."""
    import shutil

    from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
    from videox_fun.metrics import psnr
    from videox_fun.runtime.calibrate import calibrate_cache

    folder = shutil.copytree(cogvideox_folder, tmp_path / "inp")
    calibrate_cache(folder, steps=20, device="cpu", height=32, width=32, num_frames=9)
    request = GenerationRequest(**ENTRY_REQUEST, steps=20)
    uncached = load_pipeline(folder, RuntimeOptions(device="cpu")).generate(request, progress=False)
    loaded = load_pipeline(folder, RuntimeOptions(device="cpu", cache="teacache", cache_threshold=0.3))
    cached = loaded.generate(request, progress=False)
    stats = loaded.pipe.transformer.generation_hooks[0].stats
    quality = psnr(cached.frames.float(), uncached.frames.float())
    assert stats.skipped > 0, "the fitted cache skips steps at threshold 0.3"
    assert quality >= 30.0, f"{stats.skipped} of {stats.skipped + stats.computed} skipped: {quality:.1f} dB"
