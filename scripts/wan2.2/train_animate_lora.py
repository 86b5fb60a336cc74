"""Train Wan2.2-Animate-14B with LoRA: ``scripts/wan2.2/train_animate.py`` with ``--use_lora`` on (its flags,
its metadata fields; ``--rank`` / ``--network_alpha`` size the adapters). Nothing to edit in this file.
"""

import sys
from pathlib import Path

# Run from a checkout: use its package even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from videox_fun.training.cli import run_train_script

if __name__ == "__main__":
    run_train_script(train_mode="animate", use_lora=True)
