"""Tiny Wan model folders: the real architectures at toy sizes, laid out like a release.

Tests, the offline demo and the toy-world training start from these folders, so every
loader runs exactly as it does on a downloaded model. The weights are seeded random until
trained ones are shipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from ...config import FOLDER_CONFIG_NAME, TWO_EXPERT_LAYOUT, GenerationDefaults, ModelConfig, save_model_config
from ...io.files import reset_tree_modes
from .image_encoder import WanImageEncoder, tiny_vision_config
from .text_encoder import WanTextEncoder, build_word_tokenizer, tiny_umt5_config
from .transformer import WanTransformer3DModel
from .vace import transformer_class_for
from .vae import tiny_vae_config, tiny_wan22_vae_config
from .variants import ANIMATE_RELEASE_DEFAULTS, VACE_DEFAULTS, tiny_config

# The toy world's words (colours, shapes, motions and the caption phrasing).
TOY_VOCABULARY = [
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "circle",
    "square",
    "triangle",
    "moving",
    "going",
    "heading",
    "sliding",
    "drifting",
    "travelling",
    "traveling",
    "left",
    "right",
    "up",
    "down",
    "upward",
    "downward",
    "upwards",
    "downwards",
    "to",
    "towards",
    "toward",
    "shape",
    "ball",
    "box",
    "disc",
    "disk",
    "block",
    "wedge",
    "over",
    "across",
    "on",
    "black",
    "background",
    "video",
    "of",
]

TINY_TEXT_DIM = 32
TINY_DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=17, fps=8, steps=10, guidance_scale=6.0, shift=3.0, sampler="Flow"
)
# The tiny VACE model samples as the Wan2.1-VACE release does (sizes and steps of the tiny ones).
TINY_VACE_DEFAULTS = dataclasses.replace(TINY_DEFAULTS, **VACE_DEFAULTS["Wan2.1"])
# The tiny Animate model as Wan2.2-Animate-14B (DPM++, shift 5, 20 steps, no guidance).
TINY_ANIMATE_DEFAULTS = dataclasses.replace(TINY_DEFAULTS, **ANIMATE_RELEASE_DEFAULTS)


def write_folder_config(
    folder: Path,
    defaults: GenerationDefaults,
    note: str,
    image_encoder_subpath: str | None = None,
    experts: dict | None = None,
) -> None:
    """The ``videox_fun.yaml`` of a tiny model folder: components in subfolders, Fun InP masking.

    experts: the transformer / transformer_2 subpaths and boundary of a two-expert folder.
    """
    config = ModelConfig(
        format="civitai",
        **(experts or {}),
        vae_subpath="vae",
        text_encoder_subpath="text_encoder",
        tokenizer_subpath="text_encoder",
        image_encoder_subpath=image_encoder_subpath,
        masked_fill=-1.0,
        defaults=defaults,
        note=note,
    )
    save_model_config(config, folder / FOLDER_CONFIG_NAME)


def build_tiny_model_folder(
    folder: str | Path,
    variant: str = "inp",
    seed: int = 0,
    with_clip: bool = False,
    note: str = "",
    boundary: float | None = None,
) -> Path:
    """Write a complete tiny model folder (transformer, VAE, text encoder, optional CLIP tower).

    variant: ``t2v``, ``inp``, ``control``, ``control_ref``, ``camera``, ``ti2v`` (Wan2.2 TI2V-5B's
    structure, with a tiny Wan2.2-style VAE: 48 latent channels, 16x spatial), ``vace`` (Wan2.1-VACE's:
    a context stream hinting every 2nd layer), ``animate`` (Wan2.2-Animate's: pose, motion and face modules; always
    with the CLIP tower, which it conditions on), or a Wan2.2-Fun layout (``a14b_control``, ``a14b_camera``,
    ``5b_inp``, ``5b_control``, ``5b_camera``: the 5B ones with the Wan2.2-style VAE); see :func:`tiny_config`.
    with_clip: give the transformer the i2v CLIP branch and ship a tiny vision tower.
    boundary: make it a Wan2.2 A14B-style two-expert folder (``high_noise_model/`` and
    ``low_noise_model/``, differently initialised) switching experts at this share of 1000.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    overrides: dict[str, object] = {"text_dim": TINY_TEXT_DIM}
    with_clip = with_clip or variant == "animate"
    if with_clip:  # Animate keeps its own model_type (its CLIP branch is always on)
        overrides.update(image_dim=24, **({} if variant == "animate" else {"model_type": "i2v"}))
    experts = None
    if boundary is None:
        tiny_transformer(variant, **overrides).save_original(folder)
    else:
        experts = {**TWO_EXPERT_LAYOUT, "boundary": boundary}
        for subpath in TWO_EXPERT_LAYOUT.values():
            tiny_transformer(variant, **overrides).save_original(folder / subpath)

    wan22_vae = tiny_config(variant)["out_dim"] == 48  # TI2V and the Fun 5B layouts: Wan2.2's 48-channel VAE
    vae_config = tiny_wan22_vae_config() if wan22_vae else tiny_vae_config()
    AutoencoderKLWan(**vae_config).save_pretrained(folder / "vae")

    tokenizer = build_word_tokenizer(TOY_VOCABULARY)
    text_config = tiny_umt5_config(vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM, num_heads=2, d_ff=64)
    WanTextEncoder.from_config(text_config, tokenizer).save_pretrained(folder / "text_encoder")

    image_subpath = None
    if with_clip:
        WanImageEncoder.from_config(tiny_vision_config(hidden_size=24)).save_pretrained(folder / "image_encoder")
        image_subpath = "image_encoder"

    # Written last: its presence marks the folder complete.
    defaults = {"vace": TINY_VACE_DEFAULTS, "animate": TINY_ANIMATE_DEFAULTS}.get(variant, TINY_DEFAULTS)
    write_folder_config(folder, defaults, note, image_subpath, experts)
    return reset_tree_modes(folder)  # save_pretrained writes its safetensors 0600


def tiny_transformer(variant: str, **overrides: object) -> WanTransformer3DModel:
    """A seeded-random tiny transformer of ``variant`` (the global generator's draw).

    VACE: its hint projections are drawn too. The release starts them at zero (a fresh stream
    leaves the base model unchanged), which would make a random model deaf to its VACE inputs.
    """
    config = tiny_config(variant, **overrides)
    model = transformer_class_for(config).from_config(config)
    for name, module in model.named_modules():
        if name.endswith(("before_proj", "after_proj")):
            module.reset_parameters()  # torch's default Linear initialisation
    return model
