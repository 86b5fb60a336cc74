"""Z-Image / Z-Image-Turbo text-to-image (image-to-image with --image, inpainting with --image and --mask: use
``videox-fun generate --mode i2i`` / ``--mode inpaint``).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs
the built-in tiny random Z-Image-Turbo model (its image is noise); give a Z-Image folder (diffusers layout, e.g.
models/Diffusion_Transformer/Z-Image-Turbo: 8 steps, no guidance; Z-Image: 25 steps, --guidance-scale 4) and
optionally --transformer-path z_image_turbo.safetensors (an original-layout file).
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if not any(arg == "--model" or arg.startswith("--model=") for arg in sys.argv):
        sys.argv[1:1] = ["--model", "Z-Image-Turbo-Tiny-Random"]
    example_main("t2i")
