"""Wan2.2-Fun-A14B-Control-Camera: a camera path (--camera; --image for the start frame).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("camera")
