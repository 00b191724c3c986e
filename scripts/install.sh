#!/usr/bin/env bash
# Install geo4d-policy into ./.venv (CPU torch from the local wheel cache; no CUDA build).
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --dev    # + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
# Headless rendering (Drake's VTK renderer through EGL/llvmpipe) needs these system libraries.
if command -v dpkg >/dev/null && ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 >/dev/null
  else
    echo "warning: install libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 for headless rendering" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
echo "torch==2.13.0" > .venv/constraints.txt
.venv/bin/pip install -q --disable-pip-version-check -c .venv/constraints.txt -e ".${extra}"
echo "installed into $(pwd)/.venv"
