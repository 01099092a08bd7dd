#!/usr/bin/env bash
# The paper config on one CUDA GPU (bf16, torch.compile): writes benchmarks/gpu_results.json, which
# `python benchmarks/run.py` then shows in RESULTS.md. Extra arguments go to benchmarks/gpu.py
# (e.g. --steps 50, --batch-size 4096, --no-compile). Needs torch and transformers; not datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
fi
exec "$PY" benchmarks/gpu.py --out benchmarks/gpu_results.json "$@"
