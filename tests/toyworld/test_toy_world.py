"""The toy world's specification: combinations, held-out pairs and the caption grammar."""

from __future__ import annotations

import numpy as np
import pytest

from videox_fun.toyworld.world import (
    COLOURS,
    DIRECTIONS,
    HELD_OUT,
    IMAGE_TEMPLATES,
    SHAPES,
    VIDEO_TEMPLATES,
    ClipSpec,
    balanced_specs,
    caption,
    combinations,
    parse_caption,
    vocabulary,
)


def test_splits_partition_the_72_combinations():
    everything = combinations("all")
    train, heldout = combinations("train"), combinations("heldout")
    assert len(everything) == len(COLOURS) * len(SHAPES) * len(DIRECTIONS) == 72
    assert len(heldout) == 4 * len(HELD_OUT) == 12 and len(train) == 60
    assert set(train) | set(heldout) == set(everything) and not set(train) & set(heldout)
    assert {(s.colour, s.shape) for s in heldout} == {("green", "triangle"), ("blue", "circle"), ("yellow", "square")}
    assert all(s.held_out for s in heldout) and not any(s.held_out for s in train)


@pytest.mark.parametrize("template", range(len(VIDEO_TEMPLATES)))
def test_every_paraphrase_parses_back(template):
    for spec in combinations("all"):
        text = caption(spec, template)
        assert text.startswith(f"a {spec.colour} {spec.shape}") and spec.direction in text
        assert parse_caption(text) == spec
        assert parse_caption(text.upper() + ".") == spec


def test_canonical_caption_and_image_captions():
    spec = ClipSpec("red", "circle", "right")
    assert caption(spec) == "a red circle moving right"
    for template in range(len(IMAGE_TEMPLATES)):
        text = caption(spec, template, image=True)
        assert "red circle" in text and "right" not in text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("a circle moving right", "names none of the colours"),
        ("a red blue circle moving right", "names blue, red of the colours"),
        ("a red hexagon moving right", "names none of the shapes"),
        ("a red circle moving up and left", "names left, up of the directions"),
        ("", "names none"),
    ],
)
def test_parse_caption_rejects_what_is_not_one_clip(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_caption(text)


def test_spec_rejects_unknown_values():
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        ClipSpec("purple", "circle", "left")
    with pytest.raises(ValueError, match="unknown direction"):
        ClipSpec("red", "circle", "sideways")
    with pytest.raises(ValueError, match="unknown split"):
        combinations("test")


def test_vocabulary_covers_every_caption_word():
    words = set(vocabulary())
    for spec in combinations("all"):
        for template in range(len(VIDEO_TEMPLATES)):
            assert set(caption(spec, template).split()) <= words
        for template in range(len(IMAGE_TEMPLATES)):
            assert set(caption(spec, template, image=True).split()) <= words


def test_balanced_specs_cover_the_split_evenly():
    specs = list(balanced_specs("train", 130, np.random.default_rng(0)))
    counts = {spec: specs.count(spec) for spec in combinations("train")}
    assert len(specs) == 130 and set(counts.values()) == {2, 3}  # 130 = 2 x 60 + 10
    assert specs[:60] != combinations("train")  # shuffled, not the fixed order
    assert list(balanced_specs("train", 130, np.random.default_rng(0))) == specs
