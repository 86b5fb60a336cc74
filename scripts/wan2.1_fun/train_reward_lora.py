"""Train a reward LoRA on a Wan2.1 / Wan2.1-Fun model: prompts only, videos sampled with gradients (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/wan2.1_fun/train_reward_lora.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.1-Fun-1.3B-InP \
      --prompt_path=prompts.txt --reward_fn=PickScoreReward \
      --reward_fn_kwargs='{"model_path": "models/PickScore_v1", "processor_name_or_path": "models/CLIP-ViT-H-14"}' \
      --video_sample_size=256 --video_sample_n_frames=49 --num_inference_steps=50 --guidance_scale=6 \
      --backprop_strategy=tail --backprop_num_steps=5 --num_decoded_latents=3 --rank=32 --network_alpha=16

The toy world's rewards need no download: ``--reward_fn toy_colour`` (or ``toy_motion``) with toy-world
prompts on ``Wan2.1-Fun-Tiny-InP``. Writes OUTPUT_DIR/lora.safetensors, which ``videox-fun generate
--lora-path`` merges. Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="reward", use_lora=True)
