"""Train a CogVideoX / CogVideoX-Fun model: full fine-tune, LoRA, inpaint or control (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/cogvideox_fun/train.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/CogVideoX-Fun-V1.1-2b-InP \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --video_sample_n_frames=49 --train_batch_size=1 --train_mode=inpaint ...

The folder's family picks the training spec (v-prediction on the folder's DDPM schedule); the
flow-matching flags (--shift, --weighting_scheme...) are refused. Every flag is listed by
``--help``; ``--config FILE`` reads the same fields from YAML. Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script()
