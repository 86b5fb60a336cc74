#!/usr/bin/env bash
# Full fine-tune of a CogVideoX-Fun InP model (inpaint mode: random masks, incl. i2v and first+last frame),
# v-prediction on the folder's DDPM schedule (scheduler/scheduler_config.json).
# Multi-GPU: ACCELERATE_CONFIG=config/accelerate/ddp.yaml (or fsdp.yaml, deepspeed_zero2.yaml, deepspeed_zero3.yaml).
# Every flag: python scripts/cogvideox_fun/train.py --help. Resume a killed run: add --resume_from_checkpoint=latest.
# LoRA: add --use_lora --rank=128 --network_alpha=64 (or run train_lora.py); Control models: --train_mode=control.
# Flags given last win.
MODEL_NAME="${MODEL_NAME:-models/Diffusion_Transformer/CogVideoX-Fun-V1.1-2b-InP}"
DATASET_NAME="${DATASET_NAME:-datasets/internal_datasets/}"
DATASET_META_NAME="${DATASET_META_NAME:-datasets/internal_datasets/metadata.json}"

accelerate launch ${ACCELERATE_CONFIG:+--config_file=$ACCELERATE_CONFIG} --mixed_precision="bf16" scripts/cogvideox_fun/train.py \
  --pretrained_model_name_or_path=$MODEL_NAME \
  --train_data_dir=$DATASET_NAME \
  --train_data_meta=$DATASET_META_NAME \
  --image_sample_size=1024 \
  --video_sample_size=256 \
  --token_sample_size=512 \
  --video_sample_stride=3 \
  --video_sample_n_frames=49 \
  --train_batch_size=1 \
  --gradient_accumulation_steps=1 \
  --dataloader_num_workers=8 \
  --num_train_epochs=100 \
  --checkpointing_steps=50 \
  --learning_rate=2e-05 \
  --lr_scheduler="constant_with_warmup" \
  --lr_warmup_steps=100 \
  --seed=42 \
  --output_dir="output_dir" \
  --gradient_checkpointing \
  --mixed_precision="bf16" \
  --adam_weight_decay=3e-2 \
  --adam_epsilon=1e-10 \
  --vae_mini_batch=1 \
  --max_grad_norm=0.05 \
  --random_hw_adapt \
  --training_with_video_token_length \
  --enable_bucket \
  --low_vram \
  --train_mode="inpaint" \
  "$@"
