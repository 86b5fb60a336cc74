"""Our pipeline vs diffusers' WanPipeline end to end: same weights, same noise, same sampler.

The model is a folder of the real components with the mid-size transformer of issue 5 (dim 512,
8 layers), a tiny UMT5 and a tiny VAE, at 256x256x17 (1,280 video tokens per pass).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel as DiffusersWan

from ..models.wan.keys import original_config_to_diffusers, original_to_diffusers_keys
from ..models.wan.tiny import TINY_TEXT_DIM, build_tiny_model_folder
from ..models.wan.transformer import WanTransformer3DModel
from ..pipelines.guidance import ClassifierFreeGuidance
from ..pipelines.schedulers import make_scheduler
from ..pipelines.wan import WanPipeline
from .common import summarize, time_interleaved
from .transformer import MID_CONFIG

SETTINGS = {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 4, "guidance_scale": 5.0}
PROMPT = "a red circle moving right"


def mid_folder(folder: Path) -> Path:
    """A model folder with the mid-size transformer (text_len 512, as diffusers pads) and tiny encoders."""
    build_tiny_model_folder(folder, "t2v")
    torch.manual_seed(0)
    WanTransformer3DModel.from_config({**MID_CONFIG, "text_dim": TINY_TEXT_DIM}).save_original(folder)
    return folder


def diffusers_twin(ours: WanPipeline) -> DiffusersWanPipeline:
    """diffusers' pipeline holding our pipeline's weights."""
    config = original_config_to_diffusers(dict(ours.transformer.config))
    transformer = DiffusersWan.from_config(config).eval()
    transformer.load_state_dict(original_to_diffusers_keys(ours.transformer.state_dict()))
    return DiffusersWanPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", 3.0),
        transformer=transformer,
    )


def run(repeats: int = 3) -> dict:
    """Time both pipelines (ours batched and sequential CFG) and compare their latents."""
    folder = mid_folder(Path(tempfile.mkdtemp(prefix="pipe-bench-")) / "mid")
    ours = WanPipeline.from_pretrained(folder)
    theirs = diffusers_twin(ours)
    theirs.set_progress_bar_config(disable=True)

    def run_ours(batched: bool) -> torch.Tensor:
        guidance = ClassifierFreeGuidance(SETTINGS["guidance_scale"], batched=batched)
        return ours(PROMPT, seed=0, sampler="Flow", shift=3.0, guidance=guidance, progress=False, **SETTINGS).latents

    def run_theirs(output_type: str = "np"):
        generator = torch.Generator("cpu").manual_seed(0)
        return theirs(PROMPT, generator=generator, output_type=output_type, **SETTINGS).frames

    # Same latents; then both timed end to end, decoding included (ours returns frames).
    diff = (run_ours(True) - run_theirs("latent")).abs().max().item()
    runs = time_interleaved(
        {
            "ours_batched_cfg": lambda: run_ours(True),
            "ours_sequential_cfg": lambda: run_ours(False),
            "diffusers": run_theirs,
        },
        repeats,
    )
    stats = {name: summarize(r) for name, r in runs.items()}
    result = {
        "benchmark": "wan pipeline end to end, ours vs diffusers WanPipeline",
        "settings": SETTINGS,
        "transformer": MID_CONFIG,
        "latents_max_abs_diff": diff,
        **stats,
        "runs": runs,
    }
    for name in ("ours_batched_cfg", "ours_sequential_cfg"):
        result[f"ratio_{name}_wall_median"] = stats[name]["wall_s_median"] / stats["diffusers"]["wall_s_median"]
        result[f"ratio_{name}_cpu_median"] = stats[name]["cpu_s_median"] / stats["diffusers"]["cpu_s_median"]
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k.endswith("diff")}, indent=1))
    return result
