"""Qwen-Image's text encoder: Qwen2.5-VL-7B-Instruct's last hidden state behind the release's chat template.

The prompt is wrapped in the release's template (a system instruction, the user turn, the assistant's start);
the hidden states of the template's system part are dropped: 34 tokens for Qwen-Image, 64 for Qwen-Image-Edit,
whose user turn also holds the edit image (``<|vision_start|><|image_pad|><|vision_end|>``, expanded by the
processor to the image's merged patch tokens), so the VL model sees the picture it is asked to change.
Qwen-Image-Edit-2509 keeps Edit's system part and puts each of its pictures before the prompt as
``Picture i: <|vision_start|><|image_pad|><|vision_end|>`` (i from 1). Padding
is removed per prompt and the rest zero-padded to the longest, with a mask (None when nothing is padded), as
diffusers' Qwen-Image pipelines do.

The model is transformers' ``Qwen2_5_VLForConditionalGeneration``; its loader maps the checkpoint names of every
transformers version, and :func:`load_qwen_vl` turns any missing, unexpected or mis-shaped key into an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
)

from ..component import OffloadableComponent
from ..loading import CheckpointMismatchError

TEXT_ENCODER_CLASS_NAME = "Qwen2_5_VLForConditionalGeneration"
# diffusers' tokenizer limit: prompts longer than this (after the template) are cut.
TOKENIZER_MAX_LENGTH = 1024


@dataclass(frozen=True)
class PromptTemplate:
    """The release's chat template around a prompt and how many leading tokens (its system part) are dropped."""

    text: str
    drop: int
    picture: str = ""  # put before the prompt once per image, numbered from 1 ("": the text holds the image)

    def format(self, prompt: str, images: int = 0) -> str:
        """The prompt (after ``images`` numbered pictures, for a template with :attr:`picture`) inside the template."""
        pictures = "".join(self.picture.format(index + 1) for index in range(images)) if self.picture else ""
        return self.text.format(pictures + prompt)


T2I_TEMPLATE = PromptTemplate(
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    34,
)
EDIT_TEMPLATE = PromptTemplate(
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n",
    64,
)
# Edit's system part (64 tokens) and a user turn of numbered pictures, then the prompt (diffusers' EditPlus).
EDIT_PLUS_TEMPLATE = PromptTemplate(
    EDIT_TEMPLATE.text.replace("<|vision_start|><|image_pad|><|vision_end|>", ""),
    64,
    "Picture {}: <|vision_start|><|image_pad|><|vision_end|>",
)


def load_qwen_vl(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Qwen2_5_VLForConditionalGeneration:
    """A ``text_encoder/`` folder through transformers' loader, refused when any key is missing, unexpected or
    mis-shaped (transformers only warns)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no Qwen2.5-VL text encoder in {folder}: expected config.json and weights")
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    problems = [f"{kind.replace('_', ' ')}: {sorted(map(str, keys))[:12]}" for kind, keys in info.items()
                if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys]  # fmt: skip
    if problems:
        details = "; ".join(problems)
        raise CheckpointMismatchError(f"checkpoint {folder} does not match {TEXT_ENCODER_CLASS_NAME}: {details}")
    return model.eval()


def strip_padding(hidden: torch.Tensor, mask: torch.Tensor, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) hidden states of padded prompts -> (B, L', D) of each prompt's own tokens after its first ``drop``,
    zero-padded to the longest, and the (B, L') mask of real tokens."""
    rows = [states[keep.bool()][drop:] for states, keep in zip(hidden, mask, strict=True)]  # each (Li, D)
    length = max(row.shape[0] for row in rows)
    embeds = torch.stack([torch.cat([row, row.new_zeros(length - row.shape[0], row.shape[1])]) for row in rows])
    valid = torch.stack([torch.arange(length, device=hidden.device) < row.shape[0] for row in rows]).long()
    return embeds, valid


def expand_image_pads(text: str, counts: list[int]) -> str:
    """``text`` with its k-th ``<|image_pad|>`` repeated ``counts[k]`` times (one per image, in order)."""
    parts = text.split("<|image_pad|>")  # one more than the images
    return "".join(part + "<|image_pad|>" * count for part, count in zip(parts, [*counts, 0], strict=True))


class QwenVLTextEncoder(OffloadableComponent, nn.Module):
    """Qwen2.5-VL + tokenizer (+ image processor for Edit); :meth:`encode` gives the transformer's text stream."""

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Qwen2VLImageProcessor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        tokenizer_path: str | os.PathLike,
        processor_path: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> QwenVLTextEncoder:
        """Load ``text_encoder/`` strictly, its ``tokenizer/`` and, for Edit, the ``processor/`` folder's image
        processor."""
        images = None
        if processor_path is not None:
            if not (Path(processor_path) / "preprocessor_config.json").is_file():
                raise FileNotFoundError(f"no image processor in {processor_path}: expected preprocessor_config.json")
            images = Qwen2VLImageProcessor.from_pretrained(str(processor_path))
        return cls(load_qwen_vl(folder, dtype), Qwen2Tokenizer.from_pretrained(str(tokenizer_path)), images)

    def vision_inputs(self, texts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Token ids, mask, ``pixel_values`` and ``image_grid_thw`` of ``texts`` with ``images`` in each, as
        ``Qwen2VLProcessor`` makes them: the k-th ``<|image_pad|>`` of a text becomes one token per merged patch
        (2x2 patches of 14 px) of the k-th image."""
        if self.image_processor is None:
            raise ValueError("this text encoder has no image processor: it cannot read an edit image")
        pixels = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size
        counts = [int(grid.prod()) // (merge * merge) for grid in pixels["image_grid_thw"]]  # one per image
        texts = [expand_image_pads(text, counts) for text in texts]
        return {**self.tokenizer(texts, padding=True, return_tensors="pt"), **pixels}

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str],
        template: PromptTemplate,
        image: Image.Image | Sequence[Image.Image] | None = None,
        max_length: int | None = 1024,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts (and the edit image, or Edit-2509's pictures) -> embeddings (B, L, D) of at most ``max_length``
        tokens (None: all, as diffusers' edit pipelines keep them) and their mask (B, L), None when no token is
        padding."""
        images = [] if image is None else [image] if isinstance(image, Image.Image) else list(image)
        texts = [template.format(prompt, len(images)) for prompt in prompts]
        if not images:
            inputs = self.tokenizer(texts, max_length=TOKENIZER_MAX_LENGTH + template.drop, padding=True,
                                    truncation=True, return_tensors="pt")  # fmt: skip
        else:
            inputs = self.vision_inputs(texts, images)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]  # (B, L, D)
        embeds, mask = strip_padding(hidden, inputs["attention_mask"], template.drop)
        embeds, mask = embeds[:, :max_length], mask[:, :max_length]
        return embeds, None if bool(mask.all()) else mask  # no mask: the transformer attends to every token
