#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install cacl_dist into it.
# PyTorch comes from the local wheel cache when one is configured (pip constraint), else from PyPI.
# CACL_VENV picks another folder, TORCH_VERSION / TORCHVISION_VERSION other releases (CI tests the
# oldest supported torch that way, in .venv-torch-floor).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CACL_VENV:-.venv}
if [ ! -x "$VENV"/bin/python ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV"/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV"/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "installing torch ${TORCH_VERSION:-2.14.1} and torchvision ${TORCHVISION_VERSION:-0.29.1} into $VENV ..."
    "$VENV"/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
"$VENV"/bin/python -m pip install -q -e ".[dev]"
# NVIDIA DALI (the faster input pipeline, also CPU-only) has wheels for Linux only: about 200 MB,
# seconds to install. CACL_WITH_DALI=0 skips it; a failed install falls back to torchvision.
if [ "${CACL_WITH_DALI:-1}" = "1" ] && [ "$(uname -s)" = "Linux" ] && \
        ! "$VENV"/bin/python -c "import nvidia.dali" >/dev/null 2>&1; then
    echo "installing NVIDIA DALI into $VENV (CACL_WITH_DALI=0 skips it) ..."
    "$VENV"/bin/python -m pip install -q -e ".[dali]" || echo "NVIDIA DALI could not be installed; the torchvision pipeline will be used"
fi
echo "environment ready: $("$VENV"/bin/python -c 'import torch, cacl_dist; print("torch", torch.__version__, "cacl_dist", cacl_dist.__version__)')$("$VENV"/bin/python -c 'import nvidia.dali as d; print(", DALI", d.__version__)' 2>/dev/null || true)"
