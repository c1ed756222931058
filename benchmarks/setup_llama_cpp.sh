#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's Python binding) from source for `moa-edge bench generate`:
# a CPU-only build, no BLAS, so that both sides run their own kernels. Only PyPI is reached (the
# sdist bundles llama.cpp). Takes minutes on two cores; `make test` never runs it.
#
# Installs into the project's .venv, or into the venv named by $VENV (created with python3 -m venv,
# or $PYTHON -m venv, when it does not exist yet).
#
# $MARCH picks the instruction set, as moa-edge's `bench generate --host-march` does for its side:
#   (unset)     -march=native: this machine's widest ISA (AVX-512 with VNNI where the CPU has it)
#   x86-64-v3   AVX2 + FMA + F16C + BMI2 only (no AVX-512, no AVX-VNNI, no AMX): the peer of
#               moa-edge's -march=x86-64-v3 build
#   x86-64-v4   AVX-512 F/CD/VL/DQ/BW + AVX2 (no VNNI, no AMX)
# e.g. MARCH=x86-64-v3 VENV=/work/venv-llama-x86-64-v3 benchmarks/setup_llama_cpp.sh
# `bench generate --llama-python VENV` runs each such build as its own llama.cpp peer, and the table
# names the ISA the build reports (llama_print_system_info).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
march=${MARCH:-native}
# The version pinned by the `bench` extra of pyproject.toml.
version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$repo/pyproject.toml")
[ -n "$version" ] || { echo "no llama-cpp-python pin in $repo/pyproject.toml" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    [ -n "${VENV:-}" ] || { echo "no Python venv at $venv (run make setup, or set VENV)" >&2; exit 1; }
    [ ! -e "$venv" ] || { echo "$venv exists but holds no bin/python: not a venv" >&2; exit 1; }
    "${PYTHON:-python3}" -m venv "$venv"
fi
common="-DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# Explicit ISA switches (ggml/CMakeLists.txt: with GGML_NATIVE=OFF each GGML_<ISA> adds its -m flag and
# its GGML_<ISA> definition to ggml-cpu); -march=ARCH for the rest of the code too, so nothing wider
# slips in through the compiler's default.
x86_off="-DGGML_AVX_VNNI=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
x86_v3="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
case "$march" in
native)
    export CMAKE_ARGS="-DGGML_NATIVE=ON $common"
    # ggml's AMX matmul (picked by -march=native when the CPU reports amx_int8) crashes on some hosts
    # (ggml-org/llama.cpp#20824: a segfault in ggml_backend_amx_mul_mat; so in the 2-vCPU KVM guests
    # moa-edge is developed on, with Q8_0/Q4_0 files), and moa-edge has no AMX kernels: without it, both
    # sides run AVX-512 (VNNI) code. GCC and clang honour an explicit -mno-* whatever -march comes after.
    if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
        CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
    fi
    ;;
x86-64-v3)
    export CMAKE_ARGS="-DGGML_NATIVE=OFF $common $x86_v3 -DGGML_AVX512=OFF $x86_off -DCMAKE_C_FLAGS=-march=x86-64-v3 -DCMAKE_CXX_FLAGS=-march=x86-64-v3"
    ;;
x86-64-v4)
    export CMAKE_ARGS="-DGGML_NATIVE=OFF $common $x86_v3 -DGGML_AVX512=ON $x86_off -DCMAKE_C_FLAGS=-march=x86-64-v4 -DCMAKE_CXX_FLAGS=-march=x86-64-v4"
    ;;
*)
    echo "MARCH=$march: not one of native, x86-64-v3, x86-64-v4" >&2; exit 1
    ;;
esac
echo "llama-cpp-python $version into $venv, MARCH=$march: CMAKE_ARGS=$CMAKE_ARGS"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$venv/bin/python" -m pip install --no-binary llama-cpp-python --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$version"
"$venv/bin/python" -m pip install "llama-cpp-python==$version"  # its dependencies, from PyPI
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built:', llama_cpp.llama_print_system_info().decode())"
