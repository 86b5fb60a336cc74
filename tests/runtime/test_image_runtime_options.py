"""The runtime options on every image family, through the runtime's extension points (no family code in it).

FLUX.1, FLUX.2, Qwen-Image (and Edit), Z-Image (and Turbo) and the Fun control variants of FLUX.2, Qwen-Image and
Z-Image, as their built-in tiny random models (the real architectures), fp32 on CPU, 4 steps at 32x32, seeded:

* the offload modes give full load's latents exactly (max abs diff 0: on a CPU the moves are copies between the
  same memory), and move what they claim: the CPU under another name (``cpu:0``) is the device, so every module call
  is checked to find its weights sent there (and a Fun control stream's linked pad tokens); model_cpu_offload moves
  the transformer and its control stream in once, as one unit;
* the qfloat8 modes store the declared block linears in fp8 (counted per model, Fun control streams included as
  VideoX-Fun's control transformer holds them), keep embedders, modulation, norms and Z-Image's pad tokens in fp32,
  and stay close (max relative diff at most 2 %; measured 0.1-1.2 %);
* regional compile equals eager within 1e-5 (fp32; aot_eager 0, inductor on FLUX.1 2.4e-7), the blocks of a class
  sharing graphs;
* the first-block cache and TeaCache (coefficients fitted by ``calibrate-cache`` on the tiny model; VideoX-Fun's
  published Qwen-Image set on the released architecture) skip 1-2 of 4 steps and stay close (max relative diff at
  most 10 %; measured 0.5-4.4 %);
* sequential CFG equals batched within 1e-5; every attention layer goes through the one dispatch, and a backend
  that cannot run here is refused in one line before loading; ``--riflex-k`` is refused in one line.

``pytest tests/runtime/test_image_runtime_options.py -s`` prints the measured numbers.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from videox_fun.api import GenerationRequest, LoadedPipeline, RuntimeOptions, load_pipeline, resolve_folder
from videox_fun.cli import main
from videox_fun.families import recognise
from videox_fun.models import attention as dispatch
from videox_fun.models.flux.transformer import FluxTransformer
from videox_fun.models.qwenimage.transformer import QwenImageTransformer
from videox_fun.registry import CACHE_ENV
from videox_fun.runtime import compile as compile_module
from videox_fun.runtime import offload, points
from videox_fun.runtime.cache import StepCache, coefficients_for
from videox_fun.runtime.compile import compile_blocks
from videox_fun.runtime.fp8 import FP8, Float8Linear
from videox_fun.runtime.offload import OFFLOAD_DEVICE, MoveLog, apply_memory_mode
from videox_fun.runtime.options import teacache_indicator

STEPS = 4
# A control picture (vertical lines) and an edit picture (a red square), 32x32 RGB.
CONTROL = np.zeros((32, 32, 3), np.uint8)
CONTROL[:, ::8] = 255
PICTURE = np.zeros((32, 32, 3), np.uint8)
PICTURE[8:24, 8:24] = (220, 40, 40)
CONTROL_INPUTS = {"mode": "control", "control_video": CONTROL}
MODELS: dict[str, dict] = {
    "Flux-Tiny-Random": {},
    "Flux2-Tiny-Random": {},
    "Flux2-Fun-Control-Tiny-Random": CONTROL_INPUTS,
    "Qwen-Image-Tiny-Random": {},
    "Qwen-Image-Edit-Tiny-Random": {"image": PICTURE},
    "Qwen-Image-Fun-Control-Tiny-Random": CONTROL_INPUTS,
    "Z-Image-Tiny-Random": {},
    "Z-Image-Turbo-Tiny-Random": {"guidance_scale": 0.0},  # Turbo's own: one pass a step, no CFG
    "Z-Image-Turbo-Fun-Control-Tiny-Random": CONTROL_INPUTS,
}
# One model per transformer class, for what depends on the class alone (compile, RIFLEx).
CLASSES = ("Flux-Tiny-Random", "Flux2-Tiny-Random", "Qwen-Image-Tiny-Random", "Z-Image-Tiny-Random")
# fp8-stored linears per model (transformer, control stream), counted from the tiny architectures (2 blocks of each
# list; Fun control: 2 copies): FLUX.1 double block 12 (attention 8, two MLPs 2 each; its two norm*.linear stay),
# single block 5 (q, k, v, proj_mlp, proj_out; norm.linear stays); FLUX.2 double 12, single 2 (fused qkv+MLP in,
# out), control copies 12 each + before_proj + 2 after_proj; Qwen-Image block 12 (img_mod / txt_mod stay), control
# alike 27; Z-Image block 7 (q, k, v, out, w1-w3; adaLN_modulation stays) in the 2 main blocks and the 2 + 2 refiner
# blocks, control copies 8 (+ after_proj) in 2 control blocks and 2 control refiner blocks + before_proj on each
# stage's first.
FP8_LINEARS = {"Flux-Tiny-Random": (34, 0), "Flux2-Tiny-Random": (28, 0), "Flux2-Fun-Control-Tiny-Random": (28, 27),
               "Qwen-Image-Tiny-Random": (24, 0), "Qwen-Image-Edit-Tiny-Random": (24, 0),
               "Qwen-Image-Fun-Control-Tiny-Random": (24, 27), "Z-Image-Tiny-Random": (42, 0),
               "Z-Image-Turbo-Tiny-Random": (42, 0), "Z-Image-Turbo-Fun-Control-Tiny-Random": (42, 34)}  # fmt: skip
# The CPU under another name: the memory modes compute on it, so a weight sent to the device and one sent back to
# OFFLOAD_DEVICE (plain "cpu") can be told apart without an accelerator.
DEVICE = torch.device("cpu", 0)


def request(name: str) -> GenerationRequest:
    """The seeded request of a model: 4 steps at 32x32, guidance 2 where the model takes CFG."""
    return GenerationRequest(prompt="a red circle", height=32, width=32, steps=STEPS, seed=7,
                             **{"guidance_scale": 2.0, **MODELS[name]})  # fmt: skip


@dataclass
class Baselines:
    """Each model loaded once with the default options (full load, fp32 on CPU) and its latents; the per-job
    options (step caches, sequential CFG) run on these loaded pipelines."""

    loaded: dict[str, LoadedPipeline] = field(default_factory=dict)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    device_latents: dict[str, torch.Tensor] = field(default_factory=dict)

    def pipeline(self, name: str) -> LoadedPipeline:
        """The model, loaded at full load the first time."""
        if name not in self.loaded:
            self.loaded[name] = load_pipeline(name, RuntimeOptions(device="cpu"))
        return self.loaded[name]

    def on_device(self, name: str) -> torch.Tensor:
        """Full load's latents on DEVICE, checked to find every weight there (cpu:0 rounds a few fp32 ulps unlike
        plain cpu: 3.6e-7 on FLUX.1, so the offload modes on DEVICE compare with these)."""
        if name not in self.device_latents:
            _, _, latents, residency = on_device(name, "model_full_load")
            assert not residency.misplaced and torch.allclose(latents, self.reference(name), atol=1e-5)
            self.device_latents[name] = latents
        return self.device_latents[name]

    def reference(self, name: str) -> torch.Tensor:
        """Full load's latents of :func:`request`."""
        if name not in self.latents:
            self.latents[name] = self.pipeline(name).generate(request(name), progress=False).latents
        return self.latents[name]


