#!/usr/bin/env bash
# GPU measurements for batched scoring and training, one script for one device session (about 6 minutes).
#
# Needs: the checkout with wheels of monai==1.6.1 pytorch-ignite pydicom pylibjpeg* nibabel highdicom fire termcolor
# in .whl/ (see the GPU machine notes: Python 3.12, manylinux x86-64; git-ignored), torch with CUDA on the machine.
# Writes every log to $OUT (default ./gpu_check_out). Each step has its own timeout, so one slow or failing step
# leaves the others' numbers. Run:  OUT=/some/folder bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    > "$OUT/00_pip.log" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 -m cadpipe "$@"\n' > /tmp/bin/cadpipe; chmod +x /tmp/bin/cadpipe
export PATH=/tmp/bin:$PATH
W=${WORKERS:-12}

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, note the exit status
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g; df -h /dev/shm;
  python3 -c "import torch, monai; print(torch.__version__, torch.version.cuda, monai.__version__, torch.cuda.is_available())"
} > "$OUT/01_env.log" 2>&1

# 1. batched (device) vs per-item (CPU) agreement on CUDA; bf16+channels_last vs fp32
step 02_agreement 60 python3 benchmarks/batched_agreement.py --device cuda --studies 48
# 2. 512x400: per-item vs batched end to end, steady, start-up, all outputs (Grad-CAM + reports), vs the ceiling
step 03_score_512 150 python3 benchmarks/score.py --device cuda --batch-size 32 --studies 1536 --workers "$W" \
  --ceiling-studies 256 --all-outputs-studies 96 --naive-studies 0
# 3. real CXR size 2500x2048 12-bit
step 04_score_2500 120 python3 benchmarks/score.py --device cuda --preset real --batch-size 32 --studies 128 \
  --workers "$W" --ceiling-studies 64 --all-outputs-studies 0 --naive-studies 0
# 4. host budget: a near-free network of the same output shape
step 05_null_network 60 python3 benchmarks/score.py --device cuda --null-network --batch-size 32 --studies 1536 \
  --workers "$W" --ceiling-studies 128 --naive-studies 0
# 5. precision and layout: bf16 autocast + channels_last (the fp32 numbers are step 03's)
step 06_bf16_channels_last 60 python3 benchmarks/score.py --device cuda --precision bf16 --channels-last \
  --batch-size 32 --studies 1536 --workers "$W" --ceiling-studies 256 --all-outputs-studies 0 --naive-studies 0 \
  --preprocess batched
# 6. brain training: iteration vs the same step on preloaded tensors (the training ceiling)
step 07_brain_train 75 python3 benchmarks/brain_segmentation.py --device cuda --iterations 20 --threads 8
cp "$OUT/steps.txt" "$OUT/zz_steps_copy.txt" 2>/dev/null
exit 0
