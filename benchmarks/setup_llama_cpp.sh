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
# ggml's AMX matmul (picked by -march=native when the CPU reports amx_int8) crashes on some hosts
# (ggml-org/llama.cpp#20824: a segfault in ggml_backend_amx_mul_mat; so in the 2-vCPU KVM guests
# moa-edge is developed on, with Q8_0/Q4_0 files), and moa-edge has no AMX kernels: without it, both
# sides run AVX-512 (VNNI) code. GCC and clang honour an explicit -mno-* whatever -march comes after.
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
fi
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$venv/bin/python" -m pip install --no-binary llama-cpp-python --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$version"
"$venv/bin/python" -m pip install "llama-cpp-python==$version"  # its dependencies, from PyPI
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built')"
