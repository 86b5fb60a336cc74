"""Random generate masks for inpaint (InP) training.

A mask is float ``(1, F, H, W)``: 1 where the model must generate, 0 where pixels are known (the
convention of :mod:`videox_fun.pipelines.conditioning`). Training on a mix of kinds teaches one
InP model every mode it serves: text-to-video (nothing known), image-to-video (first frame
known), first-last-frame, video continuation, interpolation and spatial inpainting / outpainting.
The mix follows VideoX-Fun's ``get_random_mask`` in spirit (t2v and frame-known kinds most
often, spatial kinds less); the kinds and weights are in :data:`MASK_KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

MaskFn = Callable[[int, int, int, torch.Generator], torch.Tensor]


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """A uniform int in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _full(num_frames: int, height: int, width: int) -> torch.Tensor:
    return torch.ones(1, num_frames, height, width)


def _known_frames(mask: torch.Tensor, frames: Sequence[int] | slice) -> torch.Tensor:
    mask[:, frames] = 0.0
    return mask


def _box(height: int, width: int, generator: torch.Generator) -> tuple[slice, slice]:
    """A random box covering 1/4 to 3/4 of each side."""
    box_h = _randint(max(1, height // 4), max(1, height * 3 // 4), generator)
    box_w = _randint(max(1, width // 4), max(1, width * 3 // 4), generator)
    top, left = _randint(0, height - box_h, generator), _randint(0, width - box_w, generator)
    return slice(top, top + box_h), slice(left, left + box_w)


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, dtype=torch.float32)[:, None]  # (H, 1)
    xs = torch.arange(width, dtype=torch.float32)[None, :]  # (1, W)
    return ys, xs


# -- the kinds ---------------------------------------------------------------------------------


def mask_t2v(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Everything generated (text-to-video)."""
    return _full(num_frames, height, width)


def mask_i2v(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """The first frame known (image-to-video)."""
    return _known_frames(_full(num_frames, height, width), [0])


def mask_start_frames(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """The first 2 to 4 frames known (continuing a video); never all of them."""
    known = _randint(2, max(2, min(4, num_frames - 1)), generator)
    return _known_frames(_full(num_frames, height, width), slice(0, known))


def mask_first_last(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """The first and the last frame known (first-last-frame to video)."""
    return _known_frames(_full(num_frames, height, width), [0, num_frames - 1])


def mask_second_half(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """The first half known, the rest generated (continuing a video).

    The known part ends on a latent-frame boundary of the Wan VAE (frame 0, then groups of 4), so
    its encoding holds whole known latent frames: 17 frames -> 9 known, 8 generated.
    """
    latent_frames = (num_frames - 1) // 4 + 1
    known = 1 + 4 * ((latent_frames - 1) // 2)
    return _known_frames(_full(num_frames, height, width), slice(0, min(known, num_frames - 1)))


def mask_temporal(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A random run of frames generated, the others known (interpolation / extension)."""
    first = _randint(0, num_frames - 1, generator)
    last = _randint(first, num_frames - 1, generator)
    if first == 0 and last == num_frames - 1:  # keep at least one frame known, else it is t2v
        last -= 1
    mask = torch.zeros(1, num_frames, height, width)
    mask[:, first : last + 1] = 1.0
    return mask


def mask_box(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One random box generated in every frame (inpainting a region)."""
    rows, cols = _box(height, width, generator)
    mask = torch.zeros(1, num_frames, height, width)
    mask[:, :, rows, cols] = 1.0
    return mask


def mask_box_segment(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One random box generated over a random run of frames."""
    rows, cols = _box(height, width, generator)
    first = _randint(0, num_frames - 1, generator)
    last = _randint(first, num_frames - 1, generator)
    mask = torch.zeros(1, num_frames, height, width)
    mask[:, first : last + 1, rows, cols] = 1.0
    return mask


def mask_outpaint(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Everything outside a random box generated (outpainting)."""
    return 1.0 - mask_box(num_frames, height, width, generator)


def mask_ellipse(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A random ellipse generated in every frame."""
    ys, xs = _grid(height, width)
    cy, cx = _randint(0, height - 1, generator), _randint(0, width - 1, generator)
    ry = _randint(max(1, height // 8), max(1, height // 3), generator)
    rx = _randint(max(1, width // 8), max(1, width // 3), generator)
    inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0  # (H, W)
    return inside.float().expand(1, num_frames, height, width).clone()


def mask_brush(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One to three random brush strokes (thick polylines) generated in every frame."""
    ys, xs = _grid(height, width)
    stroke = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(_randint(1, 3, generator)):
        radius = _randint(max(1, min(height, width) // 16), max(1, min(height, width) // 6), generator)
        y0, x0 = float(_randint(0, height - 1, generator)), float(_randint(0, width - 1, generator))
        for _ in range(_randint(1, 4, generator)):  # segments of the stroke
            y1, x1 = float(_randint(0, height - 1, generator)), float(_randint(0, width - 1, generator))
            # Distance of each pixel to the segment: project on it, clamp to its ends.
            dy, dx = y1 - y0, x1 - x0
            t = (((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0.0, 1.0)
            stroke |= (ys - (y0 + t * dy)) ** 2 + (xs - (x0 + t * dx)) ** 2 <= radius**2
            y0, x0 = y1, x1
    return stroke.float().expand(1, num_frames, height, width).clone()


#: kind -> (function, weight, fewest frames it needs)
MASK_KINDS: dict[str, tuple[MaskFn, float, int]] = {
    "t2v": (mask_t2v, 0.15, 1),
    "i2v": (mask_i2v, 0.25, 2),
    "start_frames": (mask_start_frames, 0.05, 3),
    "first_last": (mask_first_last, 0.10, 3),
    "temporal": (mask_temporal, 0.10, 2),
    "box": (mask_box, 0.10, 1),
    "box_segment": (mask_box_segment, 0.05, 2),
    "outpaint": (mask_outpaint, 0.05, 1),
    "ellipse": (mask_ellipse, 0.05, 1),
    "brush": (mask_brush, 0.10, 1),
    # Not drawn by default (weight 0): asked for by name, as VACE training from a latent cache does.
    "second_half": (mask_second_half, 0.0, 2),
}


def _weights(num_frames: int, kinds: Sequence[str] | Mapping[str, float] | None) -> dict[str, float]:
    """The kinds that fit ``num_frames`` with their weights."""
    if kinds is None:
        chosen = {name: weight for name, (_, weight, _) in MASK_KINDS.items()}
    elif isinstance(kinds, Mapping):
        chosen = dict(kinds)
    else:
        chosen = dict.fromkeys(kinds, 1.0)
    unknown = sorted(set(chosen) - set(MASK_KINDS))
    if unknown:
        raise ValueError(f"unknown mask kinds {unknown}; choose from {', '.join(MASK_KINDS)}")
    fitting = {k: float(w) for k, w in chosen.items() if MASK_KINDS[k][2] <= num_frames and w > 0}
    if not fitting:
        raise ValueError(f"none of the mask kinds {sorted(chosen)} works with {num_frames} frame(s)")
    return fitting


def choose_mask_kind(
    num_frames: int, generator: torch.Generator, kinds: Sequence[str] | Mapping[str, float] | None = None
) -> str:
    """Draw a kind: by :data:`MASK_KINDS` weights, uniformly among ``kinds`` names, or by a ``{kind: weight}`` map.

    Kinds that need more frames than ``num_frames`` are left out (one frame: t2v and the spatial kinds).
    """
    weights = _weights(num_frames, kinds)
    names = list(weights)
    pick = torch.multinomial(torch.tensor([weights[n] for n in names]), 1, generator=generator)
    return names[int(pick.item())]


def generate_mask(kind: str, num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A mask of one kind, ``(1, F, H, W)`` float, 1 = generate."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(MASK_KINDS)}")
    function, _, fewest = MASK_KINDS[kind]
    if num_frames < fewest:
        raise ValueError(f"mask kind {kind!r} needs at least {fewest} frames, got {num_frames}")
    return function(num_frames, height, width, generator)


def random_generate_mask(
    num_frames: int,
    height: int,
    width: int,
    generator: torch.Generator,
    kinds: Sequence[str] | Mapping[str, float] | None = None,
) -> torch.Tensor:
    """A random generate mask ``(1, F, H, W)`` float (1 = generate, 0 = known) of a randomly drawn kind."""
    kind = choose_mask_kind(num_frames, generator, kinds)
    return generate_mask(kind, num_frames, height, width, generator)
