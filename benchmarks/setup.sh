#!/usr/bin/env bash
# Install what the benchmark suite needs beyond the project's own dependencies:
# Debian's nginx (with the echo module, for latency) and wrk, and requests in the venv.
# Run as root (or with sudo); `python -m benchmarks.run` calls it when a tool is missing.
set -euo pipefail

PYTHON="${1:-$(dirname "$0")/../.venv/bin/python}"
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/bin/time ] || missing+=(time)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # --no-install-recommends: nginx's recommends pull in nothing the benchmark uses.
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged nginx service on install when it can; the benchmark runs its
    # own nginx on a free port, so stop that one if it did start.
    if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
        $SUDO systemctl stop nginx || true
    fi
fi

if ! "$PYTHON" -c "import requests" 2>/dev/null; then
    echo "setup.sh: pip install requests"
    "$PYTHON" -m pip install --quiet requests
fi
