"""The web UI, as VideoX-Fun's `python examples/wan2.2/app.py` (flags instead of edited variables).

```bash
python examples/wan2.2/app.py --model models/Diffusion_Transformer/<release> --gpu-memory-mode model_cpu_offload
python examples/wan2.2/app.py --api-url http://render-host:7860   # the UI over a remote videox-fun serve
```

Every flag of `videox-fun ui` works (`--help`); without `--model` the page starts on a built-in tiny model.
"""

from videox_fun.ui.cli import app_main

if __name__ == "__main__":
    app_main()
