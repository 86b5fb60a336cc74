"""The toy world: a synthetic world of coloured shapes that the packaged tiny models are trained on.

- :mod:`.world`: the specification (palette, shapes, motions, held-out combinations, captions);
- :mod:`.render`: the seeded renderer (:func:`render_clip` -> :class:`Clip`);
- :mod:`.dataset`: the dataset writer (:func:`write_dataset`, standard JSON metadata);
- :mod:`.evaluate`: the model-free judge of videos (:func:`evaluate_video`, :func:`evaluate_folder`);
- :mod:`.cli`: ``videox-fun toyworld ...`` and ``videox-fun eval toyworld``.
"""

from .dataset import write_dataset
from .evaluate import evaluate_folder, evaluate_video
from .render import Clip, render_clip
from .world import COLOURS, DIRECTIONS, HELD_OUT, PALETTE, SHAPES, ClipSpec, caption, combinations, parse_caption

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "HELD_OUT",
    "PALETTE",
    "SHAPES",
    "Clip",
    "ClipSpec",
    "caption",
    "combinations",
    "evaluate_folder",
    "evaluate_video",
    "parse_caption",
    "render_clip",
    "write_dataset",
]
