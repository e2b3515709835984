#!/usr/bin/env bash
# Installs Debian's headless Chromium and its WebDriver for the portal's browser test
# (tests/integration/test_portal_browser.py). Never downloads a browser from anywhere else.
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver exist.
# Not root / no apt-get: prints why and exits 0; the browser test then skips with that reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "browser_deps: chromium and chromedriver present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "browser_deps: chromium missing and not root; install 'chromium chromium-driver' with apt (browser test will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser_deps: chromium missing and no apt-get (browser test will skip)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium chromium-driver; then
    apt-get update
    apt-get install -y --no-install-recommends chromium chromium-driver
fi
echo "browser_deps: installed $(chromium --version 2>/dev/null || echo chromium)"
