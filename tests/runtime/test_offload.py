"""Memory modes: every mode runs the tiny pipeline; the non-fp8 ones give exactly full-load output."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime import offload
from videox_fun.runtime.offload import MEMORY_MODES, OFFLOAD_DEVICE, BlockSwap, MoveLog, apply_memory_mode

SETTINGS = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False, "seed": 5}
# The CPU under another name: the modes compute on it, so moves onto the device and back to
# OFFLOAD_DEVICE (plain "cpu") can be told apart on a machine without an accelerator.
DEVICE = torch.device("cpu", 0)
ENTRY_METHODS = ("forward", "encode", "decode")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("offload") / "inp", "inp", with_clip=True)


@pytest.fixture(scope="module")
def reference(folder):
    return WanPipeline.from_pretrained(folder)("a red circle moving right", **SETTINGS).latents


class Moves:
    """While active: where each parameter was last sent (and whether to DEVICE), and each module's calls."""

    def __init__(self):
        self.last: dict[nn.Parameter, torch.device] = {}
        self.visited: set[nn.Parameter] = set()  # sent to DEVICE at least once
        self.calls: Counter = Counter()

    def _sent(self, params, device) -> None:
        """Note that ``params`` were just sent to ``device``."""
        for param in params:
            self.last[param] = torch.device(device)
            if self.last[param] == DEVICE:
                self.visited.add(param)

    def __enter__(self) -> Moves:
        self._to, self._move = nn.Module.to, offload._move_own_tensors
        to, move = self._to, self._move

        def tracked_to(module, *args, **kwargs):
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None:
                self._sent(module.parameters(), device)
            return to(module, *args, **kwargs)

        def tracked_move(module, device, non_blocking=False):
            self._sent(module.parameters(recurse=False), device)
            return move(module, device, non_blocking)

        nn.Module.to, offload._move_own_tensors = tracked_to, tracked_move
        self._counting = nn.modules.module.register_module_forward_pre_hook(lambda m, args: self.calls.update([m]))
        return self

    def __exit__(self, *exc) -> None:
        nn.Module.to, offload._move_own_tensors = self._to, self._move
        self._counting.remove()

    def where(self, module: nn.Module) -> set[torch.device]:
        """The devices ``module``'s parameters were last sent to."""
        return {self.last.get(param) for param in module.parameters()}


def hooked(module: nn.Module) -> dict[nn.Module, tuple[int, int]]:
    """The submodules of ``module`` with forward hooks: (pre-hooks, post-hooks) of each."""
    return {
        m: (len(m._forward_pre_hooks), len(m._forward_hooks))
        for m in module.modules()
        if m._forward_pre_hooks or m._forward_hooks
    }


def wrapped(module: nn.Module) -> list[str]:
    """The entry methods replaced on the instance ``module`` (by model_cpu_offload's wrapping)."""
    return [name for name in ENTRY_METHODS if name in module.__dict__]


