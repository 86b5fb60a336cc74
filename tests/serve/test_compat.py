"""A client written for VideoX-Fun's API (its field names, base64 images, its answer shape) gets videos."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REPO

from videox_fun.registry import packaged_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(packaged_model("Wan2.1-Fun-Tiny-Control") is None, reason="packaged tiny models not installed"),
]


def make_lora(path: Path) -> Path:
    """A LoRA of the packaged InP model with visible effect (random up / down weights)."""
    from videox_fun.models.wan.transformer import WanTransformer3DModel
    from videox_fun.training.lora import add_lora, save_lora_file

    adapted = WanTransformer3DModel.from_pretrained(packaged_model("Wan2.1-Fun-Tiny-InP"))
    add_lora(adapted, rank=2, alpha=2.0, targets=("q", "v", "ffn.2"))
    for param in adapted.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.3)
    return save_lora_file(adapted.state_dict(), path, rank=2, alpha=2.0)


def cli_video(tmp_path: Path, name: str, *flags: str) -> bytes:
    """The CLI's video for the same settings."""
    out = tmp_path / f"{name}.mp4"
    command = [sys.executable, "-m", "videox_fun.cli", "generate", "--output", str(out), "--device", "cpu", "--quiet",
               *flags]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    return out.read_bytes()


def test_infer_forward_with_start_image_lora_and_teacache_then_a_model_switch(start_server, media, tmp_path):
    models = tmp_path / "models"
    lora = make_lora(models / "Personalized_Model" / "style.safetensors")
    shutil.copytree(packaged_model("Wan2.1-Fun-Tiny-Control"), models / "Diffusion_Transformer" / "Control")
    server = start_server("--models", str(models))
    image = base64.b64encode(media["image"].read_bytes()).decode()
    fields = {
        "prompt_textbox": "a red square moving right",
        "negative_prompt_textbox": "",
        "sampler_dropdown": "Flow",
        "sample_step_slider": 6,
        "width_slider": 64,
        "height_slider": 64,
        "length_slider": 9,
        "cfg_scale_slider": 1.5,
        "seed_textbox": 7,
        "start_image": image,
        "lora_model_path": "style.safetensors",
        "lora_alpha_slider": 0.8,
        "enable_teacache": True,
        "teacache_threshold": 0.1,
        "num_skip_start_steps": 1,
        "generation_method": "Video Generation",
        "fps": 8,
    }
    # As VideoX-Fun's example client: requests.post(url, json=datas), then json.loads(r.content).
    answer = httpx.post(f"{server.url}/videox_fun/infer_forward", json=fields, timeout=300).json()
    assert answer["message"] == "Success", answer["message"]
    video = base64.b64decode(answer["base64_encoding"])
    assert video == Path(answer["save_sample_path"]).read_bytes()
    start = ["--image", str(media["image"]), "--steps", "6", "--frames", "9", "--height", "64", "--width", "64",
             "--guidance", "1.5", "--seed", "7", "--sampler", "Flow", "--fps", "8",
             "--negative-prompt", ""]  # fmt: skip
    cache = ["--cache", "teacache", "--teacache-threshold", "0.1", "--num-skip-start-steps", "1"]
    expected = cli_video(tmp_path, "lora", "--prompt", fields["prompt_textbox"], *start, *cache,
                         "--lora-path", str(lora), "--lora-weight", "0.8")  # fmt: skip
    assert video == expected
    # The LoRA and the cache were taken out after the job: the same model now gives the plain video.
    plain = {key: fields[key] for key in fields if not key.startswith(("lora", "enable_teacache"))}
    again = httpx.post(f"{server.url}/videox_fun/infer_forward", json=plain, timeout=300).json()
    assert base64.b64decode(again["base64_encoding"]) == cli_video(
        tmp_path, "plain", "--prompt", fields["prompt_textbox"], *start
    )
    assert again["base64_encoding"] != answer["base64_encoding"]

    # update_diffusion_transformer switches the model later calls use; a path elsewhere is refused.
    switch = {"diffusion_transformer_path": str(models / "Diffusion_Transformer" / "Control")}
    assert httpx.post(f"{server.url}/videox_fun/update_diffusion_transformer", json=switch).json() == {
        "message": "Success"
    }
    control = base64.b64encode(media["control_video"].read_bytes()).decode()
    made = httpx.post(
        f"{server.url}/videox_fun/infer_forward",
        json={"prompt_textbox": "a red square", "control_video": control, "sample_step_slider": 2, "length_slider": 5},
        timeout=300,
    ).json()
    assert made["message"] == "Success", made["message"]
    sidecar = Path(made["save_sample_path"]).with_suffix(".json").read_text()
    assert '"model": "Control"' in sidecar
    outside = httpx.post(f"{server.url}/videox_fun/update_diffusion_transformer",
                         json={"diffusion_transformer_path": str(tmp_path)})  # fmt: skip
    assert outside.status_code == 403 and outside.json()["message"].startswith("Error. error information is")
    image_only = httpx.post(
        f"{server.url}/videox_fun/infer_forward",
        json={"prompt_textbox": "a red square", "is_image": True, "sample_step_slider": 2},
        timeout=300,
    ).json()
    assert image_only["message"].startswith("Error."), "a control model needs a control video"
