#!/usr/bin/env bash
# Installs the DICOM checkers the conformance tests run on every SR, SEG and Secondary Capture cadpipe writes:
# dciodvfy (Debian dicom3tools, David Clunie's IOD verifier) and dsrdump (Debian dcmtk).
# Idempotent: does nothing when both are present.
# Not root / no apt-get: prints why and exits 0; tests/pipelines/outputs/test_dicom_conformance.py then skips with
# that reason.
set -euo pipefail

if command -v dciodvfy >/dev/null 2>&1 && command -v dsrdump >/dev/null 2>&1; then
    echo "dicom_tools: dciodvfy and dsrdump present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "dicom_tools: dciodvfy/dsrdump missing and not root; install 'dicom3tools dcmtk' with apt" \
         "(conformance tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "dicom_tools: dciodvfy/dsrdump missing and no apt-get (conformance tests will skip)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends dicom3tools dcmtk; then
    apt-get update
    apt-get install -y --no-install-recommends dicom3tools dcmtk
fi
echo "dicom_tools: installed dciodvfy and dsrdump"
