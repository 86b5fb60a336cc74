"""Wan2.2-Fun-A14B-InP text-to-video (two experts; --guidance-2 for the low-noise one).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("t2v")
