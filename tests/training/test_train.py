"""End to end: LoRA and full fine-tunes of tiny Wan models from the documented commands.

The loss on the training clips (fixed noise and sigmas) goes down; the LoRA file loads into
diffusers' Wan transformer through ``WanPipeline.load_lora_weights`` and changes its output as it
changes ours; the full fine-tune is written in the original layout and loads with ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanPipeline as DiffusersWanPipeline
from helpers import diffusers_twin
from training_helpers import TRAIN_SCRIPT, fixed_noise_loss, subprocess_env, write_train_yaml

from videox_fun.cli import main
from videox_fun.io.video import read_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.training.lora import load_lora, read_lora_file
from videox_fun.training.specs import FlowMatching
from videox_fun.training.trainer import train


def test_lora_from_the_train_script_lowers_the_loss_and_loads_in_diffusers(make_config, tmp_path):
    config = make_config("t2v", use_lora=True, rank=4, network_alpha=2.0, learning_rate=1e-2, max_train_steps=12)
    flags = [
        f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}",
        f"--train_data_meta={config.train_data_meta}",
        f"--output_dir={config.output_dir}",
        "--train_batch_size=1",
        "--gradient_accumulation_steps=1",
        "--video_sample_size=32",
        "--video_sample_n_frames=5",
        "--video_sample_stride=1",
        "--use_lora",
        "--rank=4",
        "--network_alpha=2",
        "--learning_rate=1e-2",
        "--max_train_steps=12",
        "--report_to=tensorboard",  # logs when TensorBoard is installed, a note otherwise
    ]
    done = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *flags], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lora_path = config.output_dir + "/lora.safetensors"
    if importlib.util.find_spec("tensorboard"):
        assert list(Path(config.output_dir, "logs").rglob("events.out.tfevents.*"))
    tensors, metadata = read_lora_file(lora_path)
    assert metadata["rank"] == "4" and float(metadata["network_alpha"]) == 2.0
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in tensors
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in tensors
    assert float(tensors["diffusion_model.blocks.0.self_attn.q.alpha"]) == 2.0

    folder = config.pretrained_model_name_or_path
    base = WanTransformer3DModel.from_pretrained(folder)
    trained = WanTransformer3DModel.from_pretrained(folder)
    load_lora(trained, lora_path)
    before, after = fixed_noise_loss(config, base), fixed_noise_loss(config, trained)
    print(f"fixed-noise loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before, (before, after)

    # The same change in diffusers: base and LoRA-loaded outputs on one input.
    theirs = diffusers_twin(base, tmp_path)
    pipe = DiffusersWanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=theirs)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4, generator=generator)
    t = torch.tensor([700.0])
    context = F.pad(torch.randn(1, 7, 32, generator=generator), (0, 0, 0, 25))  # zero-padded to text_len 32
    with torch.no_grad():
        ours_delta = trained(x, t, context) - base(x, t, context)
        their_base = theirs(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        pipe.load_lora_weights(lora_path)
        their_lora = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    their_delta = their_lora - their_base
    assert ours_delta.abs().max() > 1e-2  # the LoRA does change the output
    gap = (ours_delta - their_delta).abs().max().item()
    print(f"LoRA output change: ours max {ours_delta.abs().max().item():.4f}, ours - diffusers max {gap:.2e}")
    assert gap <= 1e-4


@pytest.mark.slow
def test_full_fine_tune_from_videox_fun_train_config(make_config, tmp_path):
    config = make_config("inp", train_mode="inpaint", learning_rate=2e-3, max_train_steps=12, checkpointing_steps=6)
    assert main(["train", "--config", str(write_train_yaml(config, tmp_path / "train.yaml"))]) == 0

    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    trained = WanTransformer3DModel.from_pretrained(out / "transformer")
    base = WanTransformer3DModel.from_pretrained(config.pretrained_model_name_or_path)
    assert trained.config.in_dim == base.config.in_dim == 36
    before, after = fixed_noise_loss(config, base), fixed_noise_loss(config, trained)
    print(f"fixed-noise loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before, (before, after)


def test_control_training_samples_validation_videos(make_config, video_data):
    control_video = video_data.parent / "control" / "videos" / "00000000.mp4"
    config = make_config(
        "control",
        train_mode="control",
        max_train_steps=2,
        validation_steps=2,
        validation_prompts=["a red square moving right"],
        validation_control_video=str(control_video),
        validation_sample_size=[32],
        validation_num_frames=5,
        validation_inference_steps=2,
    )
    result = train(config)
    frames = read_video(Path(config.output_dir) / "samples" / "step-000002-00.mp4")
    assert result.global_step == 2 and tuple(frames.shape) == (5, 32, 32, 3)


def test_wan22_expert_training_trains_one_expert_on_its_noise_range(make_config, tmp_path):
    folder = build_tiny_model_folder(tmp_path / "a14b", "inp", boundary=0.875)
    settings = {"pretrained_model_name_or_path": str(folder), "train_mode": "inpaint", "max_train_steps": 2}
    with pytest.raises(ValueError, match="--boundary_type high or low"):
        train(make_config("inp", **settings))
    config = make_config("inp", **settings, boundary_type="low", learning_rate=1e-2)
    assert train(config).global_step == 2
    trained = WanTransformer3DModel.from_pretrained(Path(config.output_dir) / "transformer").state_dict()
    experts = {name: WanTransformer3DModel.from_pretrained(folder / f"{name}_noise_model").state_dict()
               for name in ("low", "high")}  # fmt: skip
    gap = {name: sum((trained[k] - w[k]).abs().sum().item() for k in w) for name, w in experts.items()}
    assert 0 < gap["low"] < gap["high"]  # the low-noise expert was trained (and moved), not the high one

    high = FlowMatching(shift=3.0, sigma_range=(0.875, 1.0))
    low = FlowMatching(shift=3.0, sigma_range=(0.0, 0.875))
    draws = [torch.Generator().manual_seed(i) for i in range(200)]
    assert high.sample_sigmas(draws).min() >= 0.875 and low.sample_sigmas(draws).max() < 0.875
