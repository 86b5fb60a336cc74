"""The toy world's specification: palette, shapes, motions, held-out combinations and captions.

Everything that defines *what* the world contains lives here, so the renderer, the dataset
writer, the evaluator and (later) the tokenizer of the tiny text encoder read one source.
Sizes and speeds are in pixels of a 64x64 frame; the renderer scales them to other sizes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# RGB of the six colours (ARCHITECTURE.md, "The toy world").
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 200, 210),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Size ranges at 64x64: circle radius, square side, (equilateral, upright) triangle side.
SHAPE_SIZE_RANGE: dict[str, tuple[float, float]] = {
    "circle": (7.0, 10.0),
    "square": (13.0, 19.0),
    "triangle": (17.0, 23.0),
}
# Unit motion vectors in image coordinates (x to the right, y downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEED_RANGE: tuple[float, float] = (1.5, 2.5)  # pixels per frame at 64x64
BASE_SIZE = 64  # the frame size the pixel figures above refer to
DEFAULT_SIZE = (64, 64)  # (height, width)
DEFAULT_FRAMES = 17
DEFAULT_FPS = 8

# Colour x shape pairs kept out of every training set (all four directions), to measure composition.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("green", "triangle"), ("blue", "circle"), ("yellow", "square")})
SPLITS = ("train", "heldout", "all")

# The caption grammar: "a {colour} {shape} moving {direction}" and paraphrases of that form.
# The first template is the canonical one (prompts files use it).
VIDEO_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} moving {direction}",
    "a {colour} {shape} moves {direction}",
    "a {colour} {shape} is moving {direction}",
    "a {colour} {shape} sliding {direction}",
    "a {colour} {shape} drifting {direction}",
    "a {colour} {shape} on a black background moving {direction}",
)
# Still images have no motion, so their captions name none.
IMAGE_TEMPLATES: tuple[str, ...] = ("a {colour} {shape}", "a {colour} {shape} on a black background")


@dataclass(frozen=True)
class ClipSpec:
    """What a clip shows. ``None`` fields are drawn by the renderer from the clip's seed.

    ``extent`` is the circle's radius or the square's / triangle's side and ``speed`` the
    motion in pixels per frame, both at 64x64 (scaled with the frame); ``start`` is the
    shape's centroid ``(x, y)`` in the first frame, in pixels of the actual frame.
    """

    colour: str
    shape: str
    direction: str
    extent: float | None = None
    speed: float | None = None
    start: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for value, choices, name in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.direction, tuple(DIRECTIONS), "direction"),
        ):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")

    @property
    def held_out(self) -> bool:
        """Whether this colour x shape pair is excluded from training sets."""
        return is_held_out(self.colour, self.shape)

    def attributes(self) -> dict[str, str]:
        """The three judged attributes, as the evaluator reports them."""
        return {"colour": self.colour, "shape": self.shape, "direction": self.direction}


def is_held_out(colour: str, shape: str) -> bool:
    """Whether a colour x shape pair is one of the held-out combinations."""
    return (colour, shape) in HELD_OUT


def combinations(split: str = "all") -> list[ClipSpec]:
    """Every colour x shape x direction combination of a split, in a fixed order.

    ``train``: the 60 seen ones; ``heldout``: the 12 held-out ones; ``all``: all 72.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    specs = [ClipSpec(c, s, d) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)]
    if split == "train":
        return [spec for spec in specs if not spec.held_out]
    if split == "heldout":
        return [spec for spec in specs if spec.held_out]
    return specs


def caption(spec: ClipSpec, template: int = 0, image: bool = False) -> str:
    """The caption of a clip (``image=True``: of a still image) with the given paraphrase."""
    templates = IMAGE_TEMPLATES if image else VIDEO_TEMPLATES
    return templates[template % len(templates)].format(colour=spec.colour, shape=spec.shape, direction=spec.direction)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def parse_caption(text: str) -> ClipSpec:
    """Read colour, shape and direction back from a caption (any paraphrase, any case).

    Raises ``ValueError`` unless the text names exactly one colour, one shape and one direction.
    """
    words = _words(text)
    found = {}
    for name, vocabulary in (("colour", COLOURS), ("shape", SHAPES), ("direction", tuple(DIRECTIONS))):
        hits = sorted({w for w in words if w in vocabulary})
        if len(hits) != 1:
            what = f"names {', '.join(hits)}" if hits else "names none"
            raise ValueError(f"caption {text!r} {what} of the {name}s ({', '.join(vocabulary)}); it must name one")
        found[name] = hits[0]
    return ClipSpec(**found)


def vocabulary() -> list[str]:
    """Every word the captions use (for the tiny text encoder's tokenizer), sorted."""
    words: set[str] = set(COLOURS) | set(SHAPES) | set(DIRECTIONS)
    for template in VIDEO_TEMPLATES + IMAGE_TEMPLATES:
        words.update(_words(re.sub(r"\{\w+\}", " ", template)))
    return sorted(words)


def balanced_specs(split: str, n: int, rng: np.random.Generator) -> Iterator[ClipSpec]:
    """``n`` specs that cycle through the split's combinations, each cycle in a new random order.

    ``rng`` draws the orders; every combination appears ``n // len(split)`` or one
    more times, so a small dataset still covers the whole split.
    """
    pool = combinations(split)
    for start in range(0, n, len(pool)):
        order = rng.permutation(len(pool))
        for index in order[: n - start]:
            yield pool[index]
