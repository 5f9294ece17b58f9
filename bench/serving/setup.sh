#!/usr/bin/env bash
# Installs what the serving benchmark needs besides mycel itself:
#   bench/serving/.venv   Ray Serve, MLServer, torch, torchvision, numpy (uv)
#   oha                   the closed-loop HTTP load generator (cargo install, if missing)
# Usage: bench/serving/setup.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi

if [ ! -x .venv/bin/python ]; then
  uv venv --python 3.11 .venv 2>/dev/null || uv venv .venv
fi
# Plain PyPI wheels (on Linux x86_64 torch brings its CUDA libraries; the benchmark uses
# the CPU only). Set UV_INDEX_URL / UV_EXTRA_INDEX_URL to use another index.
# safetensors: examples/mobilenet-v2/model.py, which every server runs, imports it.
# mlserver>=1.7: left open, the resolver picks mlserver 1.2, which fails on pydantic 2.
# uvloop<0.22: MLServer 1.7.1's parallel worker calls asyncio.get_event_loop() with no
# loop set, which uvloop 0.22 on makes an error (the model never loads).
VIRTUAL_ENV=$here/.venv uv pip install "ray[serve]" "mlserver>=1.7" "uvloop<0.22" torch torchvision numpy safetensors
.venv/bin/python -c 'import ray, mlserver, torch, torchvision; print("ray", ray.__version__, "| mlserver", mlserver.__version__, "| torch", torch.__version__, "| torchvision", torchvision.__version__)'

if ! command -v oha >/dev/null 2>&1; then
  cargo install oha --locked
fi
oha --version
