#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install cacl_dist into it.
# PyTorch comes from the local wheel cache when one is configured (pip constraint), else from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "installing torch and torchvision into .venv ..."
    .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "environment ready: $(.venv/bin/python -c 'import torch, cacl_dist; print("torch", torch.__version__, "cacl_dist", cacl_dist.__version__)')"
