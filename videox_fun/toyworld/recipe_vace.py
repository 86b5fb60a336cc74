"""The recipe of the packaged tiny VACE model (``Wan2.1-VACE-Tiny``), built on the packaged InP model.

The releases put a VACE stream beside a trained text-to-video model and train the stream. Here
the text-to-video base is the packaged ``Wan2.1-Fun-Tiny-InP`` with its conditioning channels
folded away: in text-to-video its extra inputs are constant (the known-mask channels are 0 and
the masked video is an all-black clip), so their contribution to ``patch_embedding`` becomes part
of its bias, and the first 16 input channels remain (:func:`t2v_from_inp`). The VACE blocks start
as copies of the main blocks they hint (their projections at zero, so the start model is the base),
then the normal trainer runs ``--train_mode vace`` on a latent cache of the toy world, every
weight trainable: the fold is exact only where the black clip's latent equals its mean, and the
blocks must undo the rest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import FOLDER_CONFIG_NAME
from ..io.files import reset_tree_modes
from ..models.loading import public_config
from ..models.wan.tiny import write_folder_config
from ..models.wan.transformer import WanTransformer3DModel
from ..models.wan.vace import WanVACETransformer3DModel, every_nth_layer
from ..models.wan.vae import WanVAE
from ..models.wan.variants import variant_of
from ..pipelines.conditioning import masked_video
from .recipe import DEFAULTS, Recipe, train_on_cache

NAME = "Wan2.1-VACE-Tiny"
BASE = "Wan2.1-Fun-Tiny-InP"


@dataclass
class VaceRecipe:
    """Every number of the VACE recipe; written to recipe.json beside the weights."""

    seed: int = 0
    steps: int = 6000
    learning_rate: float = 3e-4
    batch: int = 16
    clips: int = 1200
    vace_every: int = 2  # a VACE block at every 2nd layer, as Wan2.1-VACE-1.3B
    # Everything: the fold leaves an error that depends on the position (the black clip's latent varies over
    # the frame, 0.31 std against 0.22 mean magnitude), which only the blocks can undo.
    trainable_modules: tuple[str, ...] | None = None
    # Share of clips whose caption names the motion alone ("moving right"): with a subject frame in front
    # the model must take colour and shape from it (the captions otherwise name them, and it need not look).
    motion_only_share: float = 0.0
    # Share of micro-batches with a subject frame in front; raised with motion-only captions, which without a
    # reference leave colour and shape to a guess.
    reference_share: float = 0.35


def black_clip_latent(vae: WanVAE, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The latent (z, F', h, w) of an all-black clip: the InP model's masked video in text-to-video."""
    video = torch.zeros(1, 3, num_frames, height, width)
    black = masked_video(video, torch.ones(1, 1, num_frames, height, width), fill=-1.0)
    with torch.no_grad():
        return vae.encode(black.to(vae.dtype))[0].float()


def t2v_from_inp(inp: WanTransformer3DModel, black: torch.Tensor) -> WanTransformer3DModel:
    """A text-to-video model equal to ``inp`` in text-to-video up to the spread of ``black`` over positions.

    black: the masked-video latent (z, F', h, w) of text-to-video; its mean per channel is folded.
    """
    variant = variant_of(inp.config)
    if variant.channel_kinds != {"mask", "masked_video"}:
        raise ValueError(f"the base must be an InP model, got the {variant.name} variant")
    z = inp.config.out_dim
    weight = inp.patch_embedding.weight.detach()  # (C, z + 4 + z, pf, ph, pw)
    masked = weight[:, z + 4 :]  # the masked-video channels (the mask channels see zeros in t2v)
    constant = black.mean(dim=(1, 2, 3))  # (z,)
    folded_bias = inp.patch_embedding.bias.detach() + torch.einsum("ocfhw,c->o", masked, constant)
    config = {**public_config(inp.config), "in_dim": z}
    t2v = WanTransformer3DModel.from_config(config)
    state = {k: v for k, v in inp.state_dict().items() if not k.startswith("patch_embedding.")}
    state["patch_embedding.weight"] = weight[:, :z].clone()
    state["patch_embedding.bias"] = folded_bias
    t2v.load_state_dict(state, strict=True)
    return t2v.eval()


