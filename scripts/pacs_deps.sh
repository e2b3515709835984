#!/usr/bin/env bash
# Installs Debian's Orthanc and its DICOMweb plugin for the PACS integration tests
# (tests/integration/test_pacs_*.py start their own Orthanc on free loopback ports; the system service is not used).
# Idempotent: does nothing when Orthanc and the plugin are present.
# Not root / no apt-get: prints why and exits 0; those tests then skip with that reason.
set -euo pipefail

if command -v Orthanc >/dev/null 2>&1 && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; then
    echo "pacs_deps: orthanc and orthanc-dicomweb present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "pacs_deps: orthanc missing and not root; install 'orthanc orthanc-dicomweb' with apt (PACS tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "pacs_deps: orthanc missing and no apt-get (PACS tests will skip)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends orthanc orthanc-dicomweb; then
    apt-get update
    apt-get install -y --no-install-recommends orthanc orthanc-dicomweb
fi
# the package starts a system Orthanc on 4242/8042 where an init system runs; the tests do not need it
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    systemctl stop orthanc || true
fi
echo "pacs_deps: installed $(Orthanc --version 2>/dev/null | head -1)"
