"""Reward LoRAs on the toy world (``videox-fun toyworld train-reward`` / ``report-reward``): issue #21's measures.

A reward LoRA is trained by the generic trainer's ``--train_mode reward`` on the packaged InP model with a
built-in reward (``toy_colour``: the foreground's colour against the prompt's; ``toy_motion``: the centroid's
travel along the prompt's direction), on the seen combinations' prompts only. The report then samples t2v over
every combination with and without the LoRA (the same seeds) and gives, seen and held-out apart:

- the evaluator's accuracy (colour, shape, direction), which the LoRA should keep within 2 points, and for the
  motion reward raise or keep direction at 100 % on held-out prompts;
- the reward itself, measured on the decoded videos, which the LoRA should raise on held-out prompts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..api import RuntimeOptions, load_pipeline
from ..io.video import read_video
from ..registry import resolve_model
from .evaluate import evaluate_folder
from .report import _generate, _summary
from .world import caption, combinations

BASE = "Wan2.1-Fun-Tiny-InP"


@dataclass
class RewardRecipe:
    """Every number of a toy reward LoRA; written beside it as reward_recipe.json."""

    reward: str = "toy_colour"
    seed: int = 0
    steps: int = 60
    learning_rate: float = 1e-3
    batch: int = 4
    rank: int = 8
    sampling_steps: int = 10
    decoded_latents: int = 5  # all 5 latent frames of 17: the motion reward needs the path
    backprop_strategy: str = "tail"
    backprop_num_steps: int = 2


def seen_prompts_file(out: Path) -> Path:
    """The training prompts: one caption per seen combination (held-out ones are never trained on)."""
    path = out / "prompts_seen.txt"
    path.write_text("\n".join(caption(spec) for spec in combinations("train")) + "\n")
    return path


def train_reward_lora(out: str | Path, recipe: RewardRecipe | None = None, base: str = BASE) -> Path:
    """Train the reward LoRA into OUT/run (resumable); returns the LoRA file."""
    from ..training.config import TrainConfig
    from ..training.trainer import train

    recipe = recipe or RewardRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    config = TrainConfig(
        pretrained_model_name_or_path=str(resolve_model(base)),
        train_mode="reward",
        prompt_path=str(seen_prompts_file(out)),
        reward_fn=recipe.reward,
        video_sample_size=[64],
        video_sample_n_frames=17,
        num_sampling_steps=recipe.sampling_steps,
        num_decoded_latents=recipe.decoded_latents,
        backprop_strategy=recipe.backprop_strategy,
        backprop_num_steps=recipe.backprop_num_steps,
        use_lora=True,
        rank=recipe.rank,
        network_alpha=float(recipe.rank),
        learning_rate=recipe.learning_rate,
        lr_scheduler="constant",
        train_batch_size=recipe.batch,
        max_train_steps=recipe.steps,
        checkpointing_steps=20,
        resume_from_checkpoint="latest" if any(run.glob("checkpoint-*")) else None,
        report_to="none",
        seed=recipe.seed,
        output_dir=str(run),
    )
    result = train(config)
    (out / "reward_recipe.json").write_text(json.dumps({"recipe": asdict(recipe), "base": base}, indent=1))
    return Path(result.lora_path)


def video_rewards(folder: Path, reward_name: str) -> dict[str, float]:
    """Mean reward of the folder's videos (each with its sidecar's prompt), seen and held-out apart."""
    from ..training.reward_models import load_reward

    reward = load_reward(reward_name)
    held_out = {caption(spec) for spec in combinations("heldout")}
    scores: dict[str, list[float]] = {"seen": [], "held_out": []}
    for video in sorted(folder.glob("*.mp4")):
        prompt = json.loads(video.with_suffix(".json").read_text())["prompt"]
        frames = read_video(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, F, H, W) in [-1, 1]
        score = float(reward(frames, [prompt])[0])
        scores["held_out" if prompt in held_out else "seen"].append(score)
    return {split: sum(values) / len(values) for split, values in scores.items() if values}


def run_reward_report(out: str | Path, lora: str | Path, reward: str, repeats: int = 2, base: str = BASE) -> dict:
    """t2v over every combination ``repeats`` times with and without ``lora`` (same seeds): accuracy and the
    reward, seen and held-out; OUT/report_reward.json."""
    out = Path(out)
    prompts = [caption(spec) for spec in combinations("all")] * repeats
    report: dict = {"base": base, "lora": str(lora), "reward": reward}
    for role, options in (("base", RuntimeOptions()), ("lora", RuntimeOptions(lora_path=[str(lora)]))):
        pipe = load_pipeline(resolve_model(base), options)
        try:
            _generate(pipe, [{"prompt": p} for p in prompts], out / role, fps=8, progress=False)
        finally:
            pipe.close()
        report[role] = {"t2v": _summary(evaluate_folder(out / role, progress=False))}
        report[role]["reward"] = video_rewards(out / role, reward)
    report["accuracy_change_points"] = {
        split: {
            key: round(100 * (report["lora"]["t2v"][split][key] - report["base"]["t2v"][split][key]), 2)
            for key in ("colour", "shape", "direction")
        }
        for split in ("seen", "held_out")
    }
    (out / "report_reward.json").write_text(json.dumps(report, indent=2))
    return report
