"""The web UI, as VideoX-Fun's `python examples/cogvideox_fun/app.py` (flags instead of edited variables).

```bash
python examples/cogvideox_fun/app.py --model models/Diffusion_Transformer/<release> --gpu-memory-mode model_cpu_offload
python examples/cogvideox_fun/app.py --api-url http://render-host:7860   # the UI over a remote videox-fun serve
```

Every flag of `videox-fun ui` works (`--help`); without `--model` the page starts on the built-in tiny
CogVideoX-Fun model.
"""

from videox_fun.registry import PACKAGED_COGVIDEOX_MODEL, packaged_model
from videox_fun.ui.cli import app_main

if __name__ == "__main__":
    app_main(PACKAGED_COGVIDEOX_MODEL if packaged_model(PACKAGED_COGVIDEOX_MODEL) else "CogVideoX-Fun-Tiny-Random-InP")
