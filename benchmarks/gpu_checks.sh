#!/usr/bin/env bash
# Every GPU measurement in one run, for a session lent an accelerator (see ../.library/device).
# Writes JSON under ${OUT:-benchmarks/results}, one file per benchmark as soon as it finishes, so a
# run cut short keeps what it measured. Test it on the CPU first: each benchmark then takes its
# CPU path. PYTHON: the interpreter that holds torch and videox_fun (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
bench() {  # bench NAME [ARGS...]: one benchmark; a failure is reported and the next one still runs
    local name=$1
    shift
    echo "=== bench $name $* ($(date +%T))"
    "$PYTHON" -m videox_fun.cli bench "$name" --out "$OUT/${name}_${SUFFIX}.json" "$@" 2>&1 | tee "$OUT/${name}_${SUFFIX}.log" \
        || { echo "bench $name FAILED"; status=1; }
}
SUFFIX=$("$PYTHON" -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu_check')")
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# Order: by value (a run cut short keeps the earlier JSON files). GPU times in brackets are estimates from FLOP
# counts for one H100 (no GPU run yet), each with its process start-up: about 7 minutes in all.
# Pipeline s/step ours vs diffusers' WanPipeline: Wan2.1-1.3B config at 480x832x81 bf16 on a GPU. [~1.5 min]
bench pipeline --repeats 2
# Peak GPU memory and time of each memory mode, same 1.3B config and size, 2 steps. [~1.5 min]
bench memory
# Transformer forward ours vs diffusers: mid config, then Wan2.1-1.3B and 14B at 480x832x81 on a GPU. [~1.5 min]
bench transformer --repeats 5
# Image families' transformer forward ours vs diffusers' classes (FLUX.1, FLUX.2, Qwen-Image, Z-Image): tiny configs,
# then the released widths with 2 double + 4 single blocks (FLUX) / 4 layers at 1024x1024 bf16 on a GPU. [~1 min]
bench images --repeats 5
# Wan VACE and Wan2.2-Animate forward ours vs diffusers' classes: tiny configs, then the 14B widths with 5 layers at
# 480x832x81 bf16 on a GPU (2 timed rounds there). [~1 min]
bench streams --repeats 4
# CogVideoX transformer forward ours (attention through our dispatch: every installed backend) vs diffusers:
# a small config, then CogVideoX-5b at 480x720x49 bf16 on a GPU. [~1 min]
bench cogvideox --repeats 4
echo "done ($(date +%T)), status $status"
exit $status
