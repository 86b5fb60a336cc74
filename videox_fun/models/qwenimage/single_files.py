"""Qwen-Image (and Qwen-Image-Edit) from single files, as ComfyUI ships them (Comfy-Org's ``Qwen-Image_ComfyUI``
split files).

* the transformer (``qwen_image_*.safetensors``, ``qwen_image_edit_*``): diffusers' names (the release's layout
  is diffusers' only), with or without ComfyUI's ``model.diffusion_model.`` prefix; the released config (sized by
  the shapes); ``zero_cond_t`` (Edit-2511's pictures modulated at timestep 0) is not in the weights: the loader's
  widget says it, as in VideoX-Fun;
* the VAE (``qwen_image_vae.safetensors``): the Wan2.1 VAE's original names (``conv1``, ``encoder.downsamples``...)
  or diffusers'; the original names are renamed by the inverse of the library's own diffusers-to-original rules
  for the config (:func:`videox_fun.models.wan.vae.wan_vae_to_original`), which hold for any block count; the
  released config;
* the text encoder (``qwen_2.5_vl_7b*.safetensors``): Qwen2.5-VL's weights in transformers' checkpoint names
  (``model.layers...``, ``visual...``, ``lm_head``), which transformers' own loader maps (``fp8_scaled`` widened);
  the tokenizer from VideoX-Fun's folders (``qwen2_tokenizer``, ``Qwen-Image/tokenizer``), and for an edit model
  the image processor (``qwen2_processor``, ``Qwen-Image-Edit/processor``).

Which variant the files make is what VideoX-Fun's CombineQwenImagePipeline reads: with a processor an edit model
(Edit-2509 when the model name says 2509 or 2511; 2511 when the transformer was read with ``zero_cond_t``), else
Qwen-Image (text to image, and control with a Fun control file per request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
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
    looks_like_vae,
    register_reader,
    transformers_strict,
    without_comfy_prefix,
)
from ..loading import count_blocks, drop_prefixed, strip_prefix
from ..wan.vae import is_original_layout, wan_vae_to_original
from .transformer import RELEASED_ARCHITECTURE, TRANSFORMER_CLASS_NAME, QwenImageTransformer
from .vae import QwenImageVAE
from .variants import EDIT, EDIT_PLUS, SIZE_RULES, T2I, QwenImageVariant, default_settings, load_config

MARKERS = ("txt_norm.weight", "img_in.weight")  # Qwen-Image's transformer: the text norm and image projection
RELEASED_AXES = {128: [16, 56, 56]}  # the rotary split of the released 128-d heads (not in the weights)
# Qwen2.5-VL-7B-Instruct's released config (what a text encoder file without metadata is built as).
QWEN25_VL_7B: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
    "text_config": {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6, "bos_token_id": 151643, "eos_token_id": 151645, "sliding_window": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    },
}  # fmt: skip
# transformers' in-memory names of Qwen2.5-VL -> its checkpoint names (ComfyUI's file), which its loader maps back.
CHECKPOINT_NAMES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def is_qwen_vl(keys: list[str]) -> bool:
    """Whether names are a Qwen2 language model's (biased q projections), as Qwen2.5-VL's."""
    return any(k.endswith("layers.0.self_attn.q_proj.bias") for k in keys)


def diffusers_vae_names(config: Mapping[str, Any]) -> dict[str, str]:
    """The Wan2.1-structured VAE's original name -> diffusers name for ``config``: the library's diffusers-to-original
    rules (:func:`~videox_fun.models.wan.vae.wan_vae_to_original`) applied to every name of the model, reversed."""
    with torch.device("meta"):
        names = list(QwenImageVAE.model_class.from_config(dict(config)).state_dict())
    original = wan_vae_to_original(dict.fromkeys(names), config)  # type: ignore[arg-type]  (names only)
    return dict(zip(original, names, strict=True))


class QwenImageSingleFiles(ImageSingleFiles):
    """Qwen-Image's single files (see the module docstring)."""

    family = "qwenimage"
    label = "Qwen-Image"
    transformer_class = QwenImageTransformer
    vae_class = QwenImageVAE
    vae_release: Mapping[str, Any] = {"_class_name": "AutoencoderKLQwenImage"}  # diffusers' defaults: the release's
    pipeline = "videox_fun.pipelines.qwenimage:QwenImagePipeline"
    sizes = SIZE_RULES
    tokenizer_folders = ("qwen2_tokenizer", "Qwen-Image/tokenizer", "Qwen2.5-VL-7B-Instruct")
    processor_folders = ("qwen2_processor", "Qwen-Image-Edit/processor", "Qwen2.5-VL-7B-Instruct")

    def claims(self, kind: str, keys: list[str]) -> bool:
        """The text norm and image projection (transformer); the 3-D causal VAE (its RMS norms' ``gamma``, or its
        original names); Qwen2.5-VL (text encoder)."""
        if kind == "transformer":
            stripped = {key.removeprefix(COMFY_PREFIX) for key in keys}
            return all(marker in stripped for marker in MARKERS)
        if kind == "vae":
            return looks_like_vae(keys) and any(k.endswith(".gamma") or k == "conv1.weight" for k in keys)
        return is_qwen_vl(keys)

    def transformer_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """diffusers' names without a wrapper prefix."""
        return strip_prefix(without_comfy_prefix(state), ("transformer.",))

    def transformer_config(self, state: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> dict[str, Any]:
        """The released structure sized by the shapes; ``zero_cond_t`` from the loader's widget."""
        head_dim = state["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        if head_dim not in RELEASED_AXES:
            raise ValueError(f"heads of {head_dim} channels are not Qwen-Image's (128): give the transformer config")
        inner, in_channels = state["img_in.weight"].shape
        patch = RELEASED_ARCHITECTURE["patch_size"]
        return {
            "_class_name": TRANSFORMER_CLASS_NAME,
            "patch_size": patch,
            "in_channels": in_channels,
            "out_channels": state["proj_out.weight"].shape[0] // (patch * patch),
            "num_layers": count_blocks(state, "transformer_blocks."),
            "attention_head_dim": head_dim,
            "num_attention_heads": inner // head_dim,
            "joint_attention_dim": state["txt_in.weight"].shape[1],
            "guidance_embeds": False,
            "axes_dims_rope": RELEASED_AXES[head_dim],
            "zero_cond_t": bool(options.get("zero_cond_t", False)),
        }

    def vae_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Original names renamed for the config (a name no rule knows stays, for the strict check to name);
        diffusers' as they are."""
        state = strip_prefix(state, ("vae.",))
        if not is_original_layout(state):
            return state
        names = diffusers_vae_names(config)
        return {names.get(key, key): value for key, value in state.items()}

    def text_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """Checkpoint names (transformers' loader maps them): the tokenizer tensor dropped (logged), a file without
        the causal LM's ``model.`` prefix given it."""
        state = dict(state)
        drop_prefixed(state, TOKENIZER_TENSORS, "not read: the tokenizer folder tokenizes", str(source))
        if any(key.startswith("model.") for key in state):
            return state
        return {key if key.startswith(("visual.", "lm_head.")) else f"model.{key}": value for key, value in
                state.items()}  # fmt: skip

    def text_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Qwen2.5-VL-7B's released config (the loader names any weight it does not fit)."""
        return QWEN25_VL_7B

    def text_width(self, config: Mapping[str, Any]) -> int:
        """The language model's hidden size (3584 for Qwen2.5-VL-7B)."""
        return int(config["text_config"]["hidden_size"])

    def transformer_text_width(self, config: Mapping[str, Any]) -> int:
        """The text projection's input width."""
        return int(config["joint_attention_dim"])

    def build_text_encoder(
        self, file: ComponentFile, state: dict[str, torch.Tensor], dtype: torch.dtype, parts: ImageParts
    ) -> nn.Module:
        """Qwen2.5-VL through transformers' loader, strictly, with the parts' tokenizer and, for an edit model,
        their image processor."""
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLImageProcessor

        from .text_encoder import QwenVLTextEncoder

        model = transformers_strict(Qwen2_5_VLForConditionalGeneration, file.config, state, file.path, dtype)
        images = Qwen2VLImageProcessor.from_pretrained(str(parts.processor)) if parts.processor else None
        return QwenVLTextEncoder(model, Qwen2Tokenizer.from_pretrained(str(parts.tokenizer)), images)

    def qwen_variant(self, parts: ImageParts) -> QwenImageVariant:
        """Qwen-Image without an image processor; with one Edit, Edit-2509 when the name says 2509 or 2511, 2511
        when the transformer modulates the pictures at timestep 0 (``zero_cond_t``)."""
        if parts.processor is None:
            return T2I
        name = f"{parts.name} {parts.transformer.path.name}"
        if parts.transformer.config.get("zero_cond_t"):
            return replace(EDIT_PLUS, name="Qwen-Image-Edit-2511")
        return EDIT_PLUS if "2509" in name or "2511" in name else EDIT

    def model_config(self, parts: ImageParts) -> Any:
        """The release's config of the variant."""
        return load_config(None, default_settings(self.qwen_variant(parts)))

    def variant(self, parts: ImageParts) -> tuple[str, tuple[str, ...]]:
        """The variant's name and modes."""
        variant = self.qwen_variant(parts)
        return variant.name, variant.modes

    def pipeline_arguments(self, parts: ImageParts) -> dict[str, Any]:
        """The variant."""
        return {"variant": self.qwen_variant(parts)}

    def check_inputs(self, family: Any, recognised: Any, mode: str, inputs: Mapping[str, Any]) -> None:
        """An edit's pictures against how many the variant reads."""
        from ...families import listed_images
        from ...families.qwenimage import check_pictures

        if mode == "edit":
            variant = self.qwen_variant(family.parts)
            check_pictures(variant.name, variant.pictures, len(listed_images(inputs.get("image"),
                                                                             inputs.get("ref_image"))))  # fmt: skip

    def diffusers_pipeline(self, parts: ImageParts) -> str:
        """diffusers' pipeline of the variant (``QwenImagePipeline``, ``QwenImageEditPipeline``...)."""
        return self.qwen_variant(parts).pipeline_class

    def vae_file_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The Wan2.1 VAE's original names, as ``qwen_image_vae.safetensors``."""
        return wan_vae_to_original(state, config)

    def text_file_state(self, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
        """transformers' checkpoint names (``model.layers``, ``visual``, ``lm_head``), as ComfyUI's
        ``qwen_2.5_vl_7b*.safetensors``."""
        out = {}
        for key, value in text_encoder.model.state_dict().items():
            for ours, theirs in CHECKPOINT_NAMES:
                if key.startswith(ours):
                    key = theirs + key[len(ours) :]
                    break
            out[key] = value
        return out


QWENIMAGE_FILES = register_reader(QwenImageSingleFiles())
