#!/usr/bin/env bash
# What a user meets: the size of .venv, the time `make demo`'s core takes and the size of what it writes, each with
# the machine and its load. docs/benchmarks.md quotes its output.
#
#   bash scripts/measure_footprint.sh            # sizes of .venv and demo_out as they are
#   bash scripts/measure_footprint.sh --demo     # also runs the demo (python -m cadpipe demo) into a fresh folder
#
# Environment: VENV (default .venv), DEMO_OUT (default demo_out; --demo removes and rewrites it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DEMO_OUT=${DEMO_OUT:-demo_out}
PY="$VENV/bin/python"

machine() {
    local cpu cores mem gpu
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)
    cores=$(nproc)
    mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "? GiB")
    gpu=$(command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    echo "machine: $(uname -m), $cores cores ($cpu), $mem memory, GPU: ${gpu:-none}"
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
size() { if [ -e "$1" ]; then du -sh "$1" 2>/dev/null | cut -f1; else echo "absent"; fi; }

machine
echo "load average (1/5/15 min) at start: $(load)"
echo ".venv ($VENV): $(size "$VENV")"
if [ "${1:-}" = "--demo" ]; then
    rm -rf "$DEMO_OUT"
    start=$(date +%s.%N)
    "$PY" -m cadpipe demo --output "$DEMO_OUT" --quiet
    end=$(date +%s.%N)
    echo "demo (python -m cadpipe demo): $(awk -v a="$start" -v b="$end" 'BEGIN {s = b - a; printf "%d min %d s", s / 60, s % 60}')"
    echo "load average at end: $(load)"
fi
echo "demo_out ($DEMO_OUT): $(size "$DEMO_OUT")"
