"""FLUX.2-dev with a Fun control file (VideoX-Fun's FLUX.2-dev-Fun-Controlnet-Union): follow a control image
(--control-video: a canny, depth or pose map, any RGB image), or inpaint --image under --mask (following
--control-video when given: mode control_inpaint).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file. Without --model it runs the
built-in tiny random Flux2-Fun-Control-Tiny-Random (its image is noise). For the release: --model
models/Diffusion_Transformer/FLUX.2-dev --control-path FLUX.2-dev-Fun-Controlnet-Union.safetensors (or control_path
in the folder's videox_fun.yaml), 50 steps, guidance 4, --control-context-scale 0.75.
"""

import sys

from videox_fun.cli import example_main

if __name__ == "__main__":
    if not any(arg == "--model" or arg.startswith("--model=") for arg in sys.argv):
        sys.argv[1:1] = ["--model", "Flux2-Fun-Control-Tiny-Random"]
    example_main("control", "control_inpaint")
