#!/usr/bin/env bash
# Debian packages the test suite needs beyond the Python virtualenv.
#
# Idempotent and fast on a warm machine: apt runs only when a binary is missing.
#   prometheus  -> promtool (check config/rules, `test rules`) and the Prometheus server
# Usage: bash .ci/system-deps.sh   (as root, or with sudo available)
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
#   chromium    -> the browser tests (tracker.js in a real page, the demo's HTML report)
browser=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium)

if [ "${#need[@]}" -eq 0 ] && [ "${#browser[@]}" -eq 0 ]; then
    echo "system-deps: all present (promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'), $(chromium --version 2>/dev/null))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
echo "system-deps: installing ${need[*]} ${browser[*]}"
$SUDO apt-get update -qq
# --no-install-recommends: skip node-exporter and friends; policy-rc.d keeps postinst from starting the
# packaged prometheus service (tests start their own, on free ports, when they need one).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
trap 'if [ "$created_policy" -eq 1 ]; then $SUDO rm -f "$policy"; fi' EXIT
if [ "${#need[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Chromium with its recommends (fonts): the browser tests take screenshots of rendered pages.
if [ "${#browser[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq "${browser[@]}" >/dev/null
fi
command -v promtool >/dev/null || { echo "system-deps: promtool still missing after install" >&2; exit 1; }
command -v chromium >/dev/null || { echo "system-deps: chromium still missing after install" >&2; exit 1; }
echo "system-deps: done ($(promtool --version 2>&1 | head -1))"
