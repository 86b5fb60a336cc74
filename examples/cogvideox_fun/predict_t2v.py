"""CogVideoX-Fun text-to-video (InP models, or CogVideoX T2V).

Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("t2v")
