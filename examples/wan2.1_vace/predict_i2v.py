"""Wan2.1-VACE start image to video (--image; --end-image for first-last-frame; --ref-image too: mode vace).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("i2v", "flf2v", "vace")
