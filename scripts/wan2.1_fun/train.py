"""Train a Wan2.1 / Wan2.1-Fun model: full fine-tune, LoRA, inpaint or control (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/wan2.1_fun/train.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.1-Fun-1.3B-InP \
      --config_path=config/wan2.1/wan_fun_civitai.yaml \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --train_batch_size=1 --gradient_accumulation_steps=1 --train_mode=inpaint ...

Every flag is listed by ``--help``; ``--config FILE`` reads the same fields from YAML. Nothing to
edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script()
