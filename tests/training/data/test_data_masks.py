"""Random inpaint masks: each kind's meaning, the draw, and the convention the pipeline packs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from videox_fun.pipelines.conditioning import mask_channels
from videox_fun.training.data import MASK_KINDS, choose_mask_kind, generate_mask, random_generate_mask

F, H, W = 17, 32, 48


def _mask(kind: str, seed: int = 0, frames: int = F) -> torch.Tensor:
    mask = generate_mask(kind, frames, H, W, torch.Generator().manual_seed(seed))
    assert mask.shape == (1, frames, H, W) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    return mask[0]  # (F, H, W)


def _generated_frames(mask: torch.Tensor) -> list[bool]:
    return [bool(frame.any()) for frame in mask]


def test_frame_kinds() -> None:
    assert _mask("t2v").all()
    i2v = _mask("i2v")
    assert not i2v[0].any() and i2v[1:].all()
    first_last = _mask("first_last")
    assert not first_last[0].any() and not first_last[-1].any() and first_last[1:-1].all()
    for seed in range(20):
        start = _mask("start_frames", seed)
        known = [not f.any() for f in start]
        count = sum(known)
        assert 2 <= count <= 4 and known[:count] == [True] * count and start[count:].all()
        temporal = _generated_frames(_mask("temporal", seed))
        run = [i for i, g in enumerate(temporal) if g]
        assert run == list(range(run[0], run[-1] + 1)) and len(run) < F  # one run, something known


def test_spatial_kinds_are_the_same_region_in_every_frame() -> None:
    for kind in ("box", "outpaint", "ellipse", "brush"):
        for seed in range(10):
            mask = _mask(kind, seed)
            assert torch.equal(mask, mask[:1].expand_as(mask)), kind
            assert 0 < mask[0].mean() < 1, kind
    box = _mask("box", 3)[0]
    rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
    assert box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # a filled rectangle
    assert torch.equal(_mask("outpaint", 3), 1 - _mask("box", 3))
    segment = _mask("box_segment", 5)
    run = [i for i, g in enumerate(_generated_frames(segment)) if g]
    assert run == list(range(run[0], run[-1] + 1))
    # Continuation: the known frames end on a latent-frame boundary (1 + 4k).
    assert _generated_frames(_mask("second_half", frames=17)) == [False] * 9 + [True] * 8
    assert _generated_frames(_mask("second_half", frames=5)) == [False] + [True] * 4


def test_random_masks_mix_the_kinds_by_weight_and_repeat_with_the_seed() -> None:
    generator = torch.Generator().manual_seed(0)
    drawn = Counter(choose_mask_kind(F, generator) for _ in range(4000))
    drawn_by_default = {kind for kind, (_, weight, _) in MASK_KINDS.items() if weight > 0}
    assert set(drawn) == drawn_by_default and "second_half" not in drawn  # asked for by name only
    for kind, (_, weight, _) in MASK_KINDS.items():
        assert drawn[kind] / 4000 == pytest.approx(weight / sum(w for _, w, _ in MASK_KINDS.values()), abs=0.03)
    first = random_generate_mask(F, H, W, torch.Generator().manual_seed(11))
    assert torch.equal(first, random_generate_mask(F, H, W, torch.Generator().manual_seed(11)))
    masks = {random_generate_mask(F, H, W, torch.Generator().manual_seed(s)).sum().item() for s in range(30)}
    assert len(masks) > 10


def test_kinds_can_be_chosen_and_one_frame_gets_only_spatial_kinds() -> None:
    generator = torch.Generator().manual_seed(1)
    assert {choose_mask_kind(1, generator) for _ in range(300)} == {"t2v", "box", "outpaint", "ellipse", "brush"}
    assert {choose_mask_kind(F, generator, ["i2v", "first_last"]) for _ in range(100)} == {"i2v", "first_last"}
    assert {choose_mask_kind(F, generator, {"i2v": 1.0, "t2v": 0.0}) for _ in range(50)} == {"i2v"}
    assert random_generate_mask(F, H, W, generator, ["i2v"])[0, 0].sum() == 0
    with pytest.raises(ValueError, match="unknown mask kinds"):
        random_generate_mask(F, H, W, generator, ["sparkle"])
    with pytest.raises(ValueError, match="none of the mask kinds"):
        random_generate_mask(1, H, W, generator, ["i2v"])
    with pytest.raises(ValueError, match="needs at least 3 frames"):
        generate_mask("first_last", 1, H, W, generator)


def test_masks_follow_the_pipeline_convention() -> None:
    # 1 = generate: packed by the pipeline's helper, an i2v mask marks latent frame 0 known (1) and the rest unknown.
    i2v = _mask("i2v")[None, None]  # (1, 1, F, H, W)
    channels = mask_channels(i2v, (H // 8, W // 8))  # (1, 4, 5, h, w), 1 = known
    assert channels.shape == (1, 4, (F - 1) // 4 + 1, H // 8, W // 8)
    assert channels[:, :, 0].eq(1).all() and channels[:, :, 1:].eq(0).all()
