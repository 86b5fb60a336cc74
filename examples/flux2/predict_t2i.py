"""FLUX.2-dev text-to-image (image-to-image with --image, inpainting with --image and --mask: use
``videox-fun generate --mode i2i`` / ``--mode inpaint``).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs
the built-in tiny random FLUX.2 model (its image is noise); give a FLUX.2 folder (diffusers layout, e.g.
models/Diffusion_Transformer/FLUX.2-dev: 50 steps, embedded guidance 4) and optionally
--transformer-path flux2-dev.safetensors (a BFL file).
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if not any(arg == "--model" or arg.startswith("--model=") for arg in sys.argv):
        sys.argv[1:1] = ["--model", "Flux2-Tiny-Random"]
    example_main("t2i")
