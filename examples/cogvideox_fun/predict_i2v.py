"""CogVideoX-Fun image-to-video (InP models: start and end image; CogVideoX I2V: start image).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("i2v")
