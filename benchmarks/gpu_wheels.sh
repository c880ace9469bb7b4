#!/usr/bin/env bash
# Fill .whl/ with what benchmarks/gpu_check.sh needs on a GPU machine that has torch but no
# package index: DeepSpeed (built here as a pure-Python wheel, ops compile just in time there)
# and its pure-Python dependencies, for Python ${GPU_PYTHON:-3.12} on x86-64 Linux.
#   benchmarks/gpu_wheels.sh          # then copy or carry .whl/ to the GPU machine
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-.venv/bin/python}"
[[ -x "$py" ]] || py=python3
target="${GPU_PYTHON:-3.12}"
ds="$("$py" -c 'import deepspeed; print(deepspeed.__version__)')"
pyd="$("$py" -c 'import pydantic; print(pydantic.VERSION)')"
core="$("$py" -c 'import pydantic_core; print(pydantic_core.__version__)')"
mkdir -p .whl
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "deepspeed==$ds"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tmp"/deepspeed-*.tar.gz
"$py" -m pip download -q --no-deps --only-binary :all: --python-version "$target" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "pydantic==$pyd" "pydantic_core==$core" hjson \
    annotated-types typing-inspection "typing_extensions>=4.16"
ls -1 .whl
