"""FLUX.2-dev (Black Forest Labs): diffusers' transformer and VAE and transformers' Mistral3 text encoder, loaded
strictly.

:mod:`.transformer` (the DiT, its extension points and BFL single files), :mod:`.vae` (``AutoencoderKLFlux2``:
32 channels patchified 2x2 into 128, BatchNorm statistics), :mod:`.text_encoder` (Mistral-Small's hidden states of
layers 10, 20 and 30 stacked), :mod:`.variants` (generation defaults, the scheduler, the folder config) and
:mod:`.tiny` (tiny diffusers-layout folders for tests and the built-in random model).
"""
