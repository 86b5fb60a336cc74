"""Fine-tune a FLUX.1-dev / schnell model on images (VideoX-Fun's flags): the whole transformer, or ``--use_lora``.

    accelerate launch --mixed_precision="bf16" scripts/flux/train.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/FLUX.1-dev \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --image_sample_size=1024 --enable_bucket --train_batch_size=1 --gradient_checkpointing ...

The metadata's entries are ``"type": "image"``; ``--enable_bucket`` batches them by aspect ratio. The folder's
family picks the training spec: flow matching with the resolution-dependent shift of each bucket's token count (dev)
or the folder's static shift (schnell) (``--shift`` gives a static one). Writes OUTPUT_DIR/transformer/ in the
diffusers layout. ``--use_cached_latents`` trains from ``videox-fun cache``'s latents; ``--distill`` makes a
few-step student. Every flag is listed by ``--help``; ``--config FILE`` reads the same fields from YAML. Nothing to
edit here.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script()
