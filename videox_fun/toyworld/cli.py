"""``videox-fun toyworld render | write-dataset | prompts`` and ``videox-fun eval toyworld``.

Registered on the main parser by :func:`add_toyworld_commands`; every handler takes the parsed
arguments and imports what it needs, so ``videox-fun --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..argparsing import DefaultsHelpFormatter
from .world import DEFAULT_FPS, DEFAULT_FRAMES, SPLITS

EVAL_COMMAND = "eval"


def _size(text: str) -> tuple[int, int]:
    """``64`` or ``48x80`` (height x width) -> (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=_size, default=(64, 64), help="frame size, N or HxW (default 64)")
    parser.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help=f"frames per clip (default {DEFAULT_FRAMES})"
    )
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS, help=f"frame rate of the files (default {DEFAULT_FPS})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run_render(args: argparse.Namespace) -> Path:
    """Render one clip to ``--output`` with its ``.json`` ground truth (and, if asked, control, masks, first frame)."""
    from ..io.video import write_image, write_video
    from .render import render_clip

    clip = render_clip(args.prompt, args.size, args.frames, args.seed, template=0)
    path = write_video(clip.frames, args.output, fps=args.fps)
    path.with_suffix(".json").write_text(json.dumps({**clip.attributes(), "fps": args.fps}, indent=2))
    extras = []
    if args.control:
        extras.append(write_video(clip.control, args.control, fps=args.fps))
    if args.first_frame:
        extras.append(write_image(clip.frames[0], args.first_frame))
    if args.masks:
        for kind in clip.masks:
            extras.append(write_video(clip.mask_video(kind), args.masks / f"{path.stem}_{kind}.mp4", fps=args.fps))
    print(f"wrote {path} ({clip.caption}; {clip.frames.shape[0]} frames)" + "".join(f", {p}" for p in extras))
    return path


def run_write_dataset(args: argparse.Namespace) -> Path:
    """Write a toy-world dataset folder."""
    from .dataset import write_dataset

    path = write_dataset(
        args.folder,
        args.n,
        seed=args.seed,
        split=args.split,
        size=args.size,
        frames=args.frames,
        fps=args.fps,
        images=args.images,
        masks=args.masks,
        progress=not args.quiet,
    )
    print(f"wrote {path}")
    return path


def run_prompts(args: argparse.Namespace) -> Path:
    """Write a prompts file over every combination of a split (canonical captions)."""
    from ..io.files import atomic_path, check_output_location
    from .world import caption, combinations

    check_output_location(args.output, None, "prompts file")
    lines = [caption(spec) for _ in range(args.repeats) for spec in combinations(args.split)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output} ({len(lines)} prompts)")
    return args.output


def run_eval(args: argparse.Namespace) -> dict:
    """Judge a folder of videos; print the table and write the JSON report if asked."""
    from ..io.files import read_prompts
    from .evaluate import evaluate_folder, format_report

    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    report = evaluate_folder(args.video_dir, prompts=prompts, progress=not args.quiet)
    if report["all"]["count"] == 0:
        reasons = "; ".join(f"{item['file']}: {item['reason']}" for item in report["skipped"][:3])
        raise ValueError(
            f"no video in {args.video_dir} could be evaluated: each needs the .json that generate writes beside it "
            f"(or give --prompts-file){'; ' + reasons if reasons else ''}"
        )
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


def run_toy_report(args: argparse.Namespace) -> dict:
    """Generate and judge the tiny models' videos; print the summary."""
    from .report import run_report

    report = run_report(args.out, args.repeats, args.inp_model, args.control_model, progress=not args.quiet)
    print(json.dumps(report, indent=2))
    return report


