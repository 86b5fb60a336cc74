"""Several processes on the CPU (gloo) with the shipped accelerate configs.

Two processes with batch 1 each see what one process with batch 2 sees (each takes its half of
the global batch, and per-sample noise follows the position in the global batch), so after n
steps DDP and FSDP hold the weights one process gets, up to float summation order.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import REPO, TRAIN_SCRIPT, subprocess_env

from videox_fun.serve.process import free_port
from videox_fun.training.trainer import train

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def launch(accelerate_config: str, config, output_dir, *extra: str) -> None:
    """``accelerate launch --config_file config/accelerate/<file> --num_processes 2 scripts/wan2.1_fun/train.py``."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "config" / "accelerate" / accelerate_config),
        "--num_processes=2",
        "--mixed_precision=no",
        f"--main_process_port={free_port()}",
        str(TRAIN_SCRIPT),
        f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}",
        f"--train_data_meta={config.train_data_meta}",
        f"--output_dir={output_dir}",
        f"--train_mode={config.train_mode}",
        "--train_batch_size=1",
        f"--max_train_steps={config.max_train_steps}",
        f"--learning_rate={config.learning_rate}",
        "--video_sample_size=32",
        "--video_sample_n_frames=5",
        "--video_sample_stride=1",
        "--report_to=none",
        *extra,
    ]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
def test_two_processes_match_one_with_the_doubled_batch_ddp_and_fsdp(make_config, tmp_path):
    config = make_config("inp", train_mode="inpaint", train_batch_size=2, max_train_steps=3)
    one = train(config)
    launch("ddp.yaml", config, tmp_path / "ddp")
    launch("fsdp.yaml", config, tmp_path / "fsdp")

    reference = load_file(str(one.output_dir / WEIGHTS))
    start = load_file(str(config.pretrained_model_name_or_path + "/diffusion_pytorch_model.safetensors"))
    moved = state_dict_max_diff(reference, start)
    assert moved > 1e-3  # the steps did train
    for name in ("ddp", "fsdp"):
        theirs = load_file(str(tmp_path / name / WEIGHTS))
        difference = state_dict_max_diff(theirs, reference)
        print(
            f"{name} (2 processes x batch 1) vs 1 process x batch 2: max abs diff {difference:.2e} (moved {moved:.2e})"
        )
        assert difference <= 2e-5, (name, difference)


@pytest.mark.slow
def test_an_fsdp_run_stopped_and_resumed_matches_one_process(make_config, tmp_path):
    config = make_config("inp", train_mode="inpaint", train_batch_size=2, max_train_steps=4)
    one = train(config)
    config.max_train_steps = 2
    launch("fsdp.yaml", config, tmp_path / "fsdp")
    assert (tmp_path / "fsdp" / "checkpoint-2" / "sharded_state.pt").is_file()
    config.max_train_steps = 4
    launch("fsdp.yaml", config, tmp_path / "fsdp", "--resume_from_checkpoint=latest")
    reference = load_file(str(one.output_dir / WEIGHTS))
    resumed = load_file(str(tmp_path / "fsdp" / WEIGHTS))
    difference = state_dict_max_diff(resumed, reference)
    print(f"FSDP stopped at 2, resumed to 4 vs 1 process to 4: max abs diff {difference:.2e}")
    assert difference <= 2e-5


@pytest.mark.slow
def test_two_processes_train_cogvideox_as_one_with_the_doubled_batch(make_config, tmp_path):
    """The same generic trainer and launch, on a CogVideoX-Fun InP folder (v-prediction): DDP equals one process."""
    from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder

    folder = build_tiny_cogvideox_folder(tmp_path / "cog", "inp")
    config = make_config("inp", train_mode="inpaint", train_batch_size=2, max_train_steps=3)
    config.pretrained_model_name_or_path = str(folder)
    config.video_sample_n_frames = 5
    config.output_dir = str(tmp_path / "one")
    one = train(config)
    launch("ddp.yaml", config, tmp_path / "ddp")
    reference = load_file(str(one.output_dir / WEIGHTS))
    start = load_file(str(folder / WEIGHTS))
    moved = state_dict_max_diff(reference, start)
    assert moved > 1e-3  # the steps did train
    difference = state_dict_max_diff(load_file(str(tmp_path / "ddp" / WEIGHTS)), reference)
    print(
        f"CogVideoX ddp (2 processes x batch 1) vs 1 process x batch 2: max abs diff {difference:.2e} "
        f"(moved {moved:.2e})"
    )
    assert difference <= 2e-5
