"""Wan2.2-Animate's relighting LoRA, in the two forms the release ships, merged as peft applies it.

The release holds ``relighting_lora.ckpt`` (a pickle: ``{"state_dict": peft's state dict}``, rank 128, alpha 128,
which the released code loads with ``set_peft_model_state_dict`` after ``add_adapter``) and
``relighting_lora/adapter_model.safetensors`` beside its ``adapter_config.json`` (``PeftModel.save_pretrained``'s
``base_model.model.`` keys; peft keeps the alpha in the config). The reference is peft itself: the same adapter
injected into a tiny Animate model of random weights, run unmerged; ours merges the file with ``merge_lora``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import max_diff
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from test_animate import inputs, random_animate

from videox_fun.models.lora import merge_lora, read_lora_file

# The attention and MLP linears of the main blocks, as a relighting adapter adapts them.
TARGETS = r"blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)|blocks\.\d+\.ffn\.(0|2)"


def peft_adapted(rank: int, alpha: int) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny Animate model, a copy with a random peft LoRA injected (unmerged), and the adapter's state dict."""
    base = random_animate(seed=3)
    adapted = inject_adapter_in_model(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False), copy.deepcopy(base)
    ).eval()
    torch.manual_seed(4)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)  # (rank, in) and (out, rank): a visible but small update
    return base, adapted, get_peft_model_state_dict(adapted)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    """The model's prediction on the fixed inputs (batch 1)."""
    with torch.no_grad():
        return model(**inputs(batch=1))


@pytest.mark.parametrize("form", ["ckpt", "adapter_folder"])
def test_the_relighting_lora_merges_as_peft_applies_it(tmp_path, form):
    rank, alpha = (4, 4) if form == "ckpt" else (4, 8)  # the .ckpt has no alpha: the release's is its rank
    base, adapted, state = peft_adapted(rank, alpha)
    if form == "ckpt":
        path = tmp_path / "relighting_lora.ckpt"
        torch.save({"state_dict": state}, path)
    else:
        path = tmp_path / "relighting_lora" / "adapter_model.safetensors"
        path.parent.mkdir()
        save_file({f"base_model.model.{key}": value.contiguous() for key, value in state.items()}, str(path))
        (path.parent / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha}))
    expected, plain = outputs(adapted), outputs(base)
    merged = copy.deepcopy(base)
    updated = merge_lora(merged, path)
    gap, effect = max_diff(outputs(merged), expected), max_diff(plain, expected)
    print(f"\n{form}: {len(updated)} layers merged; vs peft's unmerged adapter max diff {gap:.2e} (the LoRA moves "
          f"the output by {effect:.3f})")  # fmt: skip
    assert len(updated) == len(state) // 2
    assert gap <= 1e-4 and effect > 1e-2


def test_per_module_alphas_of_a_peft_config_fail_in_one_line(tmp_path):
    _, _, state = peft_adapted(4, 4)
    path = tmp_path / "adapter_model.safetensors"
    save_file({f"base_model.model.{key}": value.contiguous() for key, value in state.items()}, str(path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4, "alpha_pattern": {"q": 8}}))
    with pytest.raises(ValueError, match="rank_pattern / alpha_pattern are not read"):
        read_lora_file(path)
