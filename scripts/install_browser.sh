#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver for the real-browser leaderboard test (tests/test_leaderboard_browser.py).
# Runs as root (CI containers) or through sudo; does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_browser.sh: needs root (or passwordless sudo) to apt-get install chromium chromium-driver" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y chromium chromium-driver
/usr/bin/chromium --version
