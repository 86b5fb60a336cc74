"""Wan2.2-Fun-5B-Control control video (--control-video; --image for the start frame).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("control")