@pytest.fixture(scope="module")
def baselines(builtin_cache_dir: Path) -> Iterator[Baselines]:
    """The module's baselines, with the built-in models resolved into the module's cache folder throughout."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(builtin_cache_dir))
        yield Baselines()


def difference(latents: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs diff, that over max |expected|)."""
    diff = (latents - expected).abs().max().item()
    return diff, diff / expected.abs().max().item()


def generate(name: str, **options: object) -> tuple[LoadedPipeline, torch.Tensor]:
    """A fresh load of ``name`` with ``options`` and its latents of :func:`request`."""
    loaded = load_pipeline(name, RuntimeOptions(device="cpu", **options))  # type: ignore[arg-type]
    return loaded, loaded.generate(request(name), progress=False).latents


# -- memory modes -------------------------------------------------------------------------------------------------
class Residency:
    """While active: where every parameter was last sent (nn.Module.to and the offload's own moves), and each module
    call that found a weight it reads not on DEVICE (on a GPU: a device mismatch). A call reads its own parameters
    and buffers and those linked as plain attributes (Z-Image's control model reads the transformer's pad tokens).
    Checked after the call, before the module's own hooks send its weights back (global hooks run first)."""

    def __init__(self) -> None:
        self.last: dict[int, torch.device] = {}
        self.misplaced: Counter = Counter()
        self.calls = 0

    def _sent(self, tensors: Iterator[torch.Tensor], device: object) -> None:
        for tensor in tensors:
            self.last[id(tensor)] = torch.device(device)  # type: ignore[arg-type]

    def _check(self, module: nn.Module, args: tuple, output: object) -> None:
        self.calls += 1
        linked = [value for value in vars(module).values() if isinstance(value, nn.Parameter)]
        for tensor in (*module.parameters(recurse=False), *linked):
            if self.last.get(id(tensor), OFFLOAD_DEVICE) != DEVICE:
                self.misplaced[type(module).__name__] += 1

    def __enter__(self) -> Residency:
        self._to, self._move = nn.Module.to, offload._move_own_tensors
        to, move = self._to, self._move

        def tracked_to(module: nn.Module, *args: object, **kwargs: object) -> nn.Module:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None:
                self._sent(module.parameters(), device)
            return to(module, *args, **kwargs)

        def tracked_move(module: nn.Module, device: torch.device, non_blocking: bool = False) -> None:
            self._sent(module.parameters(recurse=False), device)
            move(module, device, non_blocking)

        nn.Module.to, offload._move_own_tensors = tracked_to, tracked_move
        self._hook = nn.modules.module.register_module_forward_hook(self._check)
        return self

    def __exit__(self, *exc: object) -> None:
        nn.Module.to, offload._move_own_tensors = self._to, self._move
        self._hook.remove()


