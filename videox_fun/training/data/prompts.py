"""Prompts-only data for reward fine-tuning (``--prompt_path``): the prompts, their batches, exact resume.

Reward training samples its videos, so a sample is one prompt. :class:`PromptDataset` reads them
(a ``.txt`` file with one prompt per line, or a ``.json`` list / ``.jsonl`` lines of strings or of
objects with a ``prompt`` or ``text`` field, as VideoX-Fun's ``--prompt_path``), and
:class:`PromptBatchSampler` is the trainer's :class:`BucketBatchSampler` with every prompt in one
bucket: the same seeded order per epoch, the same state (epoch, batches done) and so the same exact
resume as the video modes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .buckets import BucketBatchSampler, BucketKey

PROMPT_KEY = BucketKey("prompt", 0, 0, 0)  # every prompt shares one bucket: no size to group by
PROMPT_FIELDS = ("prompt", "text")  # the fields of a JSON entry that hold its prompt, in order


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of ``path`` (.txt: one per non-empty line; .json: a list; .jsonl: one entry per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompt_path {path} is not a file; give a .txt (one prompt per line) or a .json list")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        entries = _json(text, path)
        if not isinstance(entries, list):
            raise ValueError(f"--prompt_path {path} must hold a JSON list of prompts")
    elif path.suffix == ".jsonl":
        entries = [_json(line, path) for line in text.splitlines() if line.strip()]
    else:
        entries = text.splitlines()
    prompts = [p for p in (_prompt(entry, path) for entry in entries) if p]
    if not prompts:
        raise ValueError(f"--prompt_path {path} holds no prompt")
    return prompts


def _json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--prompt_path {path}: not JSON ({err.msg}, line {err.lineno})") from None


def _prompt(entry: Any, path: Path) -> str:
    """The prompt of one entry: a string, or the ``prompt`` / ``text`` field of an object; stripped."""
    if isinstance(entry, dict):
        entry = next((entry[k] for k in PROMPT_FIELDS if k in entry), None)
    if not isinstance(entry, str):
        raise ValueError(f"--prompt_path {path}: each entry must be a string or have a 'prompt' field, got {entry!r}")
    return entry.strip()


class PromptDataset(Dataset):
    """The prompts of ``--prompt_path``; item ``i`` is ``{"text": prompt, "index": i}``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.prompts = load_prompts(path)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.prompts[index], "index": index}

    def bucket_keys(self) -> list[BucketKey]:
        """One bucket for every prompt (the sampler's interface)."""
        return [PROMPT_KEY] * len(self.prompts)


class PromptBatchSampler(BucketBatchSampler):
    """Batches of prompt indices: the seeded order of :class:`BucketBatchSampler`, no size plan to draw."""

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:  # type: ignore[override]
        """Every batch of an epoch (default: the current one) as index lists."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._groups(epoch))  # type: ignore[assignment]
        return self._cache[1]  # type: ignore[return-value]


def collate_prompts(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: the prompts (list) and their indices (B,)."""
    return {"text": [s["text"] for s in samples], "index": torch.tensor([s["index"] for s in samples])}