def run_train_all(args: argparse.Namespace) -> dict:
    """Run the recipe of the tiny models (the Wan ones, or with ``--family cogvideox`` the CogVideoX one)."""
    if args.family == "cogvideox":
        return _run_train_all_cogvideox(args)
    if args.until != "all":
        raise ValueError("--until is only for --family cogvideox")
    from .recipe import MODELS, Recipe, train_all

    if args.smoke:
        return train_all(args.out, Recipe.smoke(args.seed, args.models), vae=args.vae)
    recipe = Recipe(seed=args.seed, vae_steps=args.vae_steps, models=args.models or list(MODELS))
    if args.steps is not None:  # one step count for every model instead of the recipe's
        recipe.transformer_steps, recipe.model_steps = args.steps, {}
    return train_all(args.out, recipe, vae=args.vae)


def run_train_vace(args: argparse.Namespace) -> Path:
    """The VACE recipe (recipe_vace.py): a VACE stream over the folded packaged InP model, trained on the toy world."""
    from .recipe_vace import VaceRecipe, train_vace

    recipe = VaceRecipe(seed=args.seed, steps=args.steps)
    folder = train_vace(args.out, args.inp_model, args.data, recipe)
    print(f"VACE model written to {folder}")
    return folder


def run_train_distill(args: argparse.Namespace) -> Path:
    """The distillation recipe (recipe_distill.py): a 4-step DMD student of a packaged tiny model."""
    from .recipe_distill import DistillRecipe, train_distill

    recipe = DistillRecipe(
        seed=args.seed, steps=args.steps, prompt_share=args.prompt_share, ema_decay=args.ema_decay,
        regression_pairs=args.regression_pairs, regression_weight=args.regression_weight,
    )  # fmt: skip
    folder = train_distill(args.out, args.data, args.teacher, recipe, cache_dir=args.cache_dir)
    print(f"student written to {folder}")
    return folder


def run_distill_report(args: argparse.Namespace) -> dict:
    """A student beside its teacher: headline at their defaults, t2v accuracy against steps; print the summary."""
    from .report_distill import run_distill_report as report_distill

    report = report_distill(args.out, args.student, args.teacher, args.repeats, tuple(args.steps), not args.quiet)
    print(
        json.dumps({role: {k: v for k, v in report[role].items() if k != "sweep"} for role in ("teacher", "student")})
    )
    return report


def run_train_reward(args: argparse.Namespace) -> Path:
    """A reward LoRA on the packaged InP model with a built-in toy reward (report_reward.py)."""
    from .report_reward import RewardRecipe, train_reward_lora

    lora = train_reward_lora(args.out, RewardRecipe(reward=args.reward, steps=args.steps, seed=args.seed))
    print(f"reward LoRA written to {lora}")
    return lora


def run_reward_report(args: argparse.Namespace) -> dict:
    """t2v with and without a reward LoRA: accuracy and reward, seen and held-out; print the changes."""
    from .report_reward import run_reward_report as report_reward

    report = report_reward(args.out, args.lora, args.reward, args.repeats)
    print(json.dumps({"accuracy_change_points": report["accuracy_change_points"],
                      "reward": {role: report[role]["reward"] for role in ("base", "lora")}}))  # fmt: skip
    return report


def run_vace_report(args: argparse.Namespace) -> dict:
    """Reference-to-video and masked completion of a VACE model; print the summary."""
    from .report_vace import run_vace_report as report_vace

    report = report_vace(args.out, args.model, args.repeats, progress=not args.quiet)
    print(json.dumps(report, indent=2))
    return report


def _run_train_all_cogvideox(args: argparse.Namespace) -> dict:
    """The CogVideoX-Fun recipe (recipe_cogvideox.py)."""
    from .recipe_cogvideox import MODELS, CogVideoXRecipe, train_all

    if args.smoke:
        return train_all(args.out, CogVideoXRecipe.smoke(args.seed, args.models), vae=args.vae, until=args.until)
    recipe = CogVideoXRecipe(seed=args.seed, vae_steps=args.vae_steps, models=args.models or list(MODELS))
    if args.steps is not None:
        recipe.transformer_steps, recipe.model_steps = args.steps, {}
    return train_all(args.out, recipe, vae=args.vae, until=args.until)


