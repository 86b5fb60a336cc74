"""Wan2.2-VACE-Fun-A14B start image to video (--image; --end-image; --guidance-2 for the low-noise expert).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("i2v", "flf2v", "vace")
