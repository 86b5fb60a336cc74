"""Train a LoRA on a FLUX.2-dev model: ``train.py`` with ``--use_lora`` on (VideoX-Fun's flags).

    accelerate launch --mixed_precision="bf16" scripts/flux2/train_lora.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/FLUX.2-dev \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --image_sample_size=1024 --enable_bucket --rank=64 --network_alpha=32 --learning_rate=1e-4 ...

Writes OUTPUT_DIR/lora.safetensors with diffusers' key names (``transformer.<module>.lora_A.weight``), which
diffusers' ``Flux2Pipeline.load_lora_weights`` and ``videox-fun generate --lora-path`` read. Nothing to edit here.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(use_lora=True)
