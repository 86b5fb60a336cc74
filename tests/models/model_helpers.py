"""Helpers of the model tests: a tiny transformer with every parameter random."""

from __future__ import annotations

import torch
from helpers import seeded_transformer

from videox_fun.models.wan.transformer import WanTransformer3DModel


def random_model(config: dict, seed: int = 0) -> WanTransformer3DModel:
    """A tiny model whose every parameter (norms and modulation too) is random."""
    model = seeded_transformer(config, seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model
