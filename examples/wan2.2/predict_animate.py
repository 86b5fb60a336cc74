"""Wan2.2-Animate-14B: animate the reference character with a pose and face video (--mode animate, the default), or
put it into the video in place of its person (--mode replace), from the folder the release's preprocessing wrote.

    python examples/wan2.2/predict_animate.py --model models/Diffusion_Transformer/Wan2.2-Animate-14B \\
        --src-root-path asset/wan_animate/replace/process_results --mode replace --prompt "..."

VideoX-Fun's variables are flags here: src_root_path (src_pose.mp4, src_face.mp4, src_ref.png; src_bg.mp4 and
src_mask.mp4 to replace), segment_frame_length (--segment-frame-length / --clip-len), video_length (--frames: the
first frames of the pose video), sample_size (--sample-size: resize the pose video), plus --refert-num 1 or 5.
Same flags as ``videox-fun generate`` (run with --help); nothing to edit in this file.
"""

from videox_fun.cli import example_main

if __name__ == "__main__":
    example_main("animate", "replace")
