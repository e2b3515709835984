#!/usr/bin/env bash
# GPU measurements for batched scoring, one script for one device session (about 4-5 minutes in all).
#
# Needs: the checkout with wheels of monai==1.6.1 pytorch-ignite pydicom pylibjpeg* nibabel highdicom fire termcolor
# in .whl/ (see the GPU machine notes: Python 3.12, manylinux x86-64; git-ignored), torch with CUDA on the machine.
# Writes two files to $OUT (default ./gpu_check_out): gpu_check.log (every step's output, one after the other, each
# under a "=== NAME" line) and steps.txt (each step's exit status and seconds). Each step has its own timeout, so
# one slow or failing step leaves the others' numbers. Run:  OUT=/some/folder bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  echo "=== 00_pip" >> "$LOG"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 -m cadpipe "$@"\n' > /tmp/bin/cadpipe; chmod +x /tmp/bin/cadpipe
export PATH=/tmp/bin:$PATH
W=${WORKERS:-12}

step() {  # step NAME SECONDS COMMAND...: run with a timeout, append to $LOG, note the exit status in steps.txt
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name: $*" >> "$LOG"
  timeout "$secs" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
  echo "=== $name rc=$rc" >> "$LOG"
}

{ echo "=== 01_env"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g;
  df -h /dev/shm
  python3 -c "import torch, monai; print(torch.__version__, torch.version.cuda, monai.__version__, torch.cuda.is_available())"
} >> "$LOG" 2>&1

# 1. 512x400, 4096 studies (start-up amortised): batched end to end, steady, start-up, scoring-process CPU
step 02_score_512_4096 70 python3 benchmarks/score.py --device cuda --batch-size 32 --studies 4096 --workers "$W" \
  --ceiling-studies 256 --all-outputs-studies 0 --naive-studies 0 --preprocess batched
# 2. 512x400, 1536 studies: per-item vs batched (start-up weighs more), all outputs (Grad-CAM, reports, DICOM SR/SC)
#    on 96 studies
step 03_score_512_1536 85 python3 benchmarks/score.py --device cuda --batch-size 32 --studies 1536 --workers "$W" \
  --ceiling-studies 256 --all-outputs-studies 96 --naive-studies 0
# 3. real CXR size 2500x2048 12-bit, 512 studies
step 04_score_2500 90 python3 benchmarks/score.py --device cuda --preset real --batch-size 32 --studies 512 \
  --workers "$W" --ceiling-studies 64 --all-outputs-studies 0 --naive-studies 0 --preprocess batched
# 4. host budget: a near-free network of the same output shape, 1536 studies, and the worker count (2 vs 12)
step 05_null_network 45 python3 benchmarks/score.py --device cuda --null-network --batch-size 32 --studies 1536 \
  --workers "$W" --workers 2 --ceiling-studies 128 --naive-studies 0 --preprocess batched
cat "$OUT/steps.txt" >> "$LOG" 2>/dev/null
exit 0
