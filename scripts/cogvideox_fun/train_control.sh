#!/usr/bin/env bash
# Fine-tune a CogVideoX-Fun Control (or Pose) model: train.sh's command in control mode (add --use_lora for
# a control LoRA). Every metadata entry needs a control_file_path (a Canny / depth / pose video).
# Pre-compute latents once with `videox-fun cache` (same flags) and add --use_cached_latents.
MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/CogVideoX-Fun-V1.1-2b-Control}" \
DATASET_META_NAME="${DATASET_META_NAME:-datasets/internal_datasets/metadata_control.json}" \
bash "$(dirname "$0")/train.sh" \
  --train_mode="control" \
  "$@"
