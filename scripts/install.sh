#!/usr/bin/env bash
# Install geo4d-policy into ./.venv (CPU torch from the local wheel cache; no CUDA build).
#   bash scripts/install.sh                # runtime
#   bash scripts/install.sh --dev          # + test tools
#   bash scripts/install.sh --sam2         # + the optional SAM2 extra (any order, with --dev too)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
sam2=0
for arg in "$@"; do
  case "$arg" in
    --dev) extra="[dev]" ;;
    --sam2) sam2=1 ;;
    *) echo "usage: bash scripts/install.sh [--dev] [--sam2]" >&2; exit 2 ;;
  esac
done
# Headless rendering (Drake's VTK renderer through EGL/llvmpipe) needs these system libraries.
if command -v dpkg >/dev/null && ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 >/dev/null
  else
    echo "warning: install libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 for headless rendering" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/pip install -q --disable-pip-version-check)
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
echo "torch==2.13.0" > .venv/constraints.txt
"${pip[@]}" -c .venv/constraints.txt -e ".${extra}"
if [ "$sam2" = 1 ]; then
  # The `sam2` extra, CPU-only: PyPI has sam2 as an sdist whose CUDA extension is optional
  # (SAM2_BUILD_CUDA=0; building it in isolation would fetch another torch), and its torchvision
  # dependency resolves to PyPI's CUDA wheel, which does not import beside the CPU torch. SAM2's
  # video predictor never imports torchvision, so sam2 goes in without it, then its other deps.
  SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation --no-deps -c .venv/constraints.txt "sam2==1.1.0"
  "${pip[@]}" -c .venv/constraints.txt "hydra-core>=1.3.2" "iopath>=0.1.10"
fi
echo "installed into $(pwd)/.venv"
