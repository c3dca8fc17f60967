#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in .venv holding the CPU build
# of PyTorch, netadapt (editable) with its dev tools, and the built-in Fashion-MNIST data.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
# Pinned here, not in pyproject: torch==2.13.0 is the CPU wheel on this machine's disk;
# an unpinned torch would pull a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[dev]"
.venv/bin/python -c "import netadapt, torch, onnxruntime" # fail loudly if pip failed

# Fashion-MNIST (IDX files) from Debian's dataset-fashion-mnist: the search's default data.
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
         { $SUDO apt-get update -q >/dev/null 2>&1 &&
           $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    echo "warning: could not install Debian's dataset-fashion-mnist; pass --data DIR to" \
         "netadapt search (IDX files or an ImageFolder tree)" >&2
  fi
fi
echo "set-up done: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
