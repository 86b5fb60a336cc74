"""Wan2.2-Fun-5B-Control with a reference image (--control-video --ref-image; --image).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("control")
