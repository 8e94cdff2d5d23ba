#!/usr/bin/env bash
# Create .venv and install the project. torch 2.13.0 goes first so that pip keeps the CPU wheel
# (on machines with a GPU, set TORCH_SPEC or install the CUDA build of your choice first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "environment ready: $(.venv/bin/python -c 'import torch, monai, mlflow; print(f"torch {torch.__version__}, monai {monai.__version__}, mlflow {mlflow.__version__}")')"
