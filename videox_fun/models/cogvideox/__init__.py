"""CogVideoX(-Fun): diffusers' transformer and VAE and transformers' T5 encoder, loaded strictly.

:mod:`.transformer` (the DiT and its extension points), :mod:`.vae`, :mod:`.text_encoder`,
:mod:`.variants` (variants read off the config, released presets, size rules, the folder config)
and :mod:`.tiny` (tiny release-layout folders for tests).
"""
