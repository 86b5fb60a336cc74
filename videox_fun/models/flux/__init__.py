"""FLUX.1 (dev / schnell): diffusers' transformer and VAE and transformers' CLIP + T5 encoders, loaded strictly.

:mod:`.transformer` (the DiT, its extension points and BFL single files), :mod:`.vae`, :mod:`.text_encoder`,
:mod:`.variants` (dev / schnell read off the config, generation defaults, the folder config) and :mod:`.tiny`
(tiny diffusers-layout folders of the real architecture for tests and the built-in random model).
"""
