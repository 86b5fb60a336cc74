"""Train a LoRA on a Wan VACE model: ``--train_mode=vace``, ``--use_lora`` on.

    accelerate launch --mixed_precision="bf16" scripts/wan2.2_vace_fun/train_lora.py \\
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.2-VACE-Fun-A14B \\
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \\
      --boundary_type=low --rank=64 ...

Every flag is listed by ``--help``; ``--config FILE`` reads the same fields from YAML. Nothing to
edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="vace", use_lora=True)
