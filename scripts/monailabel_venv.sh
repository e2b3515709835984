#!/usr/bin/env bash
# Create (or reuse) the MONAI Label 0.8.5 virtual environment under .build/ and make cadpipe importable in it.
# Idempotent: when the venv exists and imports monailabel + cadpipe it returns at once.
# Usage: scripts/monailabel_venv.sh [venv_dir]     (default: <repo>/.build/monailabel-venv)
# Prints the venv's python path on the last line of stdout.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.build/monailabel-venv}"
PY="$VENV/bin/python"
# MONAI Label 0.8.5 pins on this machine (see docs/monailabel.md)
PINS=(torch==2.14.1 torchvision==0.29.1 "pydicom==2.4.4" "dicomweb-client==0.59.1" "pynetdicom<2.1" "monailabel==0.8.5")
# cadpipe runtime dependencies that monailabel does not already bring (no pydicom 3: the venv keeps pydicom 2.4.4)
EXTRA=("pytorch-ignite>=0.5" "nibabel>=5.0" "scikit-image>=0.22" "pillow>=10.0" "einops>=0.7" "fire>=0.5" "tqdm>=4.60" "tensorboard>=2.14" "pandas>=2.0" "itk>=5.3")

# cadpipe.pipelines.monailabel.infer: the infer tasks the assembled app imports (needs monailabel + cadpipe)
check() { (cd / && "$PY" -c "import monailabel, cadpipe, ignite, nibabel, skimage, cadpipe.pipelines.monailabel.infer" >/dev/null 2>&1); }

if [ -x "$PY" ] && check; then
  echo "$PY"; exit 0
fi
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q "${PINS[@]}" >&2
fi
"$PY" -m pip install -q "${EXTRA[@]}" >&2
"$PY" -m pip install -q --no-deps -e "$REPO" >&2
check || { echo "monailabel venv at $VENV cannot import monailabel/cadpipe" >&2; exit 1; }
echo "$PY"
