"""Train a Z-Image Fun control stream (Z-Image-Turbo-Fun-Controlnet-Union 1.0 / 2.0 / 2.1): ``train.py`` with
``--train_mode=control`` by default (VideoX-Fun's ``scripts/z_image_fun/train_control.py`` flags).

    accelerate launch --mixed_precision="bf16" scripts/z_image/train_control.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Z-Image-Turbo \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --transformer_path=models/Personalized_Model/Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors \
      --image_sample_size=1328 --enable_bucket --uniform_sampling --learning_rate=2e-05 --max_grad_norm=0.05 \
      --gradient_checkpointing --trainable_modules control ...

Each metadata entry is ``"type": "image"`` with its ``"control_file_path"`` (a canny / depth / pose image). The
transformer stays frozen; the control stream trains, starting from ``--transformer_path`` (a released control file),
else the folder config's ``control_path``, else a new 2.1 stream. A 2.x file's context reads random masks and the
masked image (VideoX-Fun's ``--add_inpaint_info``, accepted and implied). Writes OUTPUT_DIR/transformer/
``diffusion_pytorch_model.safetensors`` in the release's keys: ``videox-fun generate --control-path`` reads it.
Nothing to edit here.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="control")