def run_train_image(args: argparse.Namespace) -> dict:
    """The tiny image model's recipe (recipe_image.py): stills, the FLUX.1 VAE, a Z-Image transformer."""
    from .recipe_image import MODEL, ImageRecipe, train_image

    recipe = ImageRecipe.smoke(args.seed) if args.smoke else ImageRecipe(seed=args.seed)
    if args.steps is not None:
        recipe.model_steps = {MODEL: args.steps}
    record = train_image(args.out, recipe, vae=args.vae, until=args.until)
    print(json.dumps(record["timings_s"]))
    return record


def run_image_report(args: argparse.Namespace) -> dict:
    """t2i colour / shape of a toy-world image model, seen vs held-out, and its VAE; print the summary."""
    from .report_image import run_image_report as report_image

    report = report_image(args.out, args.model, args.repeats, args.transformer_path, args.steps,
                          args.guidance_scale, progress=not args.quiet)  # fmt: skip
    print(json.dumps({section: report[section] for section in ("vae", "t2i")}, indent=2))
    return report


def run_train_image_control(args: argparse.Namespace) -> dict:
    """A Fun control stream for a toy-world image model (recipe_image_control.py); print the record's timings."""
    from .recipe_image_control import ImageControlRecipe, train_image_control

    recipe = ImageControlRecipe.smoke(args.seed) if args.smoke else ImageControlRecipe(seed=args.seed)
    for name in ("steps", "batch", "learning_rate"):
        if getattr(args, name) is not None:
            setattr(recipe, name, getattr(args, name))
    record = train_image_control(args.out, args.base, recipe, data=args.data)
    print(f"control model {Path(args.out) / record['model']}; timings {json.dumps(record['timings_s'])}")
    return record


def run_image_control_report(args: argparse.Namespace) -> dict:
    """Centroid error and colour / shape of an image model's control stream, seen vs held-out; print the summary."""
    from .report_image_control import run_image_control_report as report_control

    report = report_control(args.out, args.model, args.repeats, args.control_path, args.steps, args.guidance_scale,
                            args.control_context_scale, baseline=not args.no_baseline,
                            progress=not args.quiet)  # fmt: skip
    print(json.dumps({mode: report[mode] for mode in ("control", "t2i") if mode in report}, indent=2))
    return report


def _add_image_control_commands(actions: argparse._SubParsersAction) -> None:
    """``toyworld train-image-control`` and ``toyworld report-image-control``."""
    defaults = DefaultsHelpFormatter
    train = actions.add_parser(
        "train-image-control",
        help="train a Fun control stream for a toy-world image model on first frames and their edges; resumes",
        formatter_class=defaults,
    )
    train.add_argument("out", type=Path, help="working folder; the model folder <base name>-Control appears inside it")
    train.add_argument("--base", required=True, help="the image model (folder), e.g. train-image's Z-Image-Toy-Tiny")
    train.add_argument("--data", type=Path, help="a toy-world folder of stills with control images (default: render)")
    train.add_argument("--steps", type=int, help="training steps (default: the recipe's 1000)")
    train.add_argument("--batch", type=int, help="images per step (default: the recipe's 16)")
    train.add_argument("--learning-rate", type=float, help="peak learning rate (default: the recipe's 5e-4)")
    train.add_argument("--seed", type=int, default=0, help="seed of data and training")
    train.add_argument("--smoke", action="store_true", help="8 images, 2 steps: checks the chain")
    train.set_defaults(handler=run_train_image_control)

    report = actions.add_parser(
        "report-image-control",
        help="measure an image model's control stream: centroid error vs the control image, colour / shape",
        formatter_class=defaults,
    )
    report.add_argument("out", type=Path, help="folder for the images and report_image_control.json")
    report.add_argument("--model", required=True, help="the model (folder or name) with its control file")
    report.add_argument("--repeats", type=int, default=4, help="images per colour x shape pair")
    report.add_argument("--control-path", type=Path, help="another control file than the folder config's")
    report.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    report.add_argument("--guidance-scale", type=float, help="guidance (default: the model's)")
    report.add_argument("--control-context-scale", type=float, help="hint scale (default: the folder config's)")
    report.add_argument("--no-baseline", action="store_true", help="skip the t2i baseline (same prompts and seeds)")
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    report.set_defaults(handler=run_image_control_report)


