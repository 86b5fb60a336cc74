"""Train a CogVideoX-Fun Control model: ``train.py`` with ``--train_mode=control`` by default (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/cogvideox_fun/train_control.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/CogVideoX-Fun-V1.1-5b-Control \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json ...

The metadata gives each video its ``control_file_path``. Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="control")
