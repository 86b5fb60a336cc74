"""Z-Image and Z-Image-Turbo (Tongyi-MAI): diffusers' transformer, FLUX.1's VAE and transformers' Qwen3 encoder,
loaded strictly.

:mod:`.transformer` (the single-stream DiT, its extension points and original-layout single files), :mod:`.vae`,
:mod:`.text_encoder` (Qwen3's second-to-last hidden states of the chat-templated prompt), :mod:`.variants` (base /
Turbo, generation defaults, the folder config) and :mod:`.tiny` (tiny diffusers-layout folders for tests and the
built-in random models).
"""