def _add_image_commands(actions: argparse._SubParsersAction) -> None:
    """``toyworld train-image`` and ``toyworld report-image`` (and the control stream's pair)."""
    defaults = DefaultsHelpFormatter
    train = actions.add_parser(
        "train-image",
        help="train the tiny toy-world image model (Z-Image): stills, VAE, transformer; resumes",
        formatter_class=defaults,
    )
    train.add_argument("out", type=Path, help="working folder; the model folder Z-Image-Toy-Tiny appears inside it")
    train.add_argument("--vae", type=Path, help="use this trained AutoencoderKL folder instead of training one")
    train.add_argument("--steps", type=int, help="transformer training steps (default: the recipe's)")
    train.add_argument("--seed", type=int, default=0, help="seed of data, weights and training")
    train.add_argument("--smoke", action="store_true", help="every stage on 8 images for one or two steps")
    train.add_argument("--until", choices=("data", "vae", "all"), default="all",
                       help="stop after this stage (rerun without it to continue)")  # fmt: skip
    train.set_defaults(handler=run_train_image)

    report = actions.add_parser(
        "report-image", help="measure a toy-world image model: t2i colour / shape, seen vs held-out",
        formatter_class=defaults,
    )  # fmt: skip
    report.add_argument("out", type=Path, help="folder for the images and report_image.json")
    report.add_argument("--model", required=True, help="the image model (folder or name)")
    report.add_argument("--repeats", type=int, default=8, help="images per colour x shape pair")
    report.add_argument("--transformer-path", type=Path, help="other transformer weights, e.g. a checkpoint's file")
    report.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    report.add_argument("--guidance-scale", type=float, help="guidance (default: the model's)")
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    report.set_defaults(handler=run_image_report)
    _add_image_control_commands(actions)


