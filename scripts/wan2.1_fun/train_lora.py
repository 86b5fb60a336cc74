"""Train a LoRA on a Wan2.1 / Wan2.1-Fun model: ``train.py`` with ``--use_lora`` on (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/wan2.1_fun/train_lora.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.1-Fun-1.3B-InP \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --rank=64 --network_alpha=32 --train_mode=inpaint ...

Writes OUTPUT_DIR/lora.safetensors, which ``videox-fun generate --lora-path`` merges. Nothing to
edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(use_lora=True)