def vace_from_t2v(t2v: WanTransformer3DModel, every: int, seed: int) -> WanVACETransformer3DModel:
    """A VACE model on ``t2v``: blocks at every ``every``-th layer copied from the main blocks they hint,
    zero ``before_proj`` / ``after_proj`` (so it starts as the base), a fresh context embedding."""
    torch.manual_seed(seed)
    layers = every_nth_layer(t2v.config.num_layers, every)
    config = {**public_config(t2v.config), "model_type": "vace", "vace_layers": layers, "vace_in_dim": 96}
    vace = WanVACETransformer3DModel.from_config(config)
    state = vace.state_dict()
    state.update(t2v.state_dict())
    for slot, layer in enumerate(layers):
        for name, tensor in t2v.blocks[layer].state_dict().items():
            state[f"vace_blocks.{slot}.{name}"] = tensor.clone()
    vace.load_state_dict(state, strict=True)
    return vace.eval()


def base_folder(out: Path, inp_folder: Path, recipe: VaceRecipe) -> Path:
    """The untrained VACE folder: the folded InP base with its stream, the InP folder's VAE and text encoder."""
    folder = out / NAME
    if (folder / FOLDER_CONFIG_NAME).is_file():
        return folder
    inp = WanTransformer3DModel.from_pretrained(inp_folder)
    vae = WanVAE.from_pretrained(inp_folder / "vae")
    black = black_clip_latent(vae, DEFAULTS.num_frames, DEFAULTS.height, DEFAULTS.width)
    vace = vace_from_t2v(t2v_from_inp(inp, black), recipe.vace_every, recipe.seed)
    vace.save_original(folder)
    for part in ("vae", "text_encoder"):
        shutil.copytree(inp_folder / part, folder / part, dirs_exist_ok=True)
    reset_tree_modes(folder)
    note = (
        f"VACE stream trained on the toy world over the folded {BASE} (videox-fun toyworld train-vace); see recipe.json"
    )
    write_folder_config(folder, DEFAULTS, note)
    return folder


def motion_only_metadata(data: Path, clips: int, share: float, seed: int) -> Path:
    """The first ``clips`` training entries with ``share`` of them (drawn with ``seed``) captioned by their motion
    alone ("moving right"); written once beside the data's metadata."""
    import numpy as np

    from .recipe import transformer_metadata
    from .world import parse_caption

    path = data / f"metadata_train_{clips}_motion_only_{round(share * 100)}.json"
    if path.is_file():
        return path
    entries = json.loads(transformer_metadata(data, clips).read_text())
    chosen = np.random.default_rng(seed).random(len(entries)) < share
    for entry, motion_only in zip(entries, chosen, strict=True):
        if motion_only:
            entry["text"] = f"moving {parse_caption(entry['text']).direction}"
    path.write_text(json.dumps(entries, indent=2))
    return path


def train_vace(out: str | Path, inp_folder: str | Path, data: str | Path, recipe: VaceRecipe | None = None) -> Path:
    """Build the VACE folder over ``inp_folder``, train its stream on ``data``'s clips; returns the folder.

    Resumable: the folder and the latent cache are kept, the trainer resumes from its latest checkpoint.
    """
    recipe = recipe or VaceRecipe()
    from ..registry import resolve_model

    out, data = Path(out), Path(data)
    folder = base_folder(out, resolve_model(inp_folder), recipe)
    steps = Recipe.one_model(NAME, recipe.seed, recipe.batch, recipe.steps, recipe.learning_rate, recipe.clips)
    modules = list(recipe.trainable_modules) if recipe.trainable_modules else None
    extra = {}
    if recipe.motion_only_share > 0:
        extra["train_data_meta"] = str(motion_only_metadata(data, recipe.clips, recipe.motion_only_share, recipe.seed))
    result = train_on_cache(
        out,
        folder,
        data,
        steps,
        "vace",
        trainable_modules=modules,
        vace_reference_share=recipe.reference_share,
        **extra,
    )
    WanTransformer3DModel.from_pretrained(result.transformer_dir).save_original(folder)
    record = {"recipe": asdict(recipe), "base": BASE, "final_loss": result.losses[-1] if result.losses else None}
    (folder / "recipe.json").write_text(json.dumps(record, indent=1))
    return folder
