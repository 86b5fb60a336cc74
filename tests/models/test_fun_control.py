"""The FLUX.2 and Qwen-Image Fun control side streams (VideoX-Fun's FLUX.2-dev-Fun-Controlnet-Union and
Qwen-Image-2512-Fun-Controlnet-Union): released parameter counts on the meta device, the released keys, the
release read off a file, strict loading, one-line refusals of another base's file, and the transformer with the
side stream attached against a hand-written forward of VideoX-Fun's control transformers.

No diffusers class holds these weights (diffusers' ``QwenImageControlNetModel`` is InstantX's ControlNet, another
design): the reference is VideoX-Fun's ``Flux2ControlTransformer2DModel.forward`` /
``QwenImageControlTransformer2DModel.forward``, written out below on the diffusers transformer's own modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask
from helpers import max_diff
from safetensors.torch import load_file

from videox_fun.io.files import save_safetensors
from videox_fun.models.flux2.control import Flux2Control
from videox_fun.models.flux2.tiny import build_tiny_control_file as build_flux2_control
from videox_fun.models.flux2.tiny import tiny_transformer_config as flux2_tiny_config
from videox_fun.models.flux2.transformer import Flux2Transformer
from videox_fun.models.fun_control import SideRelease, control_parameter_count, side_stream_attached
from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.qwenimage.control import QwenImageControl
from videox_fun.models.qwenimage.tiny import build_tiny_control_file as build_qwen_control
from videox_fun.models.qwenimage.tiny import tiny_transformer_config as qwen_tiny_config
from videox_fun.models.qwenimage.transformer import QwenImageTransformer

# model-facts: the released transformer configs and counts; the control releases' counts.
FLUX2 = {"patch_size": 1, "in_channels": 128, "num_layers": 8, "num_single_layers": 48, "attention_head_dim": 128,
         "num_attention_heads": 48, "joint_attention_dim": 15360, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
         "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True}  # fmt: skip
QWEN = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
        "axes_dims_rope": (16, 56, 56)}  # fmt: skip
RELEASES = {  # base: (control class, transformer class, transformer config, release, control count, count in all)
    "FLUX.2": (Flux2Control, Flux2Transformer, FLUX2, SideRelease("", 260, 4, 6144, 128), 4_116_248_576,
               36_339_529_728),
    "Qwen-Image": (QwenImageControl, QwenImageTransformer, QWEN, SideRelease("", 132, 5, 3072, 64), 1_756_206_592,
                   22_186_607_680),
}  # fmt: skip
TINY = {"FLUX.2": (Flux2Control, Flux2Transformer, flux2_tiny_config, build_flux2_control),
        "Qwen-Image": (QwenImageControl, QwenImageTransformer, qwen_tiny_config, build_qwen_control)}  # fmt: skip


@pytest.mark.parametrize("base", RELEASES)
def test_released_counts_on_the_meta_device(base):
    control_class, transformer_class, config, release, control_count, total = RELEASES[base]
    control_config = control_class.config_for(release, config, base)
    assert control_parameter_count(control_class, control_config) == control_count
    with torch.device("meta"):
        transformer = transformer_class.from_model_config(config)
    assert sum(p.numel() for p in transformer.parameters()) + control_count == total


def test_the_places_and_keys_are_the_releases():
    config = Flux2Control.config_for(RELEASES["FLUX.2"][3], FLUX2, "flux2")
    assert config["control_layers"] == [0, 2, 4, 6] and config["control_in_dim"] == 260
    with torch.device("meta"):
        state = Flux2Control.from_model_config(config).state_dict()
    assert {key.split(".")[0] for key in state} == {"control_transformer_blocks", "control_img_in"}
    assert state["control_img_in.weight"].shape == (6144, 260)
    assert "control_transformer_blocks.0.before_proj.weight" in state
    assert "control_transformer_blocks.1.before_proj.weight" not in state
    assert "control_transformer_blocks.3.after_proj.bias" in state
    assert "control_transformer_blocks.3.attn.add_q_proj.weight" in state  # a whole double block per copy
    config = QwenImageControl.config_for(RELEASES["Qwen-Image"][3], QWEN, "qwen")
    assert config["control_layers"] == [0, 12, 24, 36, 48] and config["control_in_dim"] == 132
    with torch.device("meta"):
        state = QwenImageControl.from_model_config(config).state_dict()
    assert {key.split(".")[0] for key in state} == {"control_blocks", "control_img_in"}
    assert state["control_img_in.weight"].shape == (3072, 132)
    assert "control_blocks.0.before_proj.weight" in state and "control_blocks.4.after_proj.weight" in state
    assert "control_blocks.4.img_mod.1.weight" in state


@pytest.mark.parametrize("base", TINY)
@pytest.mark.parametrize("inpaint", [True, False])
def test_the_release_is_read_off_the_file_and_loaded_strictly(tmp_path, base, inpaint):
    control_class, transformer_class, tiny_config, build = TINY[base]
    path = build(tmp_path / "control.safetensors", inpaint=inpaint, seed=1)
    release = control_class.read_release(path)  # the header alone
    latent = tiny_config()["in_channels"]
    assert (release.blocks, release.inpaint) == (2, inpaint)
    assert release.control_in_dim == (2 * latent + 4 if inpaint else latent)
    transformer = transformer_class.from_model_config(tiny_config())
    control = control_class.from_file(path, transformer)
    assert control.release == release and list(control.config.control_layers) == [0, 1]
    state = load_file(str(path))
    merged = save_safetensors({**state, **transformer.state_dict()}, tmp_path / "merged.safetensors")
    assert control_class.from_file(merged, transformer).release == release  # the base's tensors are dropped
    del state[next(key for key in state if key.endswith("1.after_proj.bias"))]
    with pytest.raises(CheckpointMismatchError, match=r"after_proj\.bias"):
        control_class.from_file(save_safetensors(state, tmp_path / "short.safetensors"), transformer)


@pytest.mark.parametrize(
    ("base", "keys", "said"),
    [
        ("FLUX.2", ["control_layers.0.after_proj.weight", "control_all_x_embedder.2-1.weight"],
         "a Z-Image Fun control file (control_all_x_embedder.*), not a FLUX.2 Fun control file"),
        ("FLUX.2", ["control_blocks.0.after_proj.weight", "control_img_in.weight"],
         "a Qwen-Image Fun control file (control_blocks.*), not a FLUX.2 Fun control file"),
        ("Qwen-Image", ["control_transformer_blocks.0.after_proj.weight", "control_img_in.weight"],
         "a FLUX.2 Fun control file (control_transformer_blocks.*), not a Qwen-Image Fun control file"),
        ("Qwen-Image", ["transformer_blocks.0.attn.to_q.weight", "img_in.weight"], "not a Qwen-Image Fun control"),
    ],
)  # fmt: skip
def test_another_bases_file_is_one_line(tmp_path, base, keys, said):
    path = save_safetensors({key: torch.zeros(2, 2) for key in keys}, tmp_path / "other.safetensors")
    control_class = TINY[base][0]
    for read in (control_class.read_release, lambda p: control_class.from_file(p, None)):
        with pytest.raises(ValueError, match=re.escape(said)) as caught:
            read(path)
        assert len(str(caught.value).splitlines()) == 1


def test_a_control_file_of_another_size_is_refused():
    with pytest.raises(ValueError, match=r"64 wide, the transformer.s 6144: a control file for another FLUX\.2 size"):
        Flux2Control.config_for(SideRelease("", 260, 4, 64, 128), FLUX2, "small.safetensors")
    with pytest.raises(ValueError, match="5 control blocks do not space evenly over 8 main blocks"):
        Flux2Control.config_for(SideRelease("", 260, 5, 6144, 128), FLUX2, "odd.safetensors")
    with pytest.raises(ValueError, match="a control context of 100 channels; Qwen-Image reads 64"):
        QwenImageControl.config_for(SideRelease("", 100, 5, 3072, 64), QWEN, "odd.safetensors")


# -- the side stream against VideoX-Fun's control forward ---------------------------------------------------------
def vxf_control(control, x, context, inputs) -> list[torch.Tensor]:
    """VideoX-Fun's ``forward_control``: the copies on the main stream's embedded tokens, their text stream running
    on, one ``after_proj`` hint each."""
    c, hints, text = control.control_img_in(context), [], inputs["encoder_hidden_states"]
    for index, block in enumerate(control.copies):
        c = block.before_proj(c) + x if index == 0 else c
        text, c = block(hidden_states=c, **{**inputs, "encoder_hidden_states": text})
        hints.append(block.after_proj(c))
    return hints


def vxf_main(blocks, control, x, inputs, hints, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """VideoX-Fun's main blocks: hint ``n`` times the scale added after block ``control_layers[n]``."""
    places = list(control.config.control_layers)
    text = inputs["encoder_hidden_states"]
    for index, block in enumerate(blocks):
        text, x = block(hidden_states=x, **{**inputs, "encoder_hidden_states": text})
        if index in places:
            x = x + hints[places.index(index)] * scale
    return text, x


