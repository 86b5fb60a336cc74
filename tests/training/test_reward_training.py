"""Reward LoRA through the generic trainer (``--train_mode reward``) on the packaged tiny InP model.

Videos are sampled from per-sample noise with CFG (4 steps, 5 frames at 64x64), the first latent frames
decoded with gradients and judged by the toy world's colour reward; the LoRA trained so raises that
reward on held-out prompts, the trainer's transformer calls keep gradients on exactly the chosen steps,
and a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import REPO, subprocess_env, write_train_yaml

from videox_fun.cli import main
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.registry import resolve_model
from videox_fun.training.config import TrainConfig
from videox_fun.training.data.prompts import load_prompts
from videox_fun.training.lora import load_lora
from videox_fun.training.reward import RewardObjective, backprop_steps
from videox_fun.training.reward_models import load_reward
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.trainer import train

SCRIPT = REPO / "scripts" / "wan2.1_fun" / "train_reward_lora.py"
TRAIN_PROMPTS = [
    "a red circle moving right",
    "a blue square moving left",
    "a yellow triangle moving up",
    "a magenta circle moving down",
    "a cyan square moving right",
    "a green circle moving left",
    "a red triangle moving down",
    "a blue triangle moving up",
]
# The toy world's held-out combinations (green triangle, blue circle, yellow square), never trained on.
HELD_OUT = [
    "a green triangle moving left",
    "a blue circle moving up",
    "a yellow square moving right",
    "a green triangle moving down",
    "a blue circle moving right",
    "a yellow square moving up",
]
STEPS = 4  # denoising steps of each sampled video


@pytest.fixture
def reward_config(tmp_path: Path):
    """TrainConfig factory: reward LoRA on Wan2.1-Fun-Tiny-InP with the toy colour reward, tiny and fast."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN_PROMPTS) + "\n")

    def make(**overrides: Any) -> TrainConfig:
        values: dict[str, Any] = dict(
            pretrained_model_name_or_path=str(resolve_model("Wan2.1-Fun-Tiny-InP")),
            train_mode="reward",
            prompt_path=str(prompts),
            reward_fn="toy_colour",
            video_sample_size=[64],
            video_sample_n_frames=5,  # 2 latent frames of 8x8
            num_sampling_steps=STEPS,
            num_decoded_latents=2,
            backprop_strategy="tail",
            backprop_num_steps=2,
            use_lora=True,
            rank=4,
            network_alpha=4.0,
            learning_rate=2e-3,
            train_batch_size=2,
            max_train_steps=2,
            checkpointing_steps=1000,
            report_to="none",
            output_dir=str(tmp_path / "out"),
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make


def held_out_rewards(config: TrainConfig, lora: Path | None = None) -> torch.Tensor:
    """The colour reward (B,) of the held-out prompts' videos sampled from fixed noise (base, or with ``lora``)."""
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    if lora is not None:
        load_lora(models.transformer, lora)
    objective = RewardObjective.from_config(spec, models, config)
    generators = sample_generators(1234, -1, 0, range(len(HELD_OUT)))  # the same noise for both models
    with torch.no_grad():
        return objective.sample_rewards(spec, models, models.transformer.eval(), HELD_OUT, generators, "cpu")


def test_a_reward_lora_raises_the_colour_reward_on_held_out_prompts(reward_config):
    config = reward_config(max_train_steps=6)
    before = held_out_rewards(config)
    result = train(config)
    after = held_out_rewards(config, result.lora_path)
    print(f"toy_colour on {len(HELD_OUT)} held-out prompts, fixed noise: base {before.mean():.4f} -> "
          f"reward LoRA {after.mean():.4f} (losses {[round(x, 4) for x in result.losses]})")  # fmt: skip
    assert after.mean() > before.mean() + 0.01


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        (dict(backprop_strategy="last"), [STEPS - 1]),
        (dict(backprop_strategy="uniform", backprop_num_steps=2), [0, STEPS - 1]),
        (dict(backprop_step_list=[0, 2]), [0, 2]),
        (dict(backprop_strategy="random", backprop_num_steps=2, guidance_scale=1.0), None),
    ],
    ids=["last", "uniform-2", "explicit", "random-2-no-cfg"],
)
def test_each_step_keeps_gradients_on_exactly_the_strategys_transformer_calls(
    reward_config, monkeypatch, settings, kept
):
    calls: list[bool] = []  # per transformer call: did it run with gradients
    forward = WanTransformer3DModel.forward

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "forward", counted)
    config = reward_config(train_batch_size=1, **settings)
    train(config)
    assert len(calls) == 2 * STEPS  # one call per denoising step (CFG batched into it), 2 training steps
    for step in range(2):
        grads = [i for i, grad in enumerate(calls[step * STEPS : (step + 1) * STEPS]) if grad]
        if kept is None:  # random: the draw of this step's first sample generator, after its noise
            generator = sample_generators(config.seed, step, 0, [0])[0]
            torch.randn(16, 2, 8, 8, generator=generator)
            assert grads == backprop_steps("random", STEPS, 2, generator) and len(grads) == 2
        else:
            assert grads == kept


