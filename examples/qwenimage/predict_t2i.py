"""Qwen-Image text-to-image (image-to-image with --image, inpainting with --image and --mask).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs the
built-in tiny random Qwen-Image model (its image is noise); give a Qwen-Image folder (diffusers layout, e.g.
models/Diffusion_Transformer/Qwen-Image). True CFG: --guidance (4.0) with --negative-prompt (" " by default).
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if "--model" not in sys.argv:
        sys.argv[1:1] = ["--model", "Qwen-Image-Tiny-Random"]
    example_main("t2i", "i2i", "inpaint")