def vxf_flux2(model, control, hidden, text, t, guidance, img_ids, txt_ids, context, scale) -> torch.Tensor:
    """VideoX-Fun's ``Flux2ControlTransformer2DModel.forward`` on diffusers' FLUX.2 modules."""
    temb = model.time_guidance_embed(t * 1000, guidance * 1000)
    x, text = model.x_embedder(hidden), model.context_embedder(text)
    image_rope, text_rope = model.pos_embed(img_ids), model.pos_embed(txt_ids)
    rope = (torch.cat([text_rope[0], image_rope[0]]), torch.cat([text_rope[1], image_rope[1]]))
    inputs = {"encoder_hidden_states": text, "temb_mod_img": model.double_stream_modulation_img(temb),
              "temb_mod_txt": model.double_stream_modulation_txt(temb), "image_rotary_emb": rope}  # fmt: skip
    hints = vxf_control(control, x, context, inputs)
    text, x = vxf_main(model.transformer_blocks, control, x, inputs, hints, scale)
    joint = torch.cat([text, x], dim=1)
    for block in model.single_transformer_blocks:
        joint = block(joint, None, model.single_stream_modulation(temb), rope)
    return model.proj_out(model.norm_out(joint[:, text.shape[1] :], temb))


def vxf_qwen(model, control, hidden, text, mask, t, shapes, context, scale) -> torch.Tensor:
    """VideoX-Fun's ``QwenImageControlTransformer2DModel.forward`` on diffusers' Qwen-Image modules."""
    x = model.img_in(hidden)
    text = model.txt_in(model.txt_norm(text))
    length, _, mask = compute_text_seq_len_from_mask(text, mask)
    temb = model.time_text_embed(t, x)
    rope = model.pos_embed(shapes, max_txt_seq_len=length, device=x.device)
    inputs = {"encoder_hidden_states": text, "encoder_hidden_states_mask": mask, "temb": temb,
              "image_rotary_emb": rope}  # fmt: skip
    hints = vxf_control(control, x, context, inputs)
    _, x = vxf_main(model.transformer_blocks, control, x, inputs, hints, scale)
    return model.proj_out(model.norm_out(x, temb))


