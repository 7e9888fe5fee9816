#!/usr/bin/env bash
# Installs the Bolt apps the edge benchmark compares against, under the directory given
# (target/bolt): Bolt for Python with uvicorn in a virtualenv (PyPI), Bolt for JS (npm).
# Each step is skipped when done. Versions are pinned so that runs compare.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c 'import slack_bolt, uvicorn, aiohttp' 2>/dev/null; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet 'slack_bolt==1.27.0' 'uvicorn==0.38.0' 'aiohttp==3.13.2'
fi
if [ ! -d "$dir/node/node_modules/@slack/bolt" ]; then
  mkdir -p "$dir/node"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund '@slack/bolt@4.4.0' >/dev/null)
fi
