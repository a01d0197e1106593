#!/usr/bin/env bash
# Install torch into the active environment before the package, choosing the build by hardware:
# a CUDA build where nvidia-smi lists a GPU, a CPU build everywhere else.
set -euo pipefail
PY=${PY:-python}

if "$PY" -c "import torch" 2>/dev/null; then
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing a CUDA build of torch from PyPI"
    "$PY" -m pip install "torch>=2.4,<=2.14.1"
elif ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    echo "No GPU: installing the local CPU build torch==2.13.0"
    "$PY" -m pip install "torch==2.13.0"
else
    echo "No GPU: installing a CPU build of torch from the PyTorch CPU index"
    "$PY" -m pip install "torch>=2.4,<=2.14.1" --index-url https://download.pytorch.org/whl/cpu
fi