def on_device(name: str, mode: str) -> tuple[LoadedPipeline, MoveLog, torch.Tensor, Residency]:
    """``name`` loaded, set up for ``mode`` on DEVICE (as load_pipeline does on the options' device), run while
    :class:`Residency` watches: (the pipeline, the mode's move log, the latents, the residency record)."""
    loaded = load_pipeline(name, RuntimeOptions(device="cpu"))
    with Residency() as residency:
        log = apply_memory_mode(loaded.pipe, mode, DEVICE, resident_blocks=1)
        latents = loaded.generate(request(name), progress=False).latents
    return loaded, log, latents, residency


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "model_group_offload"])
@pytest.mark.parametrize("name", MODELS)
def test_offload_modes_give_full_loads_latents_with_every_weight_on_the_device(baselines, name, mode):
    expected = baselines.on_device(name)
    loaded = load_pipeline(name, RuntimeOptions(device="cpu"))
    pipe, forwards = loaded.pipe, Counter()
    transformer = pipe.transformers[0]
    transformer.register_forward_pre_hook(lambda module, args: forwards.update(["transformer"]))
    with Residency() as residency:
        log = apply_memory_mode(pipe, mode, DEVICE, resident_blocks=1)  # what load_pipeline attaches
        latents = loaded.generate(request(name), progress=False).latents
    diff, _ = difference(latents, expected)
    print(f"{name} {mode}: max abs diff {diff:.3g}, {residency.calls} module calls checked, moves {log.onloads} in "
          f"{log.offloads} out {log.prefetches} prefetched")  # fmt: skip
    assert diff == 0.0
    assert residency.calls > 0 and not residency.misplaced, residency.misplaced
    if mode == "model_cpu_offload":
        # the transformer and its control stream come in once, as one unit (never sent away mid-denoising)
        assert sum(log.order.count(unit) for unit in ("transformer", "control")) == 1, log.order
        assert log.onloads == len(log.order) and log.prefetches == 0
    elif mode == "sequential_cpu_offload":
        assert log.onloads == log.offloads > 0 and log.order == []
    else:  # block swap, one resident block: each other block is loaded (prefetched) and unloaded every forward
        swapped = len(points.blocks(transformer)) - 1
        assert Counter(entry.split()[0] for entry in log.order if entry.split()[0] in ("prefetch", "unload")) == {
            "prefetch": swapped * forwards["transformer"], "unload": swapped * forwards["transformer"]}  # fmt: skip


