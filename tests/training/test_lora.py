"""LoRA through peft: targets, the shared file format, loading it back."""

from __future__ import annotations

import pytest
import torch
from helpers import seeded_transformer

from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config
from videox_fun.training.lora import add_lora, load_lora, lora_module_names, read_lora_file, save_lora_file

TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")


def tiny() -> WanTransformer3DModel:
    return seeded_transformer(tiny_config("t2v", text_dim=32))


def test_targets_and_skip_names():
    model = tiny()
    names = lora_module_names(model, TARGETS)
    assert len(names) == 2 * (4 + 4 + 2)  # per block: self q,k,v,o + cross q,k,v,o + ffn.0, ffn.2
    skipped = lora_module_names(model, TARGETS, skip=["cross_attn", "blocks.1."])
    assert skipped == ["blocks.0.self_attn.q", "blocks.0.self_attn.k", "blocks.0.self_attn.v", "blocks.0.self_attn.o",
                       "blocks.0.ffn.0", "blocks.0.ffn.2"]  # fmt: skip
    with pytest.raises(ValueError, match="no Linear layer matches"):
        lora_module_names(model, ("nothing",))


def test_lora_starts_as_a_no_op_trains_only_adapters_and_round_trips(tmp_path):
    model, reference = tiny(), tiny()
    add_lora(model, rank=4, alpha=8.0, targets=TARGETS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([400.0]), torch.randn(1, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context), reference(x, t, context))  # B = 0 at start
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.05)
        trained = model(x, t, context)
    path = save_lora_file(model.state_dict(), tmp_path / "lora.safetensors", rank=4, alpha=8.0)
    tensors, metadata = read_lora_file(path)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8.0"
    assert all(k.startswith("diffusion_model.blocks.") for k in tensors)
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_A.weight"].shape == (4, 24)
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_B.weight"].shape == (48, 4)
    loaded = tiny()
    load_lora(loaded, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, context), trained)


def test_a_lora_for_other_modules_fails_naming_them(tmp_path):
    model = tiny()
    add_lora(model, rank=2, alpha=2.0, targets=("q",))
    path = save_lora_file(model.state_dict(), tmp_path / "lora.safetensors", rank=2, alpha=2.0)
    smaller = WanTransformer3DModel.from_config(tiny_config("t2v", text_dim=32, num_layers=1))
    with pytest.raises(ValueError, match=r"blocks\.1\.cross_attn\.q"):
        load_lora(smaller, path)
