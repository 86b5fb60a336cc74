"""Wan2.1-Fun V1.1 Control-Camera: a camera path file (--camera; --image for the start frame).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("camera")
