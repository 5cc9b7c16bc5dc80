#!/usr/bin/env bash
# System packages for the browser (chromium, chromedriver, a CJK font) and PostgreSQL tests (Debian). Idempotent; skipped when not root or no apt.
set -euo pipefail
want=()
[ -x /usr/bin/chromium ] || want+=(chromium)
[ -x /usr/bin/chromedriver ] || want+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
# Hangul glyphs for the leaderboard screenshots (otherwise Korean renders as empty boxes)
[ -d /usr/share/fonts/opentype/noto ] || want+=(fonts-noto-cjk)
if [ ${#want[@]} -eq 0 ]; then
  echo "system deps: already installed"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system deps: cannot install ${want[*]} (need root and apt-get); the tests that need them will be skipped"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
echo "system deps: installed ${want[*]}"
