"""The Wan2.2-Animate transformer: parity with diffusers' WanAnimateTransformer3DModel, the released size, the
released key names, strict loading and the original-layout round trip.

Parity: diffusers' own ``WanAnimateTransformer3DModel`` reads our original-layout file through its single-file
converter (the one it uses for the Wan-AI release); on a tiny random config (every parameter random, the motion
encoder at the released 512 x 512 crops) the two outputs differ by at most 1e-4 in fp32.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import diffusers_animate_twin, max_diff
from safetensors.torch import load_file, save_file

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.animate import WanAnimateTransformer3DModel
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import PRESETS, TINY_RELEASED_FACE_CROPS, tiny_config
from videox_fun.runtime.cache import FirstBlockCache

CROP = 512  # the released face-crop size, which diffusers' reader of the release expects


def random_animate(seed: int = 0, **overrides) -> WanAnimateTransformer3DModel:
    """A tiny Animate model (4 layers, face blocks after layers 0 and 2) whose every parameter is random.

    The motion encoder's weights are drawn at unit scale, as it stores them (StyleGAN's equalised learning rate
    scales them when used): at 0.2 its eight layers would shrink the crop's part of the motion vector below fp32's
    resolution beside the biases, and the face would not reach the output.
    """
    torch.manual_seed(seed)
    config = tiny_config("animate", **{**TINY_RELEASED_FACE_CROPS, **overrides})
    model = WanAnimateTransformer3DModel.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            unit = name.startswith("motion_encoder.") and name.endswith(".weight")
            param.normal_(0.0, 1.0 if unit else 0.2)
    return model


def face_crops(batch: int, frames: int) -> torch.Tensor:
    """Smooth random crops (B, 3, T, 512, 512) in [-1, 1]: 8 x 8 random images upsampled (the encoder's blur and
    downsampling average pixel noise away, as they would any texture finer than a face's features)."""
    coarse = torch.rand(batch * frames, 3, 8, 8) * 2 - 1
    crops = torch.nn.functional.interpolate(coarse, size=(CROP, CROP), mode="bilinear", align_corners=False)
    return crops.unflatten(0, (batch, frames)).transpose(1, 2)


def inputs(batch: int = 2, frames: int = 3, height: int = 8, width: int = 10) -> dict[str, torch.Tensor]:
    """Latents (B, 16, F, H, W) whose frame 0 is the reference, timesteps, text (B, 20, 32), conditioning channels
    y (B, 20, F, H, W), CLIP tokens (B, 257, 1280), pose latents (B, 16, F - 1, H, W) and face crops
    (B, 3, 4 (F - 2) + 1, 512, 512) in [-1, 1]."""
    torch.manual_seed(1)
    return {
        "x": torch.randn(batch, 16, frames, height, width),
        "t": torch.tensor([999.0, 250.0][:batch]),
        "context": torch.randn(batch, 20, 32),
        "clip_fea": torch.randn(batch, 257, 1280),
        "y": torch.randn(batch, 20, frames, height, width),
        "pose_latents": torch.randn(batch, 16, frames - 1, height, width),
        "face_pixel_values": face_crops(batch, 4 * (frames - 2) + 1),
    }


def test_matches_diffusers_animate_with_same_weights(tmp_path):
    # diffusers' attention splits its context at (length - 512): the text must be 512 tokens there, so our
    # model is built with the released text_len and diffusers is given the zero-padded prompt.
    model = random_animate(text_len=512)
    reference = diffusers_animate_twin(model, tmp_path)
    given = inputs()
    with torch.no_grad():
        ours = model(**given)
        padded = torch.nn.functional.pad(given["context"], (0, 0, 0, 512 - given["context"].shape[1]))
        theirs = reference(
            torch.cat([given["x"], given["y"]], dim=1),
            given["t"],
            padded,
            encoder_hidden_states_image=given["clip_fea"],
            pose_hidden_states=given["pose_latents"],
            face_pixel_values=given["face_pixel_values"],
            return_dict=False,
        )[0]
    difference = max_diff(ours, theirs)
    largest = ours.abs().max().item()
    print(f"Wan-Animate vs diffusers, fp32, batch 2: max |difference| {difference:.3g} (|output| <= {largest:.3g})")
    assert ours.shape == given["x"].shape
    assert difference <= 1e-4


def test_pose_and_face_drive_the_output():
    model = random_animate()
    given = inputs(batch=1)
    with torch.no_grad():
        base = model(**given)
        other_pose = model(**{**given, "pose_latents": torch.randn_like(given["pose_latents"])})
        blank_face = model(**{**given, "face_pixel_values": -torch.ones_like(given["face_pixel_values"])})
    assert max_diff(base, other_pose) > 1e-2
    assert max_diff(base, blank_face) > 1e-2


def test_released_parameter_count_and_parts():
    with torch.device("meta"):
        model = WanAnimateTransformer3DModel.from_config(PRESETS["Wan2.2-Animate-14B"])

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(model) == 17_274_816_884
    parts = {name: count(getattr(model, name)) for name in ("face_adapter", "motion_encoder", "face_encoder")}
    assert parts == {"face_adapter": 839_026_688, "motion_encoder": 22_736_436, "face_encoder": 17_842_176}
    assert count(model.pose_patch_embedding) == 332_800 and count(model.img_emb) == 8_211_200
    assert model.face_layers == [0, 5, 10, 15, 20, 25, 30, 35]


def test_released_key_names_and_shapes():
    with torch.device("meta"):
        model = WanAnimateTransformer3DModel.from_config(PRESETS["Wan2.2-Animate-14B"])
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    expected = {
        "pose_patch_embedding.weight": (5120, 16, 1, 2, 2),
        "motion_encoder.enc.net_app.convs.0.0.weight": (32, 3, 1, 1),
        "motion_encoder.enc.net_app.convs.0.1.bias": (1, 32, 1, 1),  # stored 4-D, as released
        "motion_encoder.enc.net_app.convs.7.conv2.0.kernel": (4, 4),  # the blur taps, saved in the release
        "motion_encoder.enc.net_app.convs.7.skip.1.weight": (512, 512, 1, 1),
        "motion_encoder.enc.net_app.convs.8.weight": (512, 512, 4, 4),
        "motion_encoder.enc.fc.4.weight": (20, 512),
        "motion_encoder.dec.direction.weight": (512, 20),
        "face_encoder.conv1_local.conv.weight": (4096, 512, 3),
        "face_encoder.padding_tokens": (1, 1, 1, 5120),
        "face_adapter.fuser_blocks.7.linear1_kv.weight": (10240, 5120),
        "face_adapter.fuser_blocks.7.q_norm.weight": (128,),
        "img_emb.proj.1.weight": (1280, 1280),
        "blocks.39.cross_attn.k_img.weight": (5120, 5120),
        "patch_embedding.weight": (5120, 36, 1, 2, 2),
    }
    assert {name: shapes.get(name) for name in expected} == expected
    assert "face_adapter.fuser_blocks.8.linear2.weight" not in shapes
    assert not any(name.startswith(("ref_conv", "control_adapter")) for name in shapes)


def test_original_folder_round_trip_is_exact(tmp_path):
    model = random_animate()
    model.save_original(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "WanAnimateModel" and config["model_type"] == "animate"
    assert "add_ref_conv" not in config
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)  # the class is read off the config
    assert isinstance(loaded, WanAnimateTransformer3DModel)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    given = inputs(batch=1)
    with torch.no_grad():
        # Not bitwise: safetensors' tensors sit at unaligned addresses, where the CPU matmul takes another path.
        assert max_diff(loaded(**given), model(**given)) <= 1e-5


@pytest.mark.parametrize("model_type", [None, "i2v"])
def test_the_weights_say_animate_whatever_the_config(model_type, tmp_path):
    # The released config.json's model_type is not known here; VideoX-Fun's class hard-codes i2v. The motion
    # encoder's key makes it an Animate checkpoint either way.
    model = random_animate()
    model.save_original(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("model_type")
    if model_type is not None:
        config["model_type"] = model_type
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert isinstance(loaded, WanAnimateTransformer3DModel) and loaded.config.model_type == "animate"


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("drop", r"missing keys: .*face_adapter\.fuser_blocks\.1\.linear1_kv\.weight"),
        ("drop_kernel", r"missing keys: .*convs\.3\.skip\.0\.kernel"),
        ("add", r"unexpected keys: .*face_adapter\.fuser_blocks\.2\.linear2\.weight"),
        ("reshape", r"mis-shaped keys: .*motion_encoder\.dec\.direction\.weight"),
    ],
)
def test_strict_loading_names_the_key(edit, named, tmp_path):
    model = random_animate()
    model.save_original(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    if edit == "drop":
        state.pop("face_adapter.fuser_blocks.1.linear1_kv.weight")
    elif edit == "drop_kernel":
        state.pop("motion_encoder.enc.net_app.convs.3.skip.0.kernel")
    elif edit == "add":  # a third face block, which a 4-layer model with interval 2 does not have
        state["face_adapter.fuser_blocks.2.linear2.weight"] = torch.zeros(24, 24)
    else:
        state["motion_encoder.dec.direction.weight"] = torch.zeros(16, 5)
    save_file(state, str(file))
    with pytest.raises(CheckpointMismatchError, match=named):
        WanTransformer3DModel.from_pretrained(tmp_path)


def test_first_block_cache_runs_the_face_blocks_in_both_parts():
    # The first-block cache runs block 0 (and its face block), then the rest of the stack through run_blocks.
    model = random_animate()
    given = inputs(batch=1)
    with torch.no_grad():
        expected = model(**given)
        cache = FirstBlockCache(model, threshold=0.0)
        try:
            split = model(**given)
        finally:
            cache.remove()
    assert cache.stats.computed == 1 and max_diff(split, expected) <= 1e-6


def test_inputs_are_checked():
    model = random_animate()
    given = inputs(batch=1)
    with pytest.raises(ValueError, match="needs pose_latents"):
        model(**{**given, "face_pixel_values": None})
    with pytest.raises(ValueError, match="less the reference frame"):
        model(**{**given, "pose_latents": given["pose_latents"][:, :, :1]})
    with pytest.raises(ValueError, match=r"give 4 \* 1 \+ 1 = 5 face frames"):
        model(**{**given, "face_pixel_values": given["face_pixel_values"][:, :, :1]})
    with pytest.raises(ValueError, match="takes 512x512"):
        model(**{**given, "face_pixel_values": given["face_pixel_values"][..., :256, :256]})
    with pytest.raises(ValueError, match="not a multiple of face_adapter_interval"):
        WanAnimateTransformer3DModel.from_config(tiny_config("animate", num_layers=3))