APART = [("Flux2-Fun-Control-Tiny-Random", "model_cpu_offload"), ("Z-Image-Turbo-Fun-Control-Tiny-Random",
         "model_cpu_offload"), ("Z-Image-Turbo-Fun-Control-Tiny-Random", "sequential_cpu_offload")]  # fmt: skip


@pytest.mark.parametrize(("name", "mode"), APART)
def test_a_control_stream_apart_from_its_transformer_is_caught(baselines, name, mode, monkeypatch):
    """The residency check can fail: a control stream not declared to run beside its transformer moves on its own,
    sending the transformer away in the middle of its forward (FLUX.2) or running while the transformer's modules
    and pad tokens that it links rest on the CPU (Z-Image): the faults these modes had."""
    control_class = type(baselines.pipeline(name).pipe.control)
    monkeypatch.setattr(control_class, "_runs_beside_transformer", False)
    _, log, _, residency = on_device(name, mode)
    print(f"{name} {mode}, control not declared beside: misplaced {dict(residency.misplaced)}, order {log.order}")
    assert residency.misplaced


# -- fp8 storage ----------------------------------------------------------------------------------------------------
def fp8_models(loaded: LoadedPipeline) -> tuple[nn.Module, nn.Module | None]:
    """(the transformer, the Fun control stream or None)."""
    return loaded.pipe.transformers[0], getattr(loaded.pipe, "control", None)


def check_fp8_storage(name: str, model: nn.Module, expected: int, scaled: bool) -> None:
    """``expected`` linears in fp8 (with per-row scales when ``scaled``), all inside the declared blocks; every
    other linear, and every parameter that is not an fp8 weight (biases, embedders, norms, pad tokens), in fp32."""
    stored = {module_name: module for module_name, module in model.named_modules() if isinstance(module, Float8Linear)}
    assert len(stored) == expected, (name, len(stored))
    skip = points.fp8_skip(model)
    inside = {id(m) for root in (*points.block_lists(model), *points.fp8_side_modules(model)) for m in root.modules()}
    for module_name, module in stored.items():
        assert id(module) in inside and not points.fp8_skipped(module_name, skip), module_name
        assert module.weight.dtype == FP8 and (module.scale_weight is not None) == scaled
        if scaled:
            assert module.scale_weight.shape == (module.out_features, 1)
    fp8_weights = {id(module.weight) for module in stored.values()}
    for param_name, param in model.named_parameters():
        if id(param) not in fp8_weights:
            assert param.dtype == torch.float32, param_name
    for pad in ("x_pad_token", "cap_pad_token"):  # VideoX-Fun leaves Z-Image's out of fp8 by name: ours too
        if hasattr(model, pad):
            assert getattr(model, pad).dtype == torch.float32


@pytest.mark.parametrize("fp8", ["plain", "scaled"])
@pytest.mark.parametrize("name", MODELS)
def test_qfloat8_modes_store_the_declared_block_linears_and_stay_close(baselines, name, fp8):
    expected = baselines.reference(name)
    mode = {"plain": "model_full_load_and_qfloat8", "scaled": "model_cpu_offload_and_qfloat8"}[fp8]  # both modes
    loaded, latents = generate(name, gpu_memory_mode=mode, fp8=fp8)
    diff, relative = difference(latents, expected)
    print(f"{name} {mode} --fp8 {fp8}: max abs diff {diff:.3g}, relative {relative:.3g}")
    assert 0 < relative <= 0.02
    transformer, control = fp8_models(loaded)
    check_fp8_storage(name, transformer, FP8_LINEARS[name][0], fp8 == "scaled")
    if control is not None:  # the control stream is stored as the transformer is, as documented
        check_fp8_storage(name, control, FP8_LINEARS[name][1], fp8 == "scaled")
    assert loaded.applied["fp8"] == fp8


