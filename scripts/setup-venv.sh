#!/usr/bin/env bash
# Create .venv and install viral into it. Where no CUDA GPU is present, torch is the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  elif .venv/bin/python -c "import socket; socket.setdefaulttimeout(3); socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
    # No GPU: take the CPU build from PyTorch's CPU index instead of the multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    # No GPU and no PyTorch index reachable: the CPU build is expected in pip's configured find-links.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The HTML report's browser test drives Debian's chromium with Playwright (whose own browser download is not
# used). Best effort: without apt-get or root the test skips and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "setup-venv: could not install chromium with apt-get; the HTML report's browser test will skip" >&2
fi
touch .venv/.installed
