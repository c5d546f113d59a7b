#!/bin/bash
# One GPU session's numbers (15 minutes of device time at most): what no CPU here can show.
#   1. benchmarks/assistant.py: the 8B-class InternVL (random weights) in bf16 and NF4 -- VRAM, first token, tok/s;
#   2. benchmarks/preread.py --device-sweep: the pre-read sweep of a 300-slice 512² series with the same model in
#      NF4 -- slices per second (goal ≥ 5), first boxes, peak GPU memory.
# Run from the repository root on the GPU machine, with the project's Python environment active:
#   OUT=/some/folder bash benchmarks/device_session.sh
# Every table is written to $OUT (default /tmp/xmedgpt-device) and printed; the 8B model is written once to
# /tmp/xmedgpt-8b (about 16 GB) and reused by the second step.
set -u -o pipefail
OUT=${OUT:-/tmp/xmedgpt-device}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
"$PY" benchmarks/preread.py --device-sweep --device cuda --quantization nf4 --build-8b /tmp/xmedgpt-8b \
    --slices 300 --size 512 --batch 16,32,64 2>&1 | tee "$OUT/preread-gpu.txt"
"$PY" benchmarks/assistant.py --gpu-model /tmp/xmedgpt-8b 2>&1 | tee "$OUT/assistant-gpu.txt"