# -- compile --------------------------------------------------------------------------------------------------------
class CountingBackend:
    """A torch.compile backend (aot_eager: dynamo's graph capture and functionalisation, without inductor's C++
    build) that counts the graphs it compiles and their runs."""

    def __init__(self) -> None:
        self.backend = torch._dynamo.lookup_backend("aot_eager")
        self.compiled = 0
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiled += 1
        compiled = self.backend(graph, example_inputs)

        def run(*args: object) -> object:
            self.runs += 1
            return compiled(*args)

        return run


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSES[1:])
def test_regional_compile_equals_eager(baselines, name, monkeypatch):
    """--compile with the counting aot_eager backend (FLUX.1 runs inductor itself, below)."""
    expected = baselines.reference(name)
    torch._dynamo.reset()
    backend = CountingBackend()
    monkeypatch.setattr(compile_module, "compile_blocks", functools.partial(compile_blocks, backend=backend))
    loaded, latents = generate(name, compile=True)
    blocks = points.repeated_blocks(loaded.pipe.transformers[0])
    diff, _ = difference(latents, expected)
    print(f"{name} compiled: {backend.compiled} graphs for {len(blocks)} blocks, {backend.runs} runs, diff {diff:.3g}")
    assert diff <= 1e-5 and loaded.applied["compile"] is True
    assert backend.compiled < len(blocks)  # blocks of a class share graphs (regional compile)
    assert backend.runs >= len(blocks) * STEPS  # every block ran compiled, every step


@pytest.mark.slow
def test_compile_option_with_inductor_on_flux(baselines):
    """``--compile`` as users run it (inductor) on FLUX.1: within 1e-5 of eager."""
    torch._dynamo.reset()
    loaded, latents = generate("Flux-Tiny-Random", compile=True)
    diff, _ = difference(latents, baselines.reference("Flux-Tiny-Random"))
    print(f"Flux-Tiny-Random --compile (inductor): max abs diff {diff:.3g}")
    assert diff <= 1e-5 and loaded.applied["compile"] is True


# -- step caches ----------------------------------------------------------------------------------------------------
def cached_run(loaded: LoadedPipeline, name: str, **options: object) -> tuple[torch.Tensor, StepCache]:
    """Latents with a per-job step cache on the loaded pipeline, and the cache (its stats)."""
    with loaded.job_options(RuntimeOptions(device="cpu", **options)):  # type: ignore[arg-type]
        latents = loaded.generate(request(name), progress=False).latents
        (cache,) = [hook for hook in loaded.pipe.transformers[0].generation_hooks if isinstance(hook, StepCache)]
    return latents, cache


@pytest.mark.parametrize("name", MODELS)
def test_first_block_cache_skips_steps_and_stays_close(baselines, name):
    expected = baselines.reference(name)
    # A random tiny model's first-block residual moves 0.3-1.3 (relative L1) from step to step: a threshold of 1
    # lets some steps skip (a trained model's moves far less, hence the default 0.05).
    latents, cache = cached_run(baselines.pipeline(name), name, cache="first-block", cache_threshold=1.0,
                                num_skip_start_steps=1)  # fmt: skip
    diff, relative = difference(latents, expected)
    print(f"{name} first-block: {cache.stats.skipped} of {cache.stats.skipped + cache.stats.computed} passes "
          f"skipped, max abs diff {diff:.3g}, relative {relative:.3g}")  # fmt: skip
    assert cache.stats.skipped >= 1 and relative <= 0.1
    # the first step and the last always compute
    assert cache.stats.decisions[0] and cache.stats.decisions[-1]


