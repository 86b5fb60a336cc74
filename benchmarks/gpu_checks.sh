#!/usr/bin/env bash
# Every GPU measurement in one run, for a session lent an accelerator (see ../.library/device).
# Writes JSON under ${OUT:-benchmarks/results}. Test it on the CPU first: the CPU sections run
# everywhere, the GPU sections only when CUDA is present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# Transformer forward ours vs diffusers: mid config on the CPU, Wan2.1-1.3B and 14B at 480x832x81 on the GPU.
videox-fun bench transformer --repeats 5 --out "$OUT/transformer_gpu.json"
# Peak GPU memory and time of each memory mode (tiny model; pass --model for a real one).
videox-fun bench memory --out "$OUT/memory_gpu.json"
# Pipeline end to end vs diffusers' WanPipeline.
videox-fun bench pipeline --repeats 3 --out "$OUT/pipeline_gpu.json"
