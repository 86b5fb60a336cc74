"""Train Wan2.2-Animate-14B (full fine-tune): ``--train_mode=animate`` by default, VideoX-Fun's flags.

    accelerate launch --mixed_precision="bf16" scripts/wan2.2/train_animate.py \\
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.2-Animate-14B \\
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata_control.json \\
      --video_sample_size=640 --video_sample_n_frames=81 --video_sample_stride=2 ...

Every metadata entry names its pose video (``control_file_path``) and face crops (``face_file_path``), optionally
its character image (``ref_file_path``; else a frame of the clip) and, to train replacement, the video without the
person (``background_file_path``) and the person mask (``mask_file_path``); ``--train_mode=replace`` requires them.
Every flag is listed by ``--help``; ``--config FILE`` reads the same fields from YAML. Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="animate")