@pytest.mark.parametrize("name", MODELS)
def test_teacache_runs_on_coefficients_fitted_by_calibrate_cache(baselines, name, tmp_path):
    expected = baselines.reference(name)
    loaded = baselines.pipeline(name)
    with pytest.raises(ValueError, match="calibrate-cache"):  # no set is published for the tiny models
        cached_run(loaded, name, cache="teacache")
    folder = resolve_folder(name)
    control = ["--control-video", str(write_control(tmp_path))] if "Fun-Control" in name else []
    image = ["--image", str(write_picture(tmp_path))] if "Edit" in name else []
    target, prompts = folder / "cache_calibration.json", tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert main(["calibrate-cache", "--model", name, "--prompts-file", str(prompts), "--steps", "6", "--degree", "2",
                 "--height", "32", "--width", "32", "--device", "cpu", *control, *image]) == 0  # fmt: skip
    fitted = json.loads(target.read_text())
    assert fitted["indicator"] == teacache_indicator(None, False, loaded.pipe.transformers[0])
    try:
        latents, cache = cached_run(loaded, name, cache="teacache", cache_threshold=1.0, num_skip_start_steps=1)
    finally:
        target.unlink()
    diff, relative = difference(latents, expected)
    print(
        f"{name} teacache ({fitted['indicator']}, {fitted['samples']} step pairs): {cache.stats.skipped} of "
        f"{cache.stats.skipped + cache.stats.computed} skipped, max abs diff {diff:.3g}, relative {relative:.3g}"
    )
    assert cache.stats.skipped >= 1 and relative <= 0.1


def write_control(folder: Path) -> Path:
    """The control picture as a PNG (what calibrate-cache reads)."""
    from videox_fun.io.video import write_video

    return write_video(CONTROL[None], folder / "control.png")


def write_picture(folder: Path) -> Path:
    """The edit picture as a PNG."""
    from videox_fun.io.video import write_video

    return write_video(PICTURE[None], folder / "picture.png")


