#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's Python binding) from source for `moa-edge bench generate`:
# a CPU-only build for this machine's ISA (-march=native, as moa-edge builds for the host), no
# BLAS, so that both sides run their own float32 kernels. Only PyPI is reached (the sdist bundles
# llama.cpp). Takes minutes on two cores; `make test` never runs it.
# Installs into the project's .venv, or into the venv named by $VENV.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
# The version pinned by the `bench` extra of pyproject.toml.
version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$repo/pyproject.toml")
[ -n "$version" ] || { echo "no llama-cpp-python pin in $repo/pyproject.toml" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "no Python venv at $venv (run make setup, or set VENV)" >&2; exit 1; }
export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$venv/bin/python" -m pip install --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==$version"
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built')"
