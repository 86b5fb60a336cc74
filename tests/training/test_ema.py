"""The moving average of the trained weights (``--use_ema``): diffusers' ``EMAModel``'s numbers, one update after
each optimizer step of the trained model (of the student alone under ``--distill``), the average as the run's
final weights, exact resume, one-line refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from training_helpers import check_resume_matches_uninterrupted

from videox_fun.training.checkpoint import TRAINABLE_FILE
from videox_fun.training.ema import EMA_FILE, EMAWeights, ema_decay
from videox_fun.training.specs import get_spec
from videox_fun.training.trainer import train


def _updates(path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.metadata()["ema_updates"])


def test_the_average_is_diffusers_ema_model():
    """Against diffusers' own EMAModel (VideoX-Fun's), update by update; ``applied`` swaps it in and back."""
    from diffusers.training_utils import EMAModel

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ours, theirs = EMAWeights.of_trained(model, 0.99), EMAModel(model.parameters(), decay=0.99)
    for _ in range(40):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator))
        ours.update()
        theirs.step(model.parameters())
        for (name, _), shadow in zip(model.named_parameters(), theirs.shadow_params, strict=True):
            torch.testing.assert_close(ours.shadow[name], shadow, rtol=0, atol=1e-6)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    with ours.applied():
        assert all(torch.equal(p, ours.shadow[name]) for name, p in model.named_parameters())
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert ours.updates == 40 and ema_decay(1, 0.99) == 0.0 and ema_decay(2, 0.99) == 2 / 11
    assert ema_decay(10_000, 0.99) == 0.99


def test_a_run_averages_each_step_and_writes_the_average(make_config, tmp_path):
    """A full fine-tune of 3 steps with a checkpoint after each: the checkpoint's average is the one rebuilt from
    the starting weights and each step's raw weights; the final model folder holds the average, not the last step."""
    config = make_config("t2v", use_ema=True, ema_decay=0.5, max_train_steps=3, checkpointing_steps=1)
    start = {n: p.detach().clone() for n, p in get_spec(config).load_models(config, torch.float32).transformer
             .named_parameters()}  # fmt: skip
    train(config)
    out = tmp_path / "out"
    expected = start
    for step in (1, 2, 3):
        raw = load_file(str(out / f"checkpoint-{step}" / TRAINABLE_FILE.format(0)))
        decay = ema_decay(step, 0.5)
        expected = {name: decay * expected[name] + (1 - decay) * raw[name] for name in raw}
        saved = load_file(str(out / f"checkpoint-{step}" / EMA_FILE))
        assert saved.keys() == raw.keys() and _updates(out / f"checkpoint-{step}" / EMA_FILE) == step
        for name, value in expected.items():
            torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-6)
    final = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(final[name], saved[name]) for name in saved)
    assert any(not torch.equal(final[name], raw[name]) for name in raw)  # the average, not the last step


def test_a_resumed_run_continues_the_same_average(make_config, tmp_path):
    """LoRA: stopped after 2 steps and resumed to 4, the final (averaged) LoRA file is the uninterrupted run's."""

    def run(name: str, steps: int, **more):
        config = make_config(
            "t2v", use_lora=True, use_ema=True, ema_decay=0.9, output_dir=str(tmp_path / name / "out"),
            max_train_steps=steps, checkpointing_steps=2, **more,
        )  # fmt: skip
        return train(config)

    check_resume_matches_uninterrupted(run, tmp_path, True, "ema lora")
    assert _updates(tmp_path / "split" / "out" / "checkpoint-4" / EMA_FILE) == 4


def test_under_distill_the_average_follows_the_student_alone(make_config, tmp_path):
    """DMD updates the student on 1 step in ``generator_update_ratio``: the average moves on those steps only."""
    config = make_config(
        "inp", train_mode="inpaint", distill=True, text_drop_ratio=0.0, generator_update_ratio=2, max_train_steps=4,
        use_ema=True, ema_decay=0.9,
    )  # fmt: skip
    result = train(config)
    assert sorted(result.generator_losses) == [1, 3]
    assert _updates(tmp_path / "out" / "checkpoint-4" / EMA_FILE) == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (dict(ema_decay=0.99), "--ema_decay is the decay of --use_ema's average"),
        (dict(use_ema=True, ema_decay=1.0), r"--ema_decay must be within \(0, 1\) \(got 1\)"),
        (dict(use_ema=True, ema_decay=float("nan")), "--ema_decay must be a finite number"),
    ],
)
def test_bad_ema_settings_are_one_line(make_config, overrides, expected):
    with pytest.raises(ValueError, match=expected):
        make_config("t2v", **overrides).validate()


def test_ema_refuses_a_sharded_run(make_config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="--use_ema runs on one process or under DDP"):
        train(make_config("t2v", use_ema=True))


def test_an_average_of_other_parameters_is_refused(tmp_path):
    """A resume reads the average strictly (the checkpoints' check): other names or shapes, or no file, is one line."""
    EMAWeights.of_trained(torch.nn.Linear(4, 3), 0.9).save(tmp_path / EMA_FILE)
    other = EMAWeights.of_trained(torch.nn.Linear(4, 2), 0.9)
    with pytest.raises(ValueError, match=r"mis-shaped \['bias', 'weight'\]"):
        other.load(tmp_path / EMA_FILE)
    with pytest.raises(FileNotFoundError, match=f"holds no {EMA_FILE}"):
        other.load(tmp_path / "elsewhere" / EMA_FILE)
