#!/usr/bin/env bash
# Fine-tune a Wan2.1-Fun V1.1 Control model with reference images: train.sh's command in control_ref mode
# (use --train_mode=control for V1.0 Control models, add --use_lora for a control LoRA). Every metadata
# entry needs a control_file_path (a Canny / depth / pose video). Pre-compute latents once with
# `videox-fun cache` (same flags) and add --use_cached_latents to skip the VAE and text encoder.
MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/Wan2.1-Fun-V1.1-1.3B-Control}" \
DATASET_META_NAME="${DATASET_META_NAME:-datasets/internal_datasets/metadata_control.json}" \
bash "$(dirname "$0")/train.sh" \
  --train_mode="control_ref" \
  "$@"
