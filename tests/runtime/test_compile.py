"""Regional torch.compile of the blocks (on Wan, VACE and Wan2.2-Animate) and RIFLEx as removable changes of the
transformer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import seeded_transformer, write_animate_sources

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel, riflex_frequency, rope_axis_dims
from videox_fun.models.wan.variants import tiny_config
from videox_fun.runtime import points
from videox_fun.runtime.compile import apply_riflex, compile_blocks, remove_riflex


def tiny_model() -> WanTransformer3DModel:
    return seeded_transformer(tiny_config("t2v", dim=48, num_heads=2))


def inputs(frames: int = 3):
    return torch.randn(1, 16, frames, 4, 4), torch.tensor([400.0]), torch.randn(1, 6, 32)


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
def test_compiled_blocks_give_the_same_output():
    model, args = tiny_model(), inputs()
    torch._dynamo.reset()  # no graphs cached by other tests
    backend = CountingBackend("aot_eager")
    with torch.no_grad():
        expected = model(*args)
        assert compile_blocks(model, backend=backend) is model
        assert backend.compiled == 0  # compilation is lazy: nothing until the first call
        assert torch.allclose(model(*args), expected, atol=1e-5)
        # The blocks share one graph (regional compilation), and each block ran through it, whole.
        assert backend.compiled == 1
        assert backend.runs == len(model.blocks) >= 2
        model(*args)  # same shapes: the compiled graph is reused, not compiled again
        assert backend.compiled == 1 and backend.runs == 2 * len(model.blocks)


def test_riflex_changes_only_one_frame_frequency_and_is_removable():
    model = tiny_model()
    plain = model.rotary((13, 2, 2), torch.device("cpu"))
    apply_riflex(model, k=2)
    changed = model.rotary((13, 2, 2), torch.device("cpu"))
    frame_dims = rope_axis_dims(model.head_dim)[0] // 2
    differs = (plain != changed).any(dim=0)  # which of the D/2 rotations changed
    assert differs.nonzero().flatten().tolist() == [1]  # index k-1 of the frame axis only
    assert differs[frame_dims:].sum() == 0
    index, value = riflex_frequency(13, 2)
    assert index == 1 and value == pytest.approx(0.9 * 2 * math.pi / 13)
    remove_riflex(model)
    assert torch.equal(model.rotary((13, 2, 2), torch.device("cpu")), plain)


def test_riflex_k_must_be_positive():
    with pytest.raises(ValueError, match="riflex-k"):
        apply_riflex(tiny_model(), 0)


def test_riflex_k_beyond_the_frame_frequencies_names_the_range():
    model = tiny_model()
    frame_frequencies = rope_axis_dims(model.head_dim)[0] // 2
    apply_riflex(model, frame_frequencies)  # the last one is allowed
    assert model.rotary((13, 2, 2), torch.device("cpu")).shape[0] == 13 * 2 * 2
    remove_riflex(model)
    with pytest.raises(ValueError, match=rf"--riflex-k must be between 1 and {frame_frequencies} .*got 1000"):
        apply_riflex(model, 1000)
    assert "rotary" not in model.__dict__  # nothing was changed


def vace_request(root: Path) -> GenerationRequest:
    """Two steps of VACE control at 32 x 32, 5 frames."""
    control = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    video = write_video(control, root / "control.mp4")
    return GenerationRequest(prompt="x", control_video=video, height=32, width=32, num_frames=5, steps=2, seed=5)


def animate_request(root: Path) -> GenerationRequest:
    """Two segments of 5 frames (overlapping by 1) of Wan2.2-Animate at 32 x 32, two steps each."""
    sources = write_animate_sources(root / "sources", 9, 32)
    return GenerationRequest(prompt="x", steps=2, seed=5, extra={"src_root_path": sources, "clip_len": 5})


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "request_for"), [("vace", vace_request), ("animate", animate_request)])
def test_compile_through_the_entry_gives_eager_latents(tmp_path, variant, request_for):
    # What --compile does (regional inductor compile of each declared block class: VACE's stream blocks are Wan
    # blocks, Animate's face blocks are declared beside them), against the same run eager.
    folder, request = build_tiny_model_folder(tmp_path / variant, variant), request_for(tmp_path)
    latents = {}
    torch._dynamo.reset()
    for compiled in (False, True):
        loaded = load_pipeline(folder, RuntimeOptions(device="cpu", compile=compiled))
        try:
            latents[compiled] = loaded.generate(request, progress=False).latents
            blocks = points.repeated_blocks(loaded.pipe.transformers[0])
            assert all((block._compiled_call_impl is not None) == compiled for block in blocks)
        finally:
            loaded.close()
    diff = (latents[True] - latents[False]).abs().max().item()
    print(f"{variant}: max |compiled - eager| = {diff:.2e}")
    assert diff < 1e-4  # inductor fuses and reorders float ops
