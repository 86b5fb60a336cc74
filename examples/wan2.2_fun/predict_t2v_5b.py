"""Wan2.2-Fun-5B-InP text-to-video (one transformer, the Wan2.2 VAE: sizes in multiples of 32).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("t2v")
