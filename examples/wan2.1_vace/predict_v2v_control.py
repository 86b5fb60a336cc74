"""Wan2.1-VACE control video, e.g. depth / pose / edges (--control-video; --image, --ref-image).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("control", "vace")