def owns_tensors(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) holds parameters or buffers."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_every_mode_runs_and_non_fp8_modes_match_full_load(folder, reference, mode):
    pipe = WanPipeline.from_pretrained(folder)
    components = {
        "text_encoder": pipe.text_encoder,
        "image_encoder": pipe.image_encoder,
        "transformer": pipe.transformer,
        "vae": pipe.vae,
    }
    with Moves() as moves:
        log = apply_memory_mode(pipe, mode, DEVICE, resident_blocks=1)
        latents = pipe("a red circle moving right", **SETTINGS).latents
    if "qfloat8" in mode:
        assert torch.isfinite(latents).all()
        assert (latents - reference).abs().max() < 0.5  # fp8 rounding, not a different video
    else:
        assert torch.equal(latents, reference)

    transformer_calls = moves.calls[pipe.transformer]
    assert transformer_calls >= SETTINGS["num_inference_steps"]
    if mode.startswith("model_full_load"):
        # Everything on the device, nothing hooked, wrapped or moved while generating.
        assert log == MoveLog()
        for name, module in components.items():
            assert moves.where(module) == {DEVICE}, name
            assert not hooked(module) and not wrapped(module), name
    elif mode.startswith("model_cpu_offload"):
        # Each component onloaded when the pipeline calls it, the previous one sent back; the VAE
        # (encoding the blank video, then decoding) stays on the device after the video is done.
        assert log.order == ["text_encoder", "vae", "transformer", "vae"]
        assert (log.onloads, log.offloads, log.prefetches) == (4, 3, 0)
        assert wrapped(pipe.text_encoder) == wrapped(pipe.image_encoder) == ["encode"]
        assert wrapped(pipe.transformer) == ["forward"] and wrapped(pipe.vae) == ["encode", "decode"]
        for name, module in components.items():
            assert not hooked(module), name
            assert moves.where(module) == {DEVICE if name == "vae" else OFFLOAD_DEVICE}, name
    elif mode == "sequential_cpu_offload":
        # A load and an unload hook on every module that holds weights, fired once per call of it:
        # every transformer weight came onto the device and every weight ended back off it.
        runs = 0
        for name, module in components.items():
            owners = [m for m in module.modules() if owns_tensors(m)]
            assert hooked(module) == dict.fromkeys(owners, (1, 1)), name
            assert moves.where(module) == {OFFLOAD_DEVICE} and not wrapped(module), name
            runs += sum(moves.calls[m] for m in owners)
        assert log.onloads == log.offloads == runs > 0 and log.order == [] and log.prefetches == 0
        assert moves.visited >= set(pipe.transformer.parameters())
    else:  # model_group_offload with one resident block
        # The text encoder and VAE take turns as in model_cpu_offload; in the transformer, block 0
        # stays on the device and block 1 is prefetched while block 0 runs, then unloaded, each call.
        blocks = pipe.transformer.blocks
        assert len(blocks) == 2
        assert log.order == ["text_encoder", "vae"] + ["prefetch 1", "unload 1"] * transformer_calls
        assert (log.onloads, log.offloads, log.prefetches) == (2, 1 + transformer_calls, transformer_calls)
        assert hooked(pipe.transformer) == dict.fromkeys(blocks, (1, 1)) and not wrapped(pipe.transformer)
        assert wrapped(pipe.vae) == ["encode", "decode"] and wrapped(pipe.text_encoder) == ["encode"]
        assert moves.where(blocks[0]) == {DEVICE} and moves.where(blocks[1]) == {OFFLOAD_DEVICE}
        assert moves.visited >= set(blocks[1].parameters())
        rest = [child for name, child in pipe.transformer.named_children() if name != "blocks"]
        assert all(moves.where(child) == {DEVICE} for child in rest)
        assert moves.where(pipe.vae) == {DEVICE}
        assert moves.where(pipe.text_encoder) == moves.where(pipe.image_encoder) == {OFFLOAD_DEVICE}


def test_model_cpu_offload_moves_one_component_at_a_time(folder):
    pipe = WanPipeline.from_pretrained(folder)
    log = apply_memory_mode(pipe, "model_cpu_offload", "cpu")
    pipe("x", image=None, **SETTINGS)
    # text encoder, then (CLIP zeros need no encoder) the transformer, then the VAE for decoding
    assert log.order[0] == "text_encoder" and log.order[-1] == "vae" and "transformer" in log.order
    assert log.onloads == len(log.order) and log.offloads == log.onloads - 1


def test_block_swap_prefetches_the_next_block_and_keeps_the_resident_ones(folder):
    pipe = WanPipeline.from_pretrained(folder)
    log = MoveLog()
    swap = BlockSwap(pipe.transformer.blocks, torch.device("cpu"), resident=1, log=log)
    with torch.no_grad():
        pipe.transformer(
            torch.randn(1, 16, 2, 4, 4),
            torch.tensor([500.0]),
            torch.randn(1, 4, 32),
            clip_fea=torch.zeros(1, 257, 24),
            y=torch.zeros(1, 20, 2, 4, 4),
        )
    # block 0 is resident; block 1 is prefetched while block 0 runs, then unloaded after it ran
    assert log.order == ["prefetch 1", "unload 1"]
    swap.remove()
    assert not pipe.transformer.blocks[1]._forward_pre_hooks


def test_unknown_mode_is_named(folder):
    with pytest.raises(ValueError, match="model_half_load"):
        apply_memory_mode(WanPipeline.from_pretrained(folder), "model_half_load", "cpu")


@pytest.fixture(scope="module")
def two_expert_folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("offload") / "a14b", "inp", boundary=0.875)


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_two_expert_models_run_in_every_mode(two_expert_folder, mode):
    settings = {**SETTINGS, "num_inference_steps": 4}  # steps on both sides of the boundary
    reference = WanPipeline.from_pretrained(two_expert_folder)("a red circle moving right", **settings).latents
    pipe = WanPipeline.from_pretrained(two_expert_folder)
    log = apply_memory_mode(pipe, mode, "cpu", resident_blocks=1)
    latents = pipe("a red circle moving right", **settings).latents
    if "qfloat8" in mode:
        assert all(type(t.blocks[0].ffn[0]).__name__ == "Float8Linear" for t in pipe.transformers)
        assert (latents - reference).abs().max() < 0.5
    else:
        assert torch.equal(latents, reference)
    if mode.startswith("model_cpu_offload"):
        assert log.order[-3:] == ["transformer", "transformer_2", "vae"]  # high-noise expert, low-noise, decode
