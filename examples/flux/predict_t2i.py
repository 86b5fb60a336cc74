"""FLUX.1-dev / schnell text-to-image (image-to-image with --image, inpainting with --image and --mask: use
``videox-fun generate --mode i2i`` / ``--mode inpaint``).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs
the built-in tiny random FLUX model (its image is noise); give a FLUX.1 folder (diffusers layout, e.g.
models/Diffusion_Transformer/FLUX.1-dev) and optionally --transformer-path flux1-dev.safetensors (BFL file).
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("t2i")
