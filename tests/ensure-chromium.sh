#!/usr/bin/env bash
# The console's tests drive Debian's headless Chromium through its chromedriver. Install both
# from the distribution's packages when they are missing; nothing downloads a browser build.
set -euo pipefail

[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && exit 0
if ! command -v apt-get >/dev/null; then
    cat >&2 <<'MESSAGE'
Chromium is missing and there is no apt-get here to install it: install Chromium and its
chromedriver as /usr/bin/chromium and /usr/bin/chromedriver with this system's package
manager, or the console's tests (tests/e2e/test_console.py) fail.
MESSAGE
    exit 0
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
echo "installing chromium and chromium-driver for the console's browser tests ..." >&2
"${as_root[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q chromium chromium-driver
