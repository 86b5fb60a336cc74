"""Train a Qwen-Image Fun control stream (Qwen-Image-2512-Fun-Controlnet-Union): ``--train_mode=control`` by default
(VideoX-Fun's ``scripts/qwenimage_fun/train_control.py`` flags).

    accelerate launch --mixed_precision="bf16" scripts/qwenimage/train_control.py \
      --pretrained_model_name_or_path=models/Diffusion_Transformer/Qwen-Image-2512 \
      --train_data_dir=datasets/internal_datasets/ --train_data_meta=datasets/internal_datasets/metadata.json \
      --transformer_path=models/Personalized_Model/Qwen-Image-2512-Fun-Controlnet-Union.safetensors \
      --image_sample_size=1328 --enable_bucket --uniform_sampling --learning_rate=2e-05 --max_grad_norm=0.05 \
      --gradient_checkpointing --trainable_modules control ...

Each metadata entry is ``"type": "image"`` with its ``"control_file_path"``. The transformer stays frozen; the side
stream trains, starting from ``--transformer_path`` (a released control file), else the folder config's
``control_path``, else a new stream of the release's layout (132 channels: control, a random mask, the masked image).
Writes OUTPUT_DIR/transformer/``diffusion_pytorch_model.safetensors`` in the release's keys (``control_blocks.N``,
``control_img_in``): ``videox-fun generate --control-path`` reads it. Nothing to edit here.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="control")
