#!/usr/bin/env bash
# LoRA (peft) on a Wan2.1-Fun model: train.sh's command with LoRA settings (flags given here win).
# The result, output_dir/lora.safetensors, has the original Wan key names under "diffusion_model." with
# rank / alpha metadata: ComfyUI and diffusers' load_lora_weights read it.
bash "$(dirname "$0")/train.sh" \
  --use_lora \
  --rank=64 \
  --network_alpha=32 \
  --learning_rate=1e-04 \
  --lr_scheduler="constant" \
  --validation_steps=100 \
  --validation_prompts "a cat surfing a wave at sunset" \
  "$@"
