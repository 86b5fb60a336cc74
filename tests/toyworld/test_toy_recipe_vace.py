"""The tiny VACE model's recipe: the InP base folded to text-to-video, the stream added at zero, then trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import tiny_transformer
from videox_fun.toyworld.dataset import write_dataset
from videox_fun.toyworld.recipe_vace import VaceRecipe, t2v_from_inp, train_vace, vace_from_t2v
from videox_fun.toyworld.render import render_clip


def test_the_fold_is_exact_for_a_constant_black_latent_and_the_stream_starts_at_zero():
    torch.manual_seed(0)
    inp = tiny_transformer("inp").eval()
    with torch.no_grad():
        for param in inp.parameters():
            param.normal_(0.0, 0.2)
    black = torch.randn(16, 1, 1, 1).expand(16, 2, 4, 4)  # the same latent at every position
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 32)
    y = torch.cat([torch.zeros(1, 4, 2, 4, 4), black[None]], dim=1)  # text to video: nothing known
    t2v = t2v_from_inp(inp, black)
    vace = vace_from_t2v(t2v, every=2, seed=0)
    with torch.no_grad():
        expected = inp(x, t, context, y=y)
        torch.testing.assert_close(t2v(x, t, context), expected, atol=1e-5, rtol=1e-5)
        # Zero projections: any VACE context leaves the base's output as it is.
        torch.testing.assert_close(
            vace(x, t, context, vace_context=torch.randn(1, 96, 2, 4, 4)), expected, atol=1e-5, rtol=1e-5
        )
    assert vace.vace_layers == list(range(0, t2v.config.num_layers, 2))
    for slot, layer in enumerate(vace.vace_layers):  # each VACE block starts as the main block it hints
        assert torch.equal(vace.vace_blocks[slot].ffn[0].weight, t2v.blocks[layer].ffn[0].weight)


@pytest.mark.slow
def test_train_vace_builds_trains_and_writes_a_loadable_folder(tmp_path: Path):
    data = tmp_path / "data"
    write_dataset(data, 8, seed=0, progress=False)
    folder = train_vace(tmp_path / "out", "Wan2.1-Fun-Tiny-InP", data, VaceRecipe(steps=2, batch=2, clips=8))
    record = json.loads((folder / "recipe.json").read_text())
    assert record["recipe"]["steps"] == 2 and record["base"] == "Wan2.1-Fun-Tiny-InP"
    from videox_fun.api import GenerationRequest, load_pipeline

    pipe = load_pipeline(folder)
    still = write_video(render_clip("a red circle moving right", seed=1).frames[:1], tmp_path / "ref.png")
    result = pipe.generate(GenerationRequest(prompt="a red circle moving right", mode="r2v", ref_image=str(still),
                                             steps=2, num_frames=5, seed=0), progress=False)  # fmt: skip
    assert tuple(result.frames.shape) == (5, 64, 64, 3)
