"""Write a model folder as single files in a ComfyUI ``models/`` tree, as ComfyUI keeps components.

``python -m comfyui.write_single_files MODEL COMFYUI_MODELS_DIR [--name NAME] [--fp8]``; e.g. the packaged tiny
model for the single-file example workflow: ``python -m comfyui.write_single_files Wan2.1-Fun-Tiny-InP
ComfyUI/models --fp8``. A Wan model or an image model (Z-Image, FLUX.2, Qwen-Image: ComfyUI's layouts, the tokenizer
in ``Fun_Models/``, e.g. ``python -m comfyui.write_single_files Z-Image-Turbo-Tiny-Random ComfyUI/models``). See
:func:`comfyui.single_files.export_single_files`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .single_files import export_single_files


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, write the files, print each one by its ComfyUI folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder or name (Wan2.1-Fun-Tiny-InP, Z-Image-Turbo-Tiny-Random...)")
    parser.add_argument("models_dir", type=Path, help="ComfyUI's models/ folder")
    parser.add_argument("--name", help="the files' name stem (default: the model's name in lower case, _ for -)")
    parser.add_argument("--fp8", action="store_true", help="also write the transformer as ComfyUI's fp8_scaled (Wan)")
    args = parser.parse_args(argv)
    name = args.name or Path(args.model).name.lower().replace("-", "_")
    for kind, paths in vars(export_single_files(args.model, args.models_dir, name, args.fp8)).items():
        for path in paths:
            print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