def flux2_case(tmp_path) -> tuple[torch.nn.Module, Flux2Control, Callable, Callable, torch.Tensor]:
    """A tiny FLUX.2 transformer and control, a plain call, VideoX-Fun's call, and a control context."""
    torch.manual_seed(0)
    model = Flux2Transformer.from_model_config(flux2_tiny_config()).eval()
    control = Flux2Control.from_file(build_flux2_control(tmp_path / "c.safetensors", seed=2), model)
    hidden, text = torch.randn(1, 16, 128), torch.randn(1, 5, 48)
    t, guidance = torch.tensor([0.6]), torch.tensor([4.0])
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(4), torch.arange(4), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(5))
    plain = lambda: model(hidden, text, t, img_ids, txt_ids, guidance, return_dict=False)[0]  # noqa: E731
    vxf = lambda context, scale: vxf_flux2(model, control, hidden, text, t, guidance, img_ids, txt_ids, context,  # noqa: E731
                                           scale)  # fmt: skip
    return model, control, plain, vxf, torch.randn(1, 16, 260)


def qwen_case(tmp_path) -> tuple[torch.nn.Module, QwenImageControl, Callable, Callable, torch.Tensor]:
    """A tiny Qwen-Image transformer and control, a plain call (batch of 2, as batched CFG), VideoX-Fun's call and
    a control context."""
    torch.manual_seed(0)
    model = QwenImageTransformer.from_model_config(qwen_tiny_config()).eval()
    control = QwenImageControl.from_file(build_qwen_control(tmp_path / "c.safetensors", seed=2), model)
    hidden, text = torch.randn(2, 16, 64), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    t, shapes = torch.tensor([0.6, 0.6]), [[(1, 4, 4)]] * 2
    plain = lambda: model(hidden, text, mask, t, shapes, return_dict=False)[0]  # noqa: E731
    vxf = lambda context, scale: vxf_qwen(model, control, hidden, text, mask, t, shapes, context, scale)  # noqa: E731
    return model, control, plain, vxf, torch.randn(1, 16, 132)


@pytest.mark.parametrize("case", [flux2_case, qwen_case], ids=["FLUX.2", "Qwen-Image"])
@torch.no_grad()
def test_the_attached_side_stream_is_videox_funs_forward(tmp_path, case):
    model, control, plain, vxf, context = case(tmp_path)
    base = plain()
    with side_stream_attached(model, control, context, 0.75):
        steered = plain()
    expected = vxf(context, 0.75)
    print(f"{case.__name__}: max abs difference {max_diff(steered, expected):.3g} (output up to "
          f"{expected.abs().max():.3g}); moved from the base by {max_diff(steered, base):.3g}")  # fmt: skip
    assert max_diff(steered, expected) <= 1e-5
    assert max_diff(steered, base) > 1e-3  # random projections steer
    assert max_diff(plain(), base) == 0.0  # detached when the context ends
    for block in control.copies:
        block.after_proj.weight.zero_()
        block.after_proj.bias.zero_()
    with side_stream_attached(model, control, context, 0.75):
        assert max_diff(plain(), base) == 0.0  # every after_proj zero: the base model's output exactly