def _add_toyworld(commands: argparse._SubParsersAction) -> None:
    toy = commands.add_parser("toyworld", help="the synthetic world of the tiny models: render, datasets, prompts")
    actions = toy.add_subparsers(dest="toyworld_command", required=True)
    defaults = DefaultsHelpFormatter

    render = actions.add_parser("render", help="render one clip", formatter_class=defaults)
    render.add_argument("prompt", help='what to render, e.g. "a red circle moving right"')
    render.add_argument("--output", type=Path, default=Path("samples/toyworld/clip.mp4"), help="video file")
    render.add_argument("--control", type=Path, help="also write the Canny control video here")
    render.add_argument("--first-frame", type=Path, help="also write the first frame here (a start image for i2v)")
    render.add_argument("--masks", type=Path, help="also write the inpaint mask videos into this folder")
    _add_clip_arguments(render)
    render.set_defaults(handler=run_render)

    write = actions.add_parser("write-dataset", help="render a training dataset (mp4 + JSON metadata)")
    write.add_argument("folder", type=Path, help="dataset folder")
    write.add_argument("--n", type=int, default=1000, help="number of clips (default 1000)")
    write.add_argument("--split", choices=SPLITS, default="train", help="train excludes the held-out pairs")
    write.add_argument("--images", type=int, default=0, help="number of still images too (default 0)")
    write.add_argument("--masks", action="store_true", help="also write the inpaint mask videos")
    write.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_clip_arguments(write)
    write.set_defaults(handler=run_write_dataset)

    prompts = actions.add_parser("prompts", help="write a prompts file over every combination")
    prompts.add_argument("output", type=Path, help="prompts file to write")
    prompts.add_argument("--split", choices=SPLITS, default="all", help="which combinations (default all 72)")
    prompts.add_argument("--repeats", type=int, default=1, help="how many times to list each (default 1)")
    prompts.set_defaults(handler=run_prompts)

    train_all = actions.add_parser(
        "train-all",
        help="train the packaged tiny models from scratch (data, VAE, transformers, calibration)",
        formatter_class=defaults,
    )
    train_all.add_argument("out", type=Path, help="working folder; finished model folders appear inside it")
    train_all.add_argument("--vae", type=Path, help="use this trained VAE folder instead of training one")
    train_all.add_argument(
        "--vae-steps",
        type=int,
        default=4000,
        help="steps of the first (cropped) VAE phase; later phases keep theirs",
    )
    train_all.add_argument(
        "--smoke", action="store_true", help="every stage on 8 clips for one or two steps (checks the chain, minutes)"
    )
    train_all.add_argument("--steps", type=int, help="training steps of every transformer (default: the recipe's)")
    train_all.add_argument("--models", nargs="+", help="which models (default: all)")
    train_all.add_argument("--seed", type=int, default=0, help="seed of data, weights and training")
    train_all.add_argument(
        "--family", choices=("wan", "cogvideox"), default="wan", help="which models: the Wan ones or CogVideoX-Fun"
    )
    train_all.add_argument(
        "--until",
        choices=("data", "vae", "all"),
        default="all",
        help="stop after this stage (--family cogvideox; rerun without it to continue)",
    )
    train_all.set_defaults(handler=run_train_all)

    report = actions.add_parser(
        "report", help="measure the tiny models: t2v, i2v and control on fixed seeds", formatter_class=defaults
    )
    report.add_argument("out", type=Path, help="folder for the videos and report.json")
    report.add_argument("--repeats", type=int, default=2, help="t2v videos per combination")
    report.add_argument("--inp-model", help="InP model of any family (default: the packaged Wan one)")
    report.add_argument(
        "--control-model",
        help="Control model, or 'none' to skip control (default: the packaged Wan one for a Wan InP model, "
        "none for another family)",
    )
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    report.set_defaults(handler=run_toy_report)

    train_vace = actions.add_parser(
        "train-vace", help="train the tiny VACE model over a trained InP model", formatter_class=defaults
    )
    train_vace.add_argument("out", type=Path, help="working folder; the model folder appears inside it")
    train_vace.add_argument("data", type=Path, help="a toy-world dataset folder (write-dataset, with control videos)")
    train_vace.add_argument("--inp-model", default="Wan2.1-Fun-Tiny-InP", help="the trained InP model to build on")
    train_vace.add_argument("--steps", type=int, default=6000, help="training steps")
    train_vace.add_argument("--seed", type=int, default=0, help="seed of the new weights and of training")
    train_vace.set_defaults(handler=run_train_vace)

    distill = actions.add_parser(
        "train-distill", help="distil a packaged tiny model into a 4-step student (DMD)", formatter_class=defaults
    )
    distill.add_argument("out", type=Path, help="working folder; the student's folder appears inside it")
    distill.add_argument("data", type=Path, help="a toy-world dataset folder (write-dataset, with control videos)")
    distill.add_argument(
        "--teacher", default="Wan2.1-Fun-Tiny-InP", help="the packaged model to distil (InP or Control)"
    )
    distill.add_argument(
        "--steps", type=int, default=2000, help="training steps (the critic's; the student's are 1 in 5)"
    )
    distill.add_argument("--cache-dir", type=Path, help="an existing latent cache of the teacher on these clips")
    distill.add_argument("--seed", type=int, default=0, help="seed of training")
    distill.add_argument(
        "--prompt-share",
        type=float,
        default=0.0,
        help="share of micro-batches that are t2v prompts alone, every combination's caption (0: none)",
    )
    distill.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="the student folder holds the moving average of its weights with this decay per update (0: none)",
    )
    distill.add_argument(
        "--regression-pairs",
        type=int,
        default=0,
        help="teacher samples (20 steps, guidance) the student is also regressed onto from the same noise (0: none)",
    )
    distill.add_argument("--regression-weight", type=float, default=0.25, help="weight of that regression")
    distill.set_defaults(handler=run_train_distill)

    report_distill = actions.add_parser(
        "report-distill",
        help="a distilled student beside its teacher (accuracy, PSNR, steps)",
        formatter_class=defaults,
    )
    report_distill.add_argument("out", type=Path, help="folder for the videos, report_distill.json and the plot")
    report_distill.add_argument("--student", required=True, help="the student (folder or name)")
    report_distill.add_argument("--teacher", help="the teacher (default: the one the student's recipe.json names)")
    report_distill.add_argument("--repeats", type=int, default=2, help="t2v videos per combination (headline)")
    report_distill.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 20], help="t2v sweep step counts")
    report_distill.add_argument("--quiet", action="store_true", help="no progress bars")
    report_distill.set_defaults(handler=run_distill_report)

    rewards = ("toy_colour", "toy_motion")
    train_reward = actions.add_parser(
        "train-reward", help="a reward LoRA on the packaged InP model (built-in toy reward)", formatter_class=defaults
    )
    train_reward.add_argument("out", type=Path, help="working folder (prompts, run/, run/lora.safetensors)")
    train_reward.add_argument("--reward", choices=rewards, default="toy_colour", help="the differentiable reward")
    train_reward.add_argument("--steps", type=int, default=60, help="training steps")
    train_reward.add_argument("--seed", type=int, default=0, help="seed of training")
    train_reward.set_defaults(handler=run_train_reward)

    report_reward = actions.add_parser(
        "report-reward", help="t2v accuracy and reward with and without a reward LoRA", formatter_class=defaults
    )
    report_reward.add_argument("out", type=Path, help="folder for the videos and report_reward.json")
    report_reward.add_argument("--lora", type=Path, required=True, help="the reward LoRA file")
    report_reward.add_argument("--reward", choices=rewards, default="toy_colour", help="the reward to measure")
    report_reward.add_argument("--repeats", type=int, default=2, help="t2v videos per combination")
    report_reward.set_defaults(handler=run_reward_report)

    report_vace = actions.add_parser(
        "report-vace", help="measure a VACE model: reference-to-video and masked completion", formatter_class=defaults
    )
    report_vace.add_argument("out", type=Path, help="folder for the videos and report_vace.json")
    report_vace.add_argument("--model", default="Wan2.1-VACE-Tiny", help="the VACE model (folder or name)")
    report_vace.add_argument("--repeats", type=int, default=2, help="videos per combination and task")
    report_vace.add_argument("--quiet", action="store_true", help="no progress bars")
    report_vace.set_defaults(handler=run_vace_report)
    _add_image_commands(actions)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(EVAL_COMMAND, help="measure generated videos")
    targets = evaluate.add_subparsers(dest="eval_command", required=True)
    toy = targets.add_parser("toyworld", help="judge toy-world videos (colour, shape, direction, persistence)")
    toy.add_argument("video_dir", type=Path, help="folder of videos, each with the .json that generate writes")
    toy.add_argument("--json", type=Path, help="write the full report (per video too) here")
    toy.add_argument("--prompts-file", type=Path, help="prompts in video-name order, for videos without a .json")
    toy.add_argument("--quiet", action="store_true", help="no progress bar")
    toy.set_defaults(handler=run_eval)


def add_toyworld_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``toyworld`` and ``eval toyworld`` on the main parser's subcommands."""
    _add_toyworld(commands)
    _add_eval(commands)
