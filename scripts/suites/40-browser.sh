#!/usr/bin/env bash
# The dashboard in a real browser: Selenium drives Debian's headless Chromium (packages chromium
# and chromium-driver, installed here when missing and running as root) through
# tests/browser/ against a real `bgagent dev` on each engine in turn.
#
#   BGAGENT_SCREENSHOTS=DIR   also save a screenshot of every page into DIR (scripts/screenshots)
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: the browser tests need Debian's chromium and chromium-driver:" >&2
    echo "  sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
  echo "-- installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Selenium and pytest pinned in a virtualenv of their own, created (or updated) when the pins change.
venv="${BGAGENT_BROWSER_VENV:-$HOME/.cache/bgagent/venv-browser}"
pins="$(cat tests/browser/requirements.txt)"
if [[ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
  printf '%s' "$pins" >"$venv/.pins"
fi

source scripts/lib/dev.sh
engines=(${BGAGENT_BROWSER_ENGINES:-embedded postgres})
for engine in "${engines[@]}"; do
  start_dev browser 1 "$engine"
  echo "-- tests/browser ($engine)"
  BGAGENT_URL="$DEV_URL" BACKGROUND_AGENT_API_KEY="$DEV_KEY" \
    "$venv/bin/pytest" -q --tb=short -p no:cacheprovider tests/browser
  stop_dev
done
