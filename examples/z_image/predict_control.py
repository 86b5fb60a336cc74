"""Z-Image-Turbo with a Fun control file (VideoX-Fun's Z-Image-Turbo-Fun-Controlnet-Union): follow a control image
(--control-video: a canny, depth or pose map, any RGB image), or with a 2.x file inpaint --image under --mask
(following --control-video when given: mode control_inpaint).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs the
built-in tiny random Z-Image-Turbo-Fun-Control-Tiny-Random (its image is noise). For the release: --model
models/Diffusion_Transformer/Z-Image-Turbo --control-path Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors
(or control_path in the folder's videox_fun.yaml), 8-9 steps, no guidance, --control-context-scale 0.75-0.9.
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if not any(arg == "--model" or arg.startswith("--model=") for arg in sys.argv):
        sys.argv[1:1] = ["--model", "Z-Image-Turbo-Fun-Control-Tiny-Random"]
    example_main("control", "control_inpaint")
