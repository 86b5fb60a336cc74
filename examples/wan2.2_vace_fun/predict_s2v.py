"""Wan2.2-VACE-Fun-A14B subject (reference) images to video (--ref-image; with --control-video: control).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("r2v", "vace", "control")
