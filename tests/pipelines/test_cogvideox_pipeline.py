"""The CogVideoX pipeline: the Fun InP channel layout against a hand-built reference, modes, sizes, recognition."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from videox_fun.families import get_family, recognise
from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder
from videox_fun.models.cogvideox.variants import CogVideoXSizeRules
from videox_fun.pipelines.cogvideox import CogVideoXPipeline

SIZE, FRAMES = 32, 9


@pytest.fixture(scope="module")
def inp_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cogvideox_folder(tmp_path_factory.mktemp("cog") / "inp", "inp", seed=1)


@pytest.fixture(scope="module")
def inp(inp_folder: Path) -> CogVideoXPipeline:
    return CogVideoXPipeline.from_pretrained(inp_folder)


def frames(seed: int, count: int = FRAMES) -> torch.Tensor:
    """uint8 (F, H, W, 3)."""
    return torch.randint(
        0, 256, (count, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def capture_hidden_states(pipe: CogVideoXPipeline, **call) -> torch.Tensor:
    """The ``hidden_states`` (B, F', C_in, h, w) of the transformer's first call."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["hidden_states"].clone())

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe("a red circle", height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=1, progress=False,
             guidance_scale=1.0, **call)  # fmt: skip
    finally:
        handle.remove()
    return seen[0]


def to_unit(video: torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> (1, 3, F, H, W) in [-1, 1]."""
    return video.permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_inpaint_channels_match_a_hand_built_reference(inp: CogVideoXPipeline):
    """Channel 16 = known mask (first frame alone, then trilinear) x scaling factor; 17-32 = latents of the
    video with the generated pixels at -1 plus std-0.0563 noise on the known ones (seeded seed + 1)."""
    video, seed = frames(0), 5
    mask = torch.zeros(FRAMES, SIZE, SIZE, 3, dtype=torch.uint8)
    mask[:, 8:24, 8:24] = 255  # white = regenerate
    hidden = capture_hidden_states(inp, video=video, mask=mask, seed=seed)

    pixels = to_unit(video)
    generate = torch.zeros(1, 1, FRAMES, SIZE, SIZE)
    generate[..., 8:24, 8:24] = 1
    masked = pixels * (generate < 0.5) + -1 * (generate > 0.5)
    noise = torch.randn(masked.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.0563
    masked = masked + torch.where(masked == -1, torch.zeros_like(noise), noise)
    vae = inp.vae.model
    latents = vae.encode(masked).latent_dist.mode() * vae.config.scaling_factor  # (1, 16, 3, 4, 4)
    known = 1 - generate
    first = F.interpolate(known[:, :, :1], size=(1, 4, 4), mode="trilinear", align_corners=False)
    rest = F.interpolate(known[:, :, 1:], size=(2, 4, 4), mode="trilinear", align_corners=False)
    mask_channel = torch.cat([first, rest], dim=2) * vae.config.scaling_factor  # (1, 1, 3, 4, 4)
    expected = torch.cat([mask_channel, latents], dim=1).permute(0, 2, 1, 3, 4)  # (1, 3, 17, 4, 4)

    assert hidden.shape == (1, 3, 33, 4, 4)
    torch.testing.assert_close(hidden[:, :, 16:], expected, atol=1e-5, rtol=1e-5)
    assert hidden[:, 0, 16].max() == pytest.approx(vae.config.scaling_factor)  # the border is known
    assert hidden[:, 0, 16, 1:3, 1:3].abs().max() < 1e-6  # the centre is generated


def test_i2v_on_inp_knows_the_first_frame_and_t2v_is_all_zeros(inp: CogVideoXPipeline):
    image = frames(1, 1)[0]
    hidden = capture_hidden_states(inp, image=image)
    scale = inp.vae.scaling_factor
    assert torch.allclose(hidden[:, 0, 16], torch.full((1, 4, 4), scale))  # the first latent frame is known
    assert hidden[:, 1:, 16].abs().max() < 1e-6  # the others are generated
    t2v = capture_hidden_states(inp)
    assert t2v[:, :, 16:].abs().max() == 0  # VideoX-Fun: nothing known -> zero mask and latents


def test_output_and_settings(inp: CogVideoXPipeline):
    out = inp("a red circle", height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=2, progress=False)
    assert out.frames.shape == (FRAMES, SIZE, SIZE, 3) and out.frames.dtype == torch.uint8
    assert out.latents.shape == (1, 16, 3, 4, 4)
    assert out.settings["mode"] == "t2v" and out.settings["sampler"] == "DDIM_Origin"
    assert out.settings["shift"] is None and out.settings["guidance_scale_2"] is None
    assert inp.config.defaults.num_frames == 49 and inp.config.defaults.height == 384  # VideoX-Fun's
    assert inp.transformers == (inp.transformer,)
    assert set(inp.components()) == {"text_encoder", "transformer", "vae"}
    assert inp.components()["vae"][1] == ("encode", "decode")


@pytest.mark.parametrize("sampler", ["Euler", "Euler A", "DPM++", "PNDM", "DDIM_Cog", "DPM_Cog"])
def test_every_sampler_runs(inp: CogVideoXPipeline, sampler: str):
    out = inp("a", height=SIZE, width=SIZE, num_frames=5, num_inference_steps=5, sampler=sampler, progress=False)
    assert torch.isfinite(out.latents).all()


def test_generation_hooks_begin_and_seed_reproducibility(inp: CogVideoXPipeline):
    class Hook:
        def __init__(self) -> None:
            self.steps: list[int] = []

        def begin(self, num_steps: int) -> None:
            self.steps.append(num_steps)

    hook = Hook()
    inp.transformer.generation_hooks = (hook,)
    try:
        a = inp("a", height=SIZE, width=SIZE, num_frames=5, num_inference_steps=2, seed=3, progress=False)
    finally:
        del inp.transformer.generation_hooks
    b = inp("a", height=SIZE, width=SIZE, num_frames=5, num_inference_steps=2, seed=3, progress=False)
    assert hook.steps == [2]
    assert torch.equal(a.latents, b.latents)


def test_modes_and_inputs_are_checked(inp: CogVideoXPipeline):
    with pytest.raises(ValueError, match="control"):
        inp("a", control_video=frames(0), progress=False)
    with pytest.raises(ValueError, match="needs --video"):
        inp("a", mode="v2v", progress=False)
    with pytest.raises(ValueError, match="sampler"):
        inp("a", sampler="Flow", progress=False)


def test_sizes_are_corrected_with_a_warning(inp: CogVideoXPipeline, caplog):
    with caplog.at_level(logging.WARNING):
        settings = inp.resolve_settings("t2v", {}, height=30, width=44, num_frames=8)
    assert (settings.height, settings.width, settings.num_frames) == (32, 48, 9)
    assert "frame count 8" in caplog.text


def test_cogvideox15_frame_rule():
    rules = CogVideoXSizeRules(latent_multiple=2)
    assert rules.frame_rule() == "8k+5"
    assert [rules.valid_frame_count(n) for n in (81, 85, 49, 1)] == [85, 85, 53, 5]
    assert CogVideoXSizeRules().valid_frame_count(81) == 81


def test_recognition(inp_folder: Path, tmp_path: Path):
    found = recognise(inp_folder)
    assert found.family is get_family("cogvideox")
    assert found.modes == ("t2v", "i2v", "v2v", "inpaint") and found.variant == "CogVideoX 1.0 Fun InP"
    assert found.sizes.multiple == 16 and found.sizes.max_frames == 49
    control = recognise(build_tiny_cogvideox_folder(tmp_path / "control", "control"))
    assert control.modes == ("control",)
    i2v = recognise(build_tiny_cogvideox_folder(tmp_path / "i2v15", "i2v-1.5"))
    assert i2v.modes == ("i2v",) and i2v.sizes.frame_rule() == "8k+5"


def test_wan_folders_are_not_taken(tmp_path: Path):
    from videox_fun.models.wan.tiny import build_tiny_model_folder

    wan = build_tiny_model_folder(tmp_path / "wan", "inp")
    assert get_family("cogvideox").recognise(wan) is None
    assert recognise(wan).family.name == "wan"


def test_a_wan_vae_beside_a_cogvideox_transformer_fails_in_one_line(inp_folder: Path, tmp_path: Path):
    folder = tmp_path / "mixed"
    shutil.copytree(inp_folder, folder)
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 16}))
    with pytest.raises(ValueError) as err:
        recognise(folder)
    message = str(err.value)
    assert "CogVideoXTransformer3DModel" in message and "AutoencoderKLWan" in message and "\n" not in message


def test_the_released_config_yaml_is_read(inp_folder: Path):
    config_path = Path(__file__).parents[2] / "config" / "cogvideox" / "config.yaml"
    found = recognise(inp_folder, config_path)
    assert found.config.noise_aug_strength == pytest.approx(0.0563)
    assert found.defaults.sampler == "DDIM_Origin" and found.defaults.negative_prompt.startswith("The video")
