"""Qwen-Image and Qwen-Image-Edit: diffusers' transformer and VAE and transformers' Qwen2.5-VL, loaded strictly.

:mod:`.transformer` (the MMDiT and its extension points), :mod:`.vae` (the causal 3D VAE, one frame),
:mod:`.text_encoder` (Qwen2.5-VL's last hidden state behind the release's prompt templates), :mod:`.variants`
(T2I / Edit read off ``model_index.json``, generation defaults, the folder config) and :mod:`.tiny` (tiny
diffusers-layout folders of the real architecture for tests and the built-in random models).
"""