# The released architectures with a published TeaCache set: (class, config, its coefficients as published).
PUBLISHED_SETS = {
    "Qwen-Image": (QwenImageTransformer,
                   {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
                    "num_attention_heads": 24, "joint_attention_dim": 3584, "axes_dims_rope": [16, 56, 56]},
                   [-450.0, 280.0, -45.0, 3.2, -0.02]),
    "FLUX.1": (FluxTransformer,
               {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                "attention_head_dim": 128,
                "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]},
               [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01]),
}  # fmt: skip


@pytest.mark.parametrize("label", PUBLISHED_SETS)
def test_the_published_teacache_set_on_the_released_architecture(label):
    """The published set (VideoX-Fun's cache_utils for every "qwen-image" model; TeaCache4FLUX for FLUX.1) on its
    indicator, the first block's modulated image input, which is what --cache teacache uses by default there."""
    model_class, released, published = PUBLISHED_SETS[label]
    with torch.device("meta"):
        model = model_class.from_model_config(released)
    assert teacache_indicator(None, False, model) == "modulated_input"
    assert coefficients_for(model, None, "modulated_input") == published
    with pytest.raises(ValueError, match=f"published {label} set is fitted on modulated_input, the default indicator"):
        coefficients_for(model, None, "time_embedding")
    with torch.device("meta"):  # one block fewer: not the released architecture, so no published set
        smaller = model_class.from_model_config({**released, "num_layers": released["num_layers"] - 1})
    with pytest.raises(ValueError, match="calibrate-cache"):
        coefficients_for(smaller, None, "modulated_input")


@pytest.mark.parametrize("name", ["Qwen-Image-Tiny-Random", "Flux-Tiny-Random"])
def test_modulated_input_is_what_the_first_block_attends_from(baselines, name):
    """The indicator computed before block 0 equals the modulated image tokens block 0 hands its attention."""
    transformer = baselines.pipeline(name).pipe.transformers[0]
    block = transformer.transformer_blocks[0]
    seen: dict[str, torch.Tensor] = {}
    hooks = [block.register_forward_pre_hook(lambda m, a, k: seen.update(arguments=k), with_kwargs=True),
             block.attn.register_forward_pre_hook(lambda m, a, k: seen.update(attended=k["hidden_states"]),
                                                  with_kwargs=True)]  # fmt: skip
    try:
        baselines.pipeline(name).generate(request(name), progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    computed = type(transformer).modulated_input(block, seen["arguments"])
    assert torch.equal(computed, seen["attended"])


# -- guidance, attention, RIFLEx ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_sequential_cfg_equals_batched(baselines, name):
    expected, loaded = baselines.reference(name), baselines.pipeline(name)
    with loaded.job_options(RuntimeOptions(device="cpu", cfg_sequential=True)):
        latents = loaded.generate(request(name), progress=False).latents
    diff, _ = difference(latents, expected)
    print(f"{name} --cfg-sequential: max abs diff {diff:.3g}")
    assert diff <= 1e-5


def attention_layers(*models: nn.Module | None) -> list[nn.Module]:
    """The attention layers of models: diffusers' attention modules (those with a ``processor``)."""
    return [m for model in models if model is not None for m in model.modules() if hasattr(m, "processor")]


@pytest.mark.parametrize("name", MODELS)
def test_every_attention_layer_goes_through_the_dispatch(baselines, name, monkeypatch):
    """Each call of every attention layer (a Fun control stream's copies too) reaches the one dispatch, whose
    backend --attention picks."""
    loaded = baselines.pipeline(name)
    layers = attention_layers(*fp8_models(loaded))
    calls = Counter()
    original = dispatch.attention
    monkeypatch.setattr(dispatch, "attention", lambda *args: calls.update(["dispatch"]) or original(*args))
    hooks = [layer.register_forward_pre_hook(lambda m, a: calls.update(["layer"])) for layer in layers]
    try:
        loaded.generate(request(name), progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    print(f"{name}: {len(layers)} attention layers called {calls['layer']} times, dispatch {calls['dispatch']} times")
    assert layers and calls["dispatch"] == calls["layer"] >= len(layers) * STEPS
    assert all(isinstance(layer.processor, dispatch.AttentionSeam) for layer in layers)


@pytest.mark.parametrize("backend", ["flash_attn", "flash_attn3", "sage"])
def test_an_attention_backend_that_cannot_run_here_is_refused_before_loading(baselines, backend, monkeypatch):
    monkeypatch.setattr(dispatch, "available_backends", lambda: ["sdpa"])  # as on a CPU, whatever is installed
    family, loads = type(recognise(resolve_folder("Flux-Tiny-Random")).family), Counter()
    monkeypatch.setattr(family, "load", lambda *args, **kwargs: loads.update(["load"]))
    with pytest.raises(ValueError, match=f"attention backend '{backend}'") as error:
        load_pipeline("Flux-Tiny-Random", RuntimeOptions(device="cpu", attention=backend))
    assert "\n" not in str(error.value) and not loads


@pytest.mark.parametrize("name", CLASSES)
def test_riflex_is_refused_in_one_line_for_images(baselines, name, tmp_path, capsys):
    out = tmp_path / "o.png"
    flags = ["--model", name, "--steps", "1", "--height", "32", "--width", "32", "--device", "cpu"]
    assert main(["generate", "--prompt", "x", "--riflex-k", "4", "--output", str(out), *flags]) != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "--riflex-k" in error and not out.exists()


def test_riflex_is_refused_before_any_weight_loads(monkeypatch):
    """An image model has no frame axis: ``--riflex-k`` fails in one line before the family loads a weight."""
    family, loads = type(recognise(resolve_folder("Z-Image-Tiny-Random")).family), Counter()
    monkeypatch.setattr(family, "load", lambda *args, **kwargs: loads.update(["load"]))
    with pytest.raises(ValueError, match="--riflex-k stretches a video model's frame axis") as error:
        load_pipeline("Z-Image-Tiny-Random", RuntimeOptions(device="cpu", riflex_k=4))
    assert "\n" not in str(error.value) and not loads
