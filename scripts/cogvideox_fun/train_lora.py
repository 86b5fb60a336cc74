"""Train a LoRA on a CogVideoX / CogVideoX-Fun model: ``train.py`` with ``--use_lora`` on (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/cogvideox_fun/train_lora.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/CogVideoX-Fun-V1.1-5b-InP \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --rank=128 --network_alpha=64 --train_mode=inpaint ...

Writes OUTPUT_DIR/lora.safetensors with diffusers' key names (``transformer.<module>.lora_A.weight``),
which ``videox-fun generate --lora-path`` and diffusers' ``CogVideoXPipeline.load_lora_weights`` read.
Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(use_lora=True)
