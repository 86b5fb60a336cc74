"""The renderer: determinism, the world's geometry, the track, the masks and the Canny control video."""

from __future__ import annotations

import math

import numpy as np
import pytest

from videox_fun.toyworld.evaluate import control_track, trajectory_error
from videox_fun.toyworld.render import INPAINT_MASKS, render_clip
from videox_fun.toyworld.world import PALETTE, SHAPE_SIZE_RANGE, SPEED_RANGE, ClipSpec, combinations


def test_same_seed_renders_the_same_clip_and_another_seed_does_not():
    a = render_clip("a cyan triangle moving down", seed=7)
    b = render_clip("a cyan triangle moving down", seed=7)
    c = render_clip("a cyan triangle moving down", seed=8)
    assert a.caption == b.caption and a.spec == b.spec
    for name in ("frames", "track", "control"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in INPAINT_MASKS)
    assert not np.array_equal(a.frames, c.frames) and a.spec != c.spec


@pytest.mark.parametrize(("size", "frames"), [((64, 64), 17), ((48, 80), 17), ((128, 96), 25), ((64, 64), 9)])
def test_every_combination_stays_inside_the_frame_with_the_world_sizes_and_speeds(size, frames):
    scale = min(size) / 64
    for index, spec in enumerate(combinations("all")):
        clip = render_clip(spec, size, frames, seed=index)
        assert clip.frames.shape == (frames, *size, 3) and clip.frames.dtype == np.uint8
        # Fully inside: nothing on the border rows / columns, and the same area in every frame.
        border = clip.coverage[:, [0, -1], :].sum() + clip.coverage[:, :, [0, -1]].sum()
        assert border == 0, spec
        areas = clip.coverage.sum(axis=(1, 2))
        assert np.allclose(areas, areas[0], rtol=0.05), spec  # 4x4 supersampling: a few % on small shapes
        low, high = SHAPE_SIZE_RANGE[spec.shape]
        assert low <= clip.spec.extent <= high and SPEED_RANGE[0] <= clip.spec.speed <= SPEED_RANGE[1]
        step = np.diff(clip.track, axis=0)  # (F-1, 2): constant motion along the named direction
        assert np.allclose(np.linalg.norm(step, axis=1), clip.spec.speed * scale)
        # Black background, and the fully covered pixels carry the palette colour exactly.
        assert clip.frames[clip.coverage == 0].max() == 0
        assert (clip.frames[clip.coverage == 1] == PALETTE[spec.colour]).all()


def test_track_is_the_centroid_of_the_rendered_shape():
    for index, spec in enumerate(combinations("all")):
        clip = render_clip(spec, seed=100 + index)
        ys, xs = np.mgrid[0 : clip.coverage.shape[1], 0 : clip.coverage.shape[2]] + 0.5  # pixel centres
        weight = clip.coverage.sum(axis=(1, 2))
        centroid = np.stack([(clip.coverage * xs).sum((1, 2)), (clip.coverage * ys).sum((1, 2))], 1) / weight[:, None]
        assert np.abs(centroid - clip.track).max() < 0.15, spec


def test_fixed_spec_fields_are_kept():
    spec = ClipSpec("red", "square", "left", extent=15.0, speed=2.0, start=(50.0, 30.0))
    clip = render_clip(spec, seed=3)
    assert clip.spec == spec
    assert clip.track[0].tolist() == [50.0, 30.0] and clip.track[-1].tolist() == [50.0 - 2.0 * 16, 30.0]


def test_a_path_that_cannot_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit 41 frames in a 64x64 frame; use at most"):
        render_clip("a red triangle moving left", frames=41)
    with pytest.raises(ValueError, match="longer than"):
        render_clip(ClipSpec("red", "square", "left", extent=19.0, speed=2.5), frames=25)
    with pytest.raises(ValueError, match="names none of the shapes"):
        render_clip("a red blob moving left")


def test_caption_paraphrase_follows_the_seed_or_the_template():
    captions = {render_clip("a red circle moving up", seed=seed).caption for seed in range(20)}
    assert len(captions) > 2 and all("red circle" in c and "up" in c for c in captions)
    assert render_clip("a red circle moving up", seed=5, template=0).caption == "a red circle moving up"


def test_inpaint_masks_mark_what_to_generate():
    clip = render_clip("a magenta circle moving right", seed=2)
    masks = clip.masks
    assert set(masks) == set(INPAINT_MASKS)
    assert all(
        m.dtype == np.uint8 and m.shape == clip.coverage.shape and set(np.unique(m)) <= {0, 255} for m in masks.values()
    )
    assert (masks["i2v"][0] == 0).all() and (masks["i2v"][1:] == 255).all()
    assert (masks["flf2v"][[0, -1]] == 0).all() and (masks["flf2v"][1:-1] == 255).all()
    assert (masks["shape"][clip.coverage > 0] == 255).all()  # the silhouette (grown) is generated...
    assert (masks["shape"] == 255).mean() < 0.2  # ...and only around it
    box = masks["box"]
    assert (box == box[0]).all() and 1 / 16 <= (box[0] == 255).mean() <= 1 / 4 + 0.05


def test_canny_control_outlines_the_shape_on_its_track():
    worst = 0.0
    for index, spec in enumerate(combinations("all")):
        clip = render_clip(spec, seed=200 + index)
        control = clip.control
        assert control.shape == clip.frames.shape and control.dtype == np.uint8
        assert set(np.unique(control)) == {0, 255} and (control[..., 0] == control[..., 2]).all()
        edges = control[..., 0] > 0
        assert edges.any(axis=(1, 2)).all() and (clip.coverage[edges] > 0).mean() > 0.5  # on the shape's boundary
        error, count = trajectory_error([tuple(p) for p in clip.track], control_track(control, control.shape[1:3]))
        assert count == len(clip.track)
        worst = max(worst, error)
    assert worst < 1.0


def test_circle_area_matches_its_radius():
    clip = render_clip(ClipSpec("blue", "circle", "down", extent=9.0), seed=0)
    assert clip.coverage[0].sum() == pytest.approx(math.pi * 81, rel=0.01)
