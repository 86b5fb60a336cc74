"""Merging LoRA files into the transformer: the layouts people share, diffusers' fuse as reference, fp8."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from helpers import diffusers_twin
from model_helpers import random_model
from safetensors.torch import save_file

from videox_fun.models.lora import merge_lora, read_lora_file
from videox_fun.models.wan.keys import original_to_diffusers_keys
from videox_fun.models.wan.variants import tiny_config
from videox_fun.runtime.fp8 import quantize_to_fp8
from videox_fun.training.lora import PREFIX, add_lora, load_lora, save_lora_file

TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")


def trained_lora(model, path, rank: int = 4, alpha: float = 8.0):
    """A LoRA file for ``model`` with random (non-zero) down and up weights, in our layout."""
    adapted = copy.deepcopy(model)
    add_lora(adapted, rank=rank, alpha=alpha, targets=TARGETS)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    return save_lora_file(adapted.state_dict(), path, rank=rank, alpha=alpha)


def inputs(text_len: int = 512):
    torch.manual_seed(1)
    x, t = torch.randn(1, 16, 2, 4, 6), torch.tensor([600.0])
    context = torch.nn.functional.pad(torch.randn(1, 7, 32), (0, 0, 0, text_len - 7))
    return x, t, context


def run(model, x, t, context):
    with torch.no_grad():
        return model(x, t, context)


def test_merge_equals_the_unmerged_adapter_and_diffusers_fuse(tmp_path):
    base = random_model(tiny_config("t2v", text_len=512))
    path = trained_lora(base, tmp_path / "lora.safetensors")
    x, t, context = inputs()

    merged = copy.deepcopy(base)
    assert len(merge_lora(merged, path, scale=0.7)) == 2 * 10  # 2 blocks x 10 targeted linears
    adapter = copy.deepcopy(base)
    load_lora(adapter, path, scale=0.7)
    ours = run(merged, x, t, context)
    assert (ours - run(base, x, t, context)).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(ours, run(adapter, x, t, context), atol=1e-5, rtol=1e-5)

    pipe = DiffusersWanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                                transformer=diffusers_twin(base, tmp_path))  # fmt: skip
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.7)
    with torch.no_grad():
        theirs = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    assert (ours - theirs).abs().max().item() <= 1e-4


def rename(tensors: dict, layout: str) -> dict:
    """Our file's tensors under the kohya (VideoX-Fun) or diffusers key layout."""
    out = {}
    for key, tensor in tensors.items():
        module, _, tail = key.removeprefix(PREFIX).rpartition(".lora_") if ".lora_" in key else (None, "", "")
        if module is None:
            module, tail = key.removeprefix(PREFIX).removesuffix(".alpha"), "alpha"
        if layout == "kohya":
            part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight", "alpha": "alpha"}[tail]
            out[f"lora_unet__{module.replace('.', '_')}.{part}"] = tensor
        elif tail != "alpha":  # diffusers files carry no alpha (our test LoRA then has alpha = rank)
            theirs = next(iter(original_to_diffusers_keys({f"{module}.weight": tensor})))
            out[f"transformer.{theirs.removesuffix('.weight')}.lora_{tail}"] = tensor
    return out


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_kohya_and_diffusers_layouts_merge_like_ours(layout, tmp_path):
    base = random_model(tiny_config("t2v"))
    path = trained_lora(base, tmp_path / "ours.safetensors", rank=4, alpha=4.0)  # alpha = rank: same as none
    tensors, _ = read_lora_file(path)
    other = tmp_path / f"{layout}.safetensors"
    save_file(rename(tensors, layout), str(other))
    expected, merged = copy.deepcopy(base), copy.deepcopy(base)
    merge_lora(expected, path)
    assert len(merge_lora(merged, other)) == 20
    for (name, theirs), ours in zip(merged.state_dict().items(), expected.state_dict().values(), strict=True):
        torch.testing.assert_close(theirs, ours, msg=name)


def test_negative_scale_takes_a_merge_out_again(tmp_path):
    base = random_model(tiny_config("t2v"))
    path = trained_lora(base, tmp_path / "lora.safetensors")
    model = copy.deepcopy(base)
    merge_lora(model, path, 0.8)
    merge_lora(model, path, -0.8)
    for restored, original in zip(model.parameters(), base.parameters(), strict=True):
        torch.testing.assert_close(restored, original, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scaled", [False, True])
def test_merge_into_fp8_layers_matches_quantising_the_merged_model(scaled, tmp_path):
    base = random_model(tiny_config("t2v"))
    path = trained_lora(base, tmp_path / "lora.safetensors")
    x, t, context = inputs(base.config.text_len)
    merged_then_fp8 = copy.deepcopy(base)
    merge_lora(merged_then_fp8, path)
    quantize_to_fp8(merged_then_fp8, scaled=scaled, per_channel=scaled)
    fp8_then_merged = quantize_to_fp8(copy.deepcopy(base), scaled=scaled, per_channel=scaled)
    merge_lora(fp8_then_merged, path)
    reference = run(merged_then_fp8, x, t, context)
    gap = (run(fp8_then_merged, x, t, context) - reference).abs().max() / reference.abs().max()
    assert gap < 0.05  # two roundings of the same weights instead of one


def test_keys_that_adapt_nothing_here_fail_naming_them(tmp_path):
    base = random_model(tiny_config("t2v"))
    tensors, _ = read_lora_file(trained_lora(base, tmp_path / "lora.safetensors"))
    text_encoder = {**tensors, "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.zeros(4, 8)}
    save_file(text_encoder, str(tmp_path / "te.safetensors"))
    with pytest.raises(ValueError, match="lora_te_encoder_block_0"):
        merge_lora(base, tmp_path / "te.safetensors")
    half = {k: v for k, v in tensors.items() if k != f"{PREFIX}blocks.1.ffn.2.lora_B.weight"}
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.2"):
        merge_lora(base, tmp_path / "half.safetensors")
    with pytest.raises(FileNotFoundError):
        merge_lora(base, tmp_path / "missing.safetensors")


def test_two_expert_models_take_a_lora_per_expert_as_videox_fun_does(tmp_path):
    from videox_fun.cli import build_parser
    from videox_fun.models.wan.tiny import build_tiny_model_folder
    from videox_fun.pipelines.wan import WanPipeline
    from videox_fun.runtime.options import apply_weight_options

    folder = build_tiny_model_folder(tmp_path / "a14b", "t2v", boundary=0.875)
    path = trained_lora(WanPipeline.from_pretrained(folder).transformer, tmp_path / "lora.safetensors")
    for flags, changed in ((["--lora-high-path", str(path)], "high"), (["--lora-path", str(path)], "low")):
        pipe, reference = WanPipeline.from_pretrained(folder), WanPipeline.from_pretrained(folder)
        applied = apply_weight_options(pipe, build_parser().parse_args(["generate", "--prompt", "x", *flags]))
        assert list(applied) == (["loras_high"] if changed == "high" else ["loras"])
        high_moved = not torch.equal(pipe.transformer.blocks[0].self_attn.q.weight,
                                     reference.transformer.blocks[0].self_attn.q.weight)  # fmt: skip
        low_moved = not torch.equal(pipe.transformer_2.blocks[0].self_attn.q.weight,
                                    reference.transformer_2.blocks[0].self_attn.q.weight)  # fmt: skip
        assert (high_moved, low_moved) == (changed == "high", changed == "low")
    single = WanPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "single", "t2v"))
    with pytest.raises(ValueError, match="two-expert"):
        apply_weight_options(
            single, build_parser().parse_args(["generate", "--prompt", "x", "--lora-high-path", str(path)])
        )
