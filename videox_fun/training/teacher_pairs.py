"""The teacher's own samples for distillation's regression term (``--distill_regression_path``).

DMD (Yin et al., 2024) adds to its distribution-matching loss a regression of the student's sample onto
the teacher's sample from the same noise: pairs (noise, the teacher's output) made once by the teacher's
full sampler (its steps and guidance, as ``generate`` samples). The regression ties each noise to the
video the teacher makes of it, where distribution matching alone only asks for videos like the teacher's.

A pairs file is a safetensors file: ``noise`` and ``target`` (N, *latent shape) fp32, the starting noise of
each sample (the pipeline's seeded draw, :func:`~videox_fun.pipelines.common.seeded_noise`, of the final
latents' shape) and its final latents; its metadata holds ``prompts`` (a JSON list of N prompts) and
``size`` (a JSON [frames, height, width] of the videos).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from ..api import LoadedPipeline

Size = tuple[int, int, int]  # frames, height, width


@dataclass
class TeacherPairs:
    """N noises and the teacher's final latents from them, with their prompts and the videos' size."""

    noise: torch.Tensor  # (N, *latent shape)
    target: torch.Tensor  # (N, *latent shape)
    prompts: list[str]
    size: Size

    def __post_init__(self) -> None:
        count = len(self.prompts)
        if not count or self.noise.shape != self.target.shape or self.noise.shape[0] != count:
            raise ValueError(
                f"teacher pairs: noise {tuple(self.noise.shape)}, target {tuple(self.target.shape)} and {count} "
                "prompts do not match (N pairs need N noises, N targets of their shape and N prompts)"
            )
        if not (bool(self.noise.isfinite().all()) and bool(self.target.isfinite().all())):
            raise ValueError("teacher pairs hold NaN or infinite values: make them again")

    def __len__(self) -> int:
        return len(self.prompts)

    def save(self, path: str | Path) -> Path:
        """Write the pairs to ``path`` (safetensors, written whole or not at all)."""
        from safetensors.torch import save_file

        from ..io.files import atomic_path

        metadata = {"prompts": json.dumps(self.prompts), "size": json.dumps(list(self.size))}
        tensors = {"noise": self.noise.float().contiguous(), "target": self.target.float().contiguous()}
        with atomic_path(Path(path)) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherPairs:
        """The pairs of a file :meth:`save` wrote; one-line errors naming the file for anything else."""
        from safetensors import SafetensorError, safe_open

        from ..models.loading import check_readable, unreadable_safetensors

        path = Path(path)
        check_readable(path, "teacher pairs file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = set(handle.keys())  # the handle has no __contains__
                tensors = {name: handle.get_tensor(name) for name in ("noise", "target") if name in names}
        except SafetensorError as err:
            raise unreadable_safetensors(path, err, "teacher pairs") from err
        try:
            prompts, size = json.loads(metadata["prompts"]), json.loads(metadata["size"])
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{path}: not a teacher pairs file (its metadata lacks prompts and size)") from None
        if set(tensors) != {"noise", "target"}:
            raise ValueError(f"{path}: a teacher pairs file holds tensors noise and target, not {sorted(tensors)}")
        return cls(tensors["noise"], tensors["target"], [str(p) for p in prompts], tuple(int(s) for s in size))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(noise (B, ...), target (B, ...), prompts) of the pairs at ``indices``."""
        chosen = torch.as_tensor(list(indices), dtype=torch.long)
        return self.noise[chosen], self.target[chosen], [self.prompts[i] for i in indices]


def make_teacher_pairs(
    loaded: LoadedPipeline,
    prompts: Sequence[str],
    count: int,
    seed: int,
    size: Size,
    progress: bool = True,
    **sampling: Any,
) -> TeacherPairs:
    """``count`` samples of the teacher (a loaded pipeline at its own steps and guidance, unless ``sampling`` sets
    GenerationRequest's steps / guidance_scale / sampler / shift) in text-to-video mode: prompt i is
    ``prompts[i % len(prompts)]``, seed ``seed + i``, at ``size`` (frames, height, width)."""
    from ..api import GenerationRequest
    from ..pipelines.common import seeded_noise

    if count < 1 or not prompts:
        raise ValueError(f"teacher pairs: need a count of 1 or more and prompts (got {count}, {len(prompts)} prompts)")
    frames, height, width = size
    noises, targets, used = [], [], []
    for i in tqdm(range(count), desc="teacher samples", disable=not progress):
        prompt = prompts[i % len(prompts)]
        request = GenerationRequest(prompt=prompt, seed=seed + i, mode="t2v", num_frames=frames, height=height,
                                    width=width, **sampling)  # fmt: skip
        latents = loaded.generate(request, progress=False).latents.float()  # (1, *latent shape)
        noises.append(seeded_noise(tuple(latents.shape), seed + i, "cpu"))  # the draw the sampler started from
        targets.append(latents.cpu())
        used.append(prompt)
    return TeacherPairs(torch.cat(noises), torch.cat(targets), used, (frames, height, width))
