"""Qwen-Image-Edit: change --image as the prompt says.

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs the
built-in tiny random Qwen-Image-Edit model (its image is noise); give a Qwen-Image-Edit folder (diffusers layout,
e.g. models/Diffusion_Transformer/Qwen-Image-Edit). Without --height / --width the output takes the image's
aspect ratio at 1024 x 1024 pixels' area.
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if "--model" not in sys.argv:
        sys.argv[1:1] = ["--model", "Qwen-Image-Edit-Tiny-Random"]
    if "--mode" not in sys.argv:
        sys.argv[1:1] = ["--mode", "edit"]  # without --image: "mode 'edit' needs --image"
    example_main("edit")
