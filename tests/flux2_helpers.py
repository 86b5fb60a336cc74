"""FLUX.2 test helpers, importable as ``flux2_helpers`` (``tests/conftest.py`` puts this folder on ``sys.path``).

BFL's names of a diffusers-named state are the library's writer's
(:func:`videox_fun.models.flux2.single_files.diffusers_to_bfl`)."""

from __future__ import annotations

from pathlib import Path


def diffusers_flux2_pipeline(folder: Path):
    """diffusers' ``Flux2Pipeline`` of diffusers' and transformers' own objects, each read from ``folder`` by its
    loader: the outside reference our FLUX.2 pipeline is compared with."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import AutoTokenizer, Mistral3ForConditionalGeneration

    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler")),
        vae=AutoencoderKLFlux2.from_pretrained(str(folder / "vae")).eval(),
        text_encoder=Mistral3ForConditionalGeneration.from_pretrained(str(folder / "text_encoder")).eval(),
        tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer")),
        transformer=Flux2Transformer2DModel.from_pretrained(str(folder / "transformer")).eval(),
    )
