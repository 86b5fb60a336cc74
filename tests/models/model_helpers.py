"""Helpers of the model tests: a tiny transformer with every parameter random, and its diffusers twin."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel as DiffusersWan
from helpers import seeded_transformer

from videox_fun.models.wan.keys import original_config_to_diffusers
from videox_fun.models.wan.transformer import WanTransformer3DModel


def random_model(config: dict, seed: int = 0) -> WanTransformer3DModel:
    """A tiny model whose every parameter (norms and modulation too) is random."""
    model = seeded_transformer(config, seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def diffusers_twin(model: WanTransformer3DModel, tmp_path: Path) -> DiffusersWan:
    """diffusers' own model, loaded from our original-format file through ``from_single_file``."""
    model.save_original(tmp_path / "ours")
    config_dir = tmp_path / "diffusers_config"
    config_dir.mkdir()
    config = {"_class_name": "WanTransformer3DModel", **original_config_to_diffusers(dict(model.config))}
    (config_dir / "config.json").write_text(json.dumps(config))
    single_file = tmp_path / "ours" / "diffusion_pytorch_model.safetensors"
    return DiffusersWan.from_single_file(str(single_file), config=str(config_dir), torch_dtype=torch.float32).eval()
