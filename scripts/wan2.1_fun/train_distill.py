"""Distil a Wan2.1 / Wan2.1-Fun model into a 4-step student by distribution matching (DMD; VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/wan2.1_fun/train_distill.py \\
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.1-Fun-1.3B-InP \\
      --train_data_meta=datasets/internal_datasets/metadata.json --train_mode=inpaint \\
      --video_sample_size=512 --video_sample_n_frames=49 --learning_rate=2e-06 --critic_learning_rate=4e-07 \\
      --denoising_step_list 1000 750 500 250 --generator_update_ratio=5 --real_guidance_scale=6

The generator (full, or LoRA with ``--use_lora``) starts as the model; a frozen copy is the teacher (its
guidance baked in), a trained copy the critic. ``--train_mode`` keeps the variant's conditions in all three
(``inpaint``: start / end images; ``control``: control videos). Sample the student with ``videox-fun generate
--steps 4 --guidance 1 --sampler Flow_Distill`` (or ``--lora-path OUTPUT_DIR/lora.safetensors``). Nothing to
edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(distill=True, text_drop_ratio=0.0)
