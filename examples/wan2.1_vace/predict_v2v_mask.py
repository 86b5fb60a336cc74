"""Wan2.1-VACE masked video editing (--video --mask, white = regenerate; --ref-image too: mode vace).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("inpaint", "vace")