def test_a_stopped_and_resumed_reward_run_matches_an_uninterrupted_one(reward_config, tmp_path):
    # 3 prompts, batch 1: the resumed half starts mid-epoch and crosses into the next one.
    prompts = tmp_path / "three.json"
    prompts.write_text(json.dumps(TRAIN_PROMPTS[:3]))
    settings = dict(prompt_path=str(prompts), backprop_strategy="random", backprop_num_steps=2, train_batch_size=1)
    whole = train(reward_config(output_dir=str(tmp_path / "whole"), max_train_steps=4, **settings))
    first = train(reward_config(output_dir=str(tmp_path / "split"), max_train_steps=2, **settings))
    rest = train(
        reward_config(
            output_dir=str(tmp_path / "split"), max_train_steps=4, resume_from_checkpoint="latest", **settings
        )
    )
    assert first.losses + rest.losses == whole.losses
    difference = state_dict_max_diff(
        load_file(str(tmp_path / "whole" / "lora.safetensors")), load_file(str(tmp_path / "split" / "lora.safetensors"))
    )
    print(f"reward LoRA resumed vs uninterrupted: losses {whole.losses}, max abs diff {difference:.2e}")
    assert difference <= 1e-6


def test_prompt_files_read_as_videox_fun_writes_them(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle moving right\n\n  a blue square moving up \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n')
    (tmp_path / "p.json").write_text('[{"text": "c"}, "d"]')
    assert load_prompts(tmp_path / "p.txt") == ["a red circle moving right", "a blue square moving up"]
    assert load_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    assert load_prompts(tmp_path / "p.json") == ["c", "d"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        load_prompts(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(reward_fn="nope"), "--reward_fn 'nope' is unknown; choose one of toy_colour, toy_motion"),
        (dict(reward_fn=None), "--train_mode reward needs --reward_fn"),
        (dict(prompt_path=None), "--train_mode reward needs --prompt_path"),
        (dict(prompt_path="missing.txt"), "--prompt_path missing.txt is not a file"),
        (dict(reward_fn_kwargs="{model_path"), "--reward_fn_kwargs is not JSON"),
        (dict(backprop_strategy="tail", backprop_num_steps=5), "--backprop_num_steps 5 exceeds --num_sampling_steps 4"),
        (dict(backprop_step_list=[4]), "--backprop_step_list [4] must name steps in [0, 3]"),
        (dict(train_mode="normal", train_data_meta="m.json"), "--prompt_path, --reward_fn: reward-training settings"),
    ],
)
def test_bad_reward_settings_are_one_clear_line(reward_config, changes, message):
    with pytest.raises(ValueError) as raised:
        reward_config(**changes).validate()
    assert message in str(raised.value) and "\n" not in str(raised.value), raised.value


def test_a_missing_reward_weight_file_is_one_line_and_exit_2(reward_config, tmp_path, capsys):
    kwargs = json.dumps({"model_path": str(tmp_path / "PickScore_v1")})
    config = write_train_yaml(reward_config(), tmp_path / "train.yaml", reward_fn="PickScoreReward",
                              reward_fn_kwargs=kwargs)  # fmt: skip
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PickScore model is not on disk" in err and "PickScore_v1" in err, err
    assert not (tmp_path / "out" / "lora.safetensors").exists()
    # VideoX-Fun's other rewards say which file they need (tests/training/test_reward_models.py has them all).
    with pytest.raises(ValueError, match=r"^--reward_fn HPSReward: model_path=None is no file on disk") as raised:
        load_reward("HPSReward", '{"version": "v2.1"}')
    assert "\n" not in str(raised.value)


def test_pickscore_loads_from_local_folders_and_passes_gradients_to_every_frame(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from videox_fun.models.wan.text_encoder import build_word_tokenizer

    torch.manual_seed(0)
    tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=16, max_position_embeddings=16, bos_token_id=1, eos_token_id=1, pad_token_id=0, **tiny)
    config = CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=16, **tiny), projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "pickscore")
    build_word_tokenizer(["a", "red", "blue", "circle", "moving", "right"]).save_pretrained(tmp_path / "pickscore")
    folder = str(tmp_path / "pickscore")
    reward = load_reward("PickScoreReward", json.dumps({"model_path": folder, "processor_name_or_path": folder}))
    frames = (torch.rand(2, 3, 5, 64, 48) * 2 - 1).requires_grad_(True)  # resized and centre-cropped to 32x32
    rewards = reward(frames, ["a red circle moving right", "a blue circle"])
    rewards.sum().backward()
    assert rewards.shape == (2,) and (rewards.abs() <= 1).all()
    assert (frames.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).all()


def test_the_reward_script_parses_videox_fun_flags_and_refuses_a_missing_reward_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0 and "--reward_fn" in done.stdout and "--num_inference_steps" in done.stdout
    flags = [
        f"--pretrained_model_name_or_path={resolve_model('Wan2.1-Fun-Tiny-InP')}",
        f"--prompt_path={tmp_path / 'missing.txt'}",
        "--reward_fn=toy_colour",
        f"--output_dir={tmp_path / 'out'}",
        "--backprop",  # VideoX-Fun's switch: accepted (always on here)
        "--stop_latent_model_input_gradient",
    ]
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, env=subprocess_env())
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2 and len(lines) == 1 and "--prompt_path" in lines[0], done.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # refused before anything is written
