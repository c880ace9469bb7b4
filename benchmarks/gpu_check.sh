#!/usr/bin/env bash
# The prepared GPU check in one command, on a GPU machine (see benchmarks/gpu_check/__init__.py for what
# it measures):  benchmarks/gpu_check.sh --batch 64 [--out DIR] [--parts env,tests,...]
# The default parts fit one 10-minute call on one H100 (~9 min, not yet timed there).
# The machine needs Python with torch (CUDA), transformers, sentencepiece, tensorboard, pytest.
# Packages it lacks (deepspeed and its pure-Python needs) are installed from .whl/, which
# benchmarks/gpu_wheels.sh fills on a machine that reaches a package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
if ! "$py" -c 'import deepspeed' >/dev/null 2>&1; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "error: gpu_check.sh: deepspeed is not installed and .whl/ holds no wheels (run benchmarks/gpu_wheels.sh where a package index is reachable)" >&2
        exit 2
    fi
    site="${TMPDIR:-/tmp}/lai-gpu-site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$py" -m benchmarks.gpu_check "$@"
