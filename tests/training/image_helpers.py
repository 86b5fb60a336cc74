"""Helpers of the image-family training tests (FLUX.1, Z-Image, Qwen-Image): tiny folders, a small image dataset
in two aspect ratios, fast settings, the trained transformer, and sampling in ours and in diffusers' pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline as DiffusersFluxPipeline
from diffusers import QwenImagePipeline as DiffusersQwenImagePipeline
from diffusers import ZImagePipeline as DiffusersZImagePipeline
from transformers import PreTrainedTokenizerFast

from videox_fun.api import RuntimeOptions, load_pipeline
from videox_fun.models.flux.tiny import build_tiny_flux_folder
from videox_fun.models.flux.transformer import FluxTransformer
from videox_fun.models.lora import merge_lora
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.models.qwenimage.transformer import QwenImageTransformer
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.models.zimage.transformer import ZImageTransformer
from videox_fun.pipelines.common import pack_latents, seeded_noise, unpack_latents
from videox_fun.training.data import write_test_dataset
from videox_fun.training.trainer import TrainResult

FAMILIES = ("flux", "zimage", "qwenimage")
BUILDERS = {"flux": build_tiny_flux_folder, "zimage": build_tiny_zimage_folder,
            "qwenimage": build_tiny_qwenimage_folder}  # fmt: skip
TRANSFORMERS = {"flux": FluxTransformer, "zimage": ZImageTransformer, "qwenimage": QwenImageTransformer}
# Small and fast: 4 images in two aspect-ratio buckets of about 48^2 pixels (32x64 and 48x48: 2x4 and 3x3 tokens).
IMAGE_SIZES = ((32, 64), (48, 48))
IMAGE_FAST: dict[str, Any] = dict(
    image_sample_size=[48],
    enable_bucket=True,
    report_to="none",
    checkpointing_steps=1000,
    train_batch_size=2,
    learning_rate=1e-3,
)
# Sampling settings of the LoRA comparisons: a single guidance pass in every family (FLUX.1-dev embeds its guidance,
# the tiny Z-Image is Turbo at guidance 0, Qwen-Image's true CFG 1 runs one pass), as diffusers runs them.
PROMPT, SIZE, STEPS, SEED = "a red square", 32, 3, 7
GUIDANCE = {"flux": 3.5, "zimage": 0.0, "qwenimage": 1.0}


def write_image_dataset(folder: Path) -> Path:
    """Metadata of four images (``"type": "image"``), two 32x64 and two 48x48, captioned by colour."""
    return write_test_dataset(folder, n_videos=0, n_images=4, sizes=IMAGE_SIZES)


def trained_transformer(family: str, folder: Path, result: TrainResult) -> torch.nn.Module:
    """The transformer a run wrote: the folder's with the LoRA merged, or the fine-tuned folder; eval mode."""
    model_class = TRANSFORMERS[family]
    if result.lora_path is None:
        return model_class.from_pretrained(result.transformer_dir).eval()
    model = model_class.from_pretrained(folder / "transformer")
    merge_lora(model, result.lora_path)
    return model.eval()


def diffusers_pipeline(family: str, folder: Path) -> Any:
    """diffusers' pipeline of the family, every component read from the folder by diffusers / transformers.

    FLUX.1's ``model_index.json`` names ``T5TokenizerFast``, which transformers 5 cannot build from the tiny word
    tokenizer's file: the fast tokenizer the file holds is given instead.
    """
    if family == "flux":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer_2"))
        return DiffusersFluxPipeline.from_pretrained(str(folder), tokenizer_2=tokenizer)
    return {"zimage": DiffusersZImagePipeline, "qwenimage": DiffusersQwenImagePipeline}[family].from_pretrained(
        str(folder)
    )


def diffusers_latents(family: str, pipe: Any) -> torch.Tensor:
    """diffusers' final latents (1, 16, h, w) from our seeded noise, at the comparison settings."""
    noise = seeded_noise((1, 16, SIZE // 8, SIZE // 8), SEED, "cpu")  # (1, 16, h, w)
    packed = family != "zimage"
    settings: dict[str, Any] = dict(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                                    output_type="latent", latents=pack_latents(noise) if packed else noise)  # fmt: skip
    if family == "qwenimage":
        settings["true_cfg_scale"] = GUIDANCE[family]
    else:
        settings["guidance_scale"] = GUIDANCE[family]
    with torch.no_grad():
        latents = pipe(**settings).images
    return unpack_latents(latents, SIZE // 8, SIZE // 8) if packed else latents  # (1, 16, h, w)


def our_latents(folder: Path, lora_path: Path | None = None) -> torch.Tensor:
    """Our pipeline's final latents (1, 16, h, w) through the programmatic entry (``--lora-path`` merged)."""
    options = RuntimeOptions(device="cpu", lora_path=[str(lora_path)] if lora_path else [])
    loaded = load_pipeline(str(folder), options)
    guidance = GUIDANCE[loaded.recognised.family.name]
    out = loaded.pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                      seed=SEED, progress=False)  # fmt: skip
    loaded.close()
    return out.latents[:, :, 0]
