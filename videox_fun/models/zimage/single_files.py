"""Z-Image from single files, as ComfyUI ships them (Comfy-Org's ``z_image_turbo`` / ``z_image`` split files).

* the transformer (``z_image_turbo_bf16.safetensors``): the original Z-Image names (fused ``attention.qkv``,
  ``x_embedder``, ``final_layer``), with or without ComfyUI's ``model.diffusion_model.`` prefix, or diffusers'; read
  through diffusers' own converter (:func:`~.transformer.original_to_diffusers`), its config off its shapes;
* the VAE (``ae.safetensors``): FLUX.1's autoencoder in the original ldm names (or diffusers'), read through
  diffusers' ``convert_ldm_vae_checkpoint``, the released config;
* the text encoder (``qwen_3_4b.safetensors``): Qwen3-4B's language model under ``model.``, read by transformers'
  ``Qwen3Model``; the tokenizer from VideoX-Fun's folders (``qwen3_tokenizer``, ``Z-Image-Turbo/tokenizer``,
  ``Qwen3-4B``).

Base or Turbo is read off the file's (or the model_name's) name, as a folder's is off the folder name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..image_single_files import (
    COMFY_PREFIX,
    TOKENIZER_TENSORS,
    ComponentFile,
    ImageParts,
    ImageSingleFiles,
    autoencoder_to_ldm,
    decoder_sizes,
    is_ldm_autoencoder,
    ldm_to_autoencoder,
    looks_like_vae,
    register_reader,
    transformers_strict,
    without_comfy_prefix,
)
from ..loading import drop_prefixed, strip_prefix
from .transformer import MARKER, ZImageTransformer, check_is_zimage, config_from_state, is_original_state
from .transformer import original_to_diffusers as transformer_to_diffusers
from .vae import ZImageVAE
from .variants import SIZE_RULES, load_config, variant_of

# FLUX.1's released autoencoder (``ae.safetensors``; diffusers' FLUX.1-dev ``vae/config.json``), which Z-Image uses.
FLUX_AE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
    "force_upcast": True,
}
# Qwen3-4B's constants that its shapes do not say (its released config.json).
QWEN3_4B: dict[str, Any] = {
    "model_type": "qwen3",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "attention_bias": False,
}
LM_HEAD = "lm_head."  # a Qwen3ForCausalLM export's head: Z-Image reads hidden states and never runs it
# diffusers' names -> the original Z-Image ones (the renames of diffusers' converter, reversed; q / k / v fused).
ORIGINAL_RENAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_q.": ".attention.q_norm.",
    ".attention.norm_k.": ".attention.k_norm.",
}


def diffusers_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-named Z-Image transformer state in the original names (ComfyUI's file): renamed keys, each
    attention's q / k / v weights fused into ``qkv`` (what :func:`~.transformer.original_to_diffusers` splits)."""
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue  # fused with to_q below
        if ".attention.to_q." in key:
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(
                [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            )  # (3 * dim, dim)
            continue
        for ours, theirs in ORIGINAL_RENAMES.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def is_qwen3(keys: list[str]) -> bool:
    """Whether names are a Qwen3 language model's (q / k norms in the attention, no vision tower)."""
    vision = any(k.startswith(("visual.", "model.visual.")) for k in keys)
    return any(k.endswith("self_attn.q_norm.weight") for k in keys) and not vision


class ZImageSingleFiles(ImageSingleFiles):
    """Z-Image's single files (see the module docstring)."""

    family = "zimage"
    label = "Z-Image"
    transformer_class = ZImageTransformer
    vae_class = ZImageVAE
    vae_release = FLUX_AE_CONFIG
    pipeline = "videox_fun.pipelines.zimage:ZImagePipeline"
    sizes = SIZE_RULES
    tokenizer_folders = ("qwen3_tokenizer", "Z-Image-Turbo/tokenizer", "Z-Image/tokenizer", "Qwen3-4B")

    def claims(self, kind: str, keys: list[str]) -> bool:
        """The caption embedder (transformer); an autoencoder of 2-D blocks without FLUX.2's batch norm (VAE);
        Qwen3 (text encoder)."""
        if kind == "transformer":
            return any(key.removeprefix(COMFY_PREFIX) == MARKER for key in keys)
        if kind == "vae":
            wan_style = any(k.endswith(".gamma") or ".downsamples." in k for k in keys)  # the 3-D causal VAEs
            return looks_like_vae(keys) and not wan_style and not any(k.startswith("bn.") for k in keys)
        return is_qwen3(keys)

    def transformer_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """Original names converted by diffusers' converter; diffusers' names without a wrapper prefix."""
        if is_original_state(state):
            return transformer_to_diffusers(state, source=str(source))
        state = strip_prefix(without_comfy_prefix(state), ("transformer.",))
        check_is_zimage(state, str(source))
        return state

    def transformer_config(self, state: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> dict[str, Any]:
        """Read off the shapes (:func:`~.transformer.config_from_state`)."""
        return config_from_state(state)

    def vae_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """ldm names through diffusers' converter; diffusers' as they are."""
        state = strip_prefix(state, ("first_stage_model.", "vae."))
        return ldm_to_autoencoder(state, config) if is_ldm_autoencoder(state) else state

    def text_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """``Qwen3Model``'s names: ComfyUI's / the causal LM's ``model.`` prefix off, the tokenizer tensor and the LM
        head dropped (named in the log)."""
        state = dict(state)
        drop_prefixed(state, (*TOKENIZER_TENSORS, LM_HEAD), "not read: the tokenizer folder tokenizes, and Z-Image "
                      "reads hidden states, not the LM head", str(source))  # fmt: skip
        return strip_prefix(state, ("model.",))

    def text_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Qwen3-4B's constants, the sizes off the shapes (all of them are there: the q norm is one head wide)."""
        return {**QWEN3_4B, **decoder_sizes(state, state["layers.0.self_attn.q_norm.weight"].shape[0])}

    def text_width(self, config: Mapping[str, Any]) -> int:
        """Qwen3's hidden size (2560 for Qwen3-4B)."""
        return int(config["hidden_size"])

    def transformer_text_width(self, config: Mapping[str, Any]) -> int:
        """The caption embedder's input width."""
        return int(config["cap_feat_dim"])

    def build_text_encoder(
        self, file: ComponentFile, state: dict[str, torch.Tensor], dtype: torch.dtype, parts: ImageParts
    ) -> nn.Module:
        """``Qwen3Model`` through transformers' loader, strictly, with the Qwen tokenizer of the parts."""
        from transformers import Qwen3Model

        from .text_encoder import ZImageTextEncoder, load_qwen_tokenizer

        model = transformers_strict(Qwen3Model, file.config, state, file.path, dtype)
        return ZImageTextEncoder(model, load_qwen_tokenizer(parts.tokenizer))

    def variant_folder(self, parts: ImageParts) -> Path:
        """The name base or Turbo is read off: the model name, else the transformer file's."""
        return Path(parts.name or parts.transformer.path.stem)

    def model_config(self, parts: ImageParts) -> Any:
        """The release's config of the variant the name says."""
        return load_config(None, self.variant_folder(parts))

    def variant(self, parts: ImageParts) -> tuple[str, tuple[str, ...]]:
        """Z-Image or Z-Image-Turbo; every Z-Image mode (the control ones with a control file per request)."""
        from ...families.zimage import ZIMAGE_MODES

        return variant_of(self.variant_folder(parts)).name, tuple(ZIMAGE_MODES)

    def pipeline_arguments(self, parts: ImageParts) -> dict[str, Any]:
        """The variant's name."""
        return {"variant": self.variant(parts)[0]}

    def diffusers_pipeline(self, parts: ImageParts) -> str:
        """diffusers' ``ZImagePipeline``."""
        return "ZImagePipeline"

    def transformer_file_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The original names, as ComfyUI's ``z_image_turbo_bf16.safetensors``."""
        return diffusers_to_original(state)

    def vae_file_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The ldm names, as ``ae.safetensors``."""
        return autoencoder_to_ldm(state, len(config["block_out_channels"]))

    def text_file_state(self, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
        """``Qwen3Model``'s weights under ``model.``, as ComfyUI's ``qwen_3_4b.safetensors``."""
        return {f"model.{key}": value for key, value in text_encoder.model.state_dict().items()}


ZIMAGE_FILES = register_reader(ZImageSingleFiles())
