"""FLUX.2-dev from single files, as ComfyUI and BFL ship them (Comfy-Org's ``flux2-dev`` split files).

* the transformer (``flux2-dev.safetensors``, ``flux2_dev_*.safetensors``): BFL's names (``double_blocks``,
  ``single_blocks``, ``*_modulation.lin``), with or without ComfyUI's prefix, or diffusers'; read through
  diffusers' own converter (:func:`~.transformer.bfl_to_diffusers`), its config off its shapes; a FLUX.1 file is
  refused in one line;
* the VAE (``flux2-vae.safetensors``): ``AutoencoderKLFlux2`` in diffusers' names (as VideoX-Fun's loader reads
  it) or the original ldm names (through diffusers' ``convert_ldm_vae_checkpoint``; the batch norm's statistics
  under their own names), the released config;
* the text encoder (``mistral_3_small_flux2_*.safetensors``): Mistral-Small-3.2's language model, in ComfyUI's
  names (``model.layers...``, its ``tekken_model`` tokenizer tensor) or transformers' (a whole
  ``Mistral3ForConditionalGeneration`` export); the vision tower, projector and LM head are not read (FLUX.2 reads
  hidden states of a text prompt), so transformers' ``MistralModel`` holds the language model alone and gives the
  same hidden states; the tokenizer from VideoX-Fun's folders (``flux2_tokenizer``, ``FLUX.2-dev/tokenizer``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLFlux2
from torch import nn

from ..image_single_files import (
    COMFY_PREFIX,
    TOKENIZER_TENSORS,
    ComponentFile,
    ImageParts,
    ImageSingleFiles,
    decoder_sizes,
    is_ldm_autoencoder,
    ldm_to_autoencoder,
    looks_like_vae,
    register_reader,
    transformers_strict,
    without_comfy_prefix,
)
from ..loading import drop_prefixed, strip_prefix
from .transformer import (
    BFL_MARKER,
    DIFFUSERS_MARKER,
    FLUX1_MARKER,
    Flux2Transformer,
    bfl_to_diffusers,
    config_from_state,
    is_bfl_state,
)
from .vae import Flux2VAE
from .variants import SIZE_RULES, TEXT_LAYERS, VARIANT, load_config

# The released VAE's config: diffusers' AutoencoderKLFlux2 defaults (VideoX-Fun's loader spells out the same).
FLUX2_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKLFlux2",
    **{name: parameter.default for name, parameter in inspect.signature(AutoencoderKLFlux2.__init__).parameters.items()
       if parameter.default is not inspect.Parameter.empty},
}  # fmt: skip
FLUX1_DIFFUSERS_MARKER = "transformer_blocks.0.norm1.linear.weight"  # FLUX.1's per-block modulation, diffusers' names
# Mistral-Small-3.2-24B's text model constants that its shapes do not say (its released text_config).
MISTRAL_SMALL: dict[str, Any] = {
    "model_type": "mistral",
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000_000.0},
    "sliding_window": None,
    "tie_word_embeddings": False,
}
# What a whole Mistral3 export carries beside the language model; FLUX.2 reads hidden states of text alone.
NOT_READ = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
            "lm_head.", "language_model.lm_head.")  # fmt: skip
# The language model's prefixes in transformers' names (new, then older) and ComfyUI's.
LANGUAGE_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# diffusers' names -> BFL's (the renames of diffusers' converter, reversed): whole-model keys, then a block's.
BFL_TOP = {"x_embedder.": "img_in.", "context_embedder.": "txt_in.", "proj_out.": "final_layer.linear.",
           "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
           "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
           "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
           "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
           "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
           "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
           "single_stream_modulation.linear.": "single_stream_modulation.lin."}  # fmt: skip
BFL_DOUBLE = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale",
              "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
              "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
              "attn.to_out.0.weight": "img_attn.proj.weight", "attn.to_add_out.weight": "txt_attn.proj.weight",
              "ff.linear_in.weight": "img_mlp.0.weight", "ff.linear_out.weight": "img_mlp.2.weight",
              "ff_context.linear_in.weight": "txt_mlp.0.weight",
              "ff_context.linear_out.weight": "txt_mlp.2.weight"}  # fmt: skip
BFL_SINGLE = {"attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
              "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}  # fmt: skip
BFL_FUSED = {"attn.to_q.weight": "img_attn.qkv.weight", "attn.add_q_proj.weight": "txt_attn.qkv.weight"}
BFL_FUSED_PARTS = {"attn.to_k.weight", "attn.to_v.weight", "attn.add_k_proj.weight", "attn.add_v_proj.weight"}


def block_to_bfl(key: str, state: Mapping[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    """A double or single block's diffusers key in BFL's names (q with its k and v stacked into BFL's fused qkv);
    None for the k / v that go with it."""
    stack, index, rest = key.split(".", 2)
    if stack == "single_transformer_blocks":
        return f"single_blocks.{index}.{BFL_SINGLE[rest]}", state[key]
    if rest in BFL_FUSED_PARTS:
        return None
    if rest in BFL_FUSED:
        parts = [rest, rest.replace("_q", "_k"), rest.replace("_q", "_v")]
        return f"double_blocks.{index}.{BFL_FUSED[rest]}", torch.cat([state[f"{stack}.{index}.{p}"] for p in parts])
    return f"double_blocks.{index}.{BFL_DOUBLE[rest]}", state[key]


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-named FLUX.2 transformer state in BFL's names (``flux2-dev.safetensors``): what
    :func:`~.transformer.bfl_to_diffusers` (diffusers' converter) reads back."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            converted = block_to_bfl(key, state)
            if converted is not None:
                out[converted[0]] = converted[1]
        elif key == "norm_out.linear.weight":  # diffusers keeps (scale, shift), BFL (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale])
        else:
            prefix = next((p for p in BFL_TOP if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"no BFL name for FLUX.2 key {key}")
            out[BFL_TOP[prefix] + key[len(prefix) :]] = value
    return out


def is_mistral(keys: list[str]) -> bool:
    """Whether names are a Mistral language model's (attention without q / k norms or biases), or a ComfyUI file
    carrying Mistral's tekken tokenizer."""
    if "tekken_model" in keys:
        return True
    plain = any(k.endswith("layers.0.self_attn.q_proj.weight") for k in keys)
    return plain and not any(k.endswith(("self_attn.q_norm.weight", "self_attn.q_proj.bias")) for k in keys)


class Flux2SingleFiles(ImageSingleFiles):
    """FLUX.2's single files (see the module docstring)."""

    family = "flux2"
    label = "FLUX.2"
    transformer_class = Flux2Transformer
    vae_class = Flux2VAE
    vae_release = FLUX2_VAE_CONFIG
    pipeline = "videox_fun.pipelines.flux2:Flux2Pipeline"
    sizes = SIZE_RULES
    tokenizer_folders = ("flux2_tokenizer", "FLUX.2-dev/tokenizer")

    def claims(self, kind: str, keys: list[str]) -> bool:
        """The single blocks' shared modulation (transformer); the latent batch norm (VAE); Mistral (text)."""
        if kind == "transformer":
            return any(key.removeprefix(COMFY_PREFIX) in (BFL_MARKER, DIFFUSERS_MARKER) for key in keys)
        if kind == "vae":
            return looks_like_vae(keys) and any(k.removeprefix("vae.").startswith("bn.") for k in keys)
        return is_mistral(keys)

    def describe_neighbour(self, keys: list[str]) -> str | None:
        """A FLUX.1 transformer (BFL's per-block modulation, or diffusers' per-block norms), taken for FLUX.2's."""
        stripped = {key.removeprefix(COMFY_PREFIX) for key in keys}
        return "a FLUX.1 transformer" if stripped & {FLUX1_MARKER, FLUX1_DIFFUSERS_MARKER} else None

    def transformer_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """BFL's names converted by diffusers' converter; diffusers' without a wrapper prefix."""
        if is_bfl_state(state, str(source)):
            return bfl_to_diffusers(state, source=str(source))
        return strip_prefix(without_comfy_prefix(state), ("transformer.",))

    def transformer_config(self, state: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> dict[str, Any]:
        """Read off the shapes (:func:`~.transformer.config_from_state`)."""
        return config_from_state(state)

    def vae_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """ldm names through diffusers' converter (the batch norm as it is); diffusers' as they are."""
        state = strip_prefix(state, ("vae.",))
        return ldm_to_autoencoder(state, {**FLUX2_VAE_CONFIG, **config}) if is_ldm_autoencoder(state) else state

    def text_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """``MistralModel``'s names: the tokenizer tensor, the vision tower, projector and LM head dropped (named in
        the log), the language model's prefix off."""
        state = dict(state)
        drop_prefixed(state, (*TOKENIZER_TENSORS, *NOT_READ), "not read: FLUX.2 reads the language model's hidden "
                      "states of a text prompt", str(source))  # fmt: skip
        return strip_prefix(state, LANGUAGE_PREFIXES)

    def text_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Mistral-Small's constants (heads of 128), the sizes off the shapes."""
        return {**MISTRAL_SMALL, **decoder_sizes(state, MISTRAL_SMALL["head_dim"])}

    def text_width(self, config: Mapping[str, Any]) -> int:
        """The stacked hidden states: 3 layers of Mistral's width (3 x 5120)."""
        return len(TEXT_LAYERS) * int(config["hidden_size"])

    def transformer_text_width(self, config: Mapping[str, Any]) -> int:
        """The context embedder's input width."""
        return int(config["joint_attention_dim"])

    def build_text_encoder(
        self, file: ComponentFile, state: dict[str, torch.Tensor], dtype: torch.dtype, parts: ImageParts
    ) -> nn.Module:
        """``MistralModel`` through transformers' loader, strictly, with the Mistral tokenizer of the parts."""
        from transformers import MistralModel

        from .text_encoder import Flux2TextEncoder, load_mistral_tokenizer

        model = transformers_strict(MistralModel, file.config, state, file.path, dtype)
        return Flux2TextEncoder(model, load_mistral_tokenizer(parts.tokenizer))

    def model_config(self, parts: ImageParts) -> Any:
        """The release's config."""
        return load_config(None)

    def variant(self, parts: ImageParts) -> tuple[str, tuple[str, ...]]:
        """FLUX.2-dev: every FLUX.2 mode."""
        from ...families.flux2 import FLUX2_MODES

        return VARIANT, tuple(FLUX2_MODES)

    def diffusers_pipeline(self, parts: ImageParts) -> str:
        """diffusers' ``Flux2Pipeline``."""
        return "Flux2Pipeline"

    def transformer_file_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """BFL's names, as ``flux2-dev.safetensors``."""
        return diffusers_to_bfl(state)

    def text_file_state(self, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
        """The language model under ``model.``, as ComfyUI's ``mistral_3_small_flux2_*.safetensors``."""
        return {f"model.{key}": value for key, value in text_encoder.model.get_decoder().state_dict().items()}

    def text_file_config(self, text_encoder: nn.Module) -> dict[str, Any]:
        """The language model's config (Mistral3's ``text_config``)."""
        return text_encoder.model.config.text_config.to_dict()


FLUX2_FILES = register_reader(Flux2SingleFiles())
