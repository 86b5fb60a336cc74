#!/usr/bin/env bash
# LoRA (peft) on a CogVideoX-Fun model: train.sh's command with LoRA settings (flags given here win).
# The result, output_dir/lora.safetensors, has diffusers' CogVideoX key names (transformer.<module>.lora_A/B),
# which diffusers' CogVideoXPipeline.load_lora_weights and `videox-fun generate --lora-path` read.
bash "$(dirname "$0")/train.sh" \
  --use_lora \
  --rank=128 \
  --network_alpha=64 \
  --learning_rate=1e-04 \
  --lr_scheduler="constant" \
  --validation_steps=100 \
  --validation_prompts "a cat surfing a wave at sunset" \
  "$@"
