#!/usr/bin/env bash
# Create .venv and install viral into it. Where no CUDA GPU is present, torch is the CPU build.
#   bash scripts/setup-venv.sh        the package alone (what `make demo` and `make bench` need)
#   bash scripts/setup-venv.sh --dev  the package with its test extras and the browser the report's test drives
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
# --no-compile: pip would byte-compile every installed file (tens of seconds); Python compiles what it imports.
PIP=(.venv/bin/python -m pip install --quiet --no-compile)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch==2.13.0"
  elif .venv/bin/python -c "import socket; socket.setdefaulttimeout(3); socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
    # No GPU: take the CPU build from PyTorch's CPU index instead of the multi-GB CUDA build.
    "${PIP[@]}" "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    # No GPU and no PyTorch index reachable: the CPU build is expected in pip's configured find-links.
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
if [ "$DEV" = 0 ]; then
  "${PIP[@]}" -e .
  touch .venv/.installed
  exit 0
fi
"${PIP[@]}" -e ".[dev]"
# The HTML report's browser test drives Debian's chromium with Playwright (whose own browser download is not
# used). Best effort: without apt-get or root the test skips and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "setup-venv: could not install chromium with apt-get; the HTML report's browser test will skip" >&2
fi
touch .venv/.installed .venv/.installed-dev
