"""A process that sees an AVX2 machine on an AVX-512 one: the peers' AVX2 kernels, timed here.

onnxruntime's MLAS (and numpy, and most libraries) choose their kernels from the CPUID
instruction, with no setting to hold them to AVX2. Linux can make CPUID fault instead
(arch_prctl ARCH_SET_CPUID, on CPUs with CPUID faulting, which this machine's KVM offers): the
shared object below, preloaded into a child process, turns faulting on in its constructor
(before Python imports anything; threads and children inherit it) and answers each CPUID from
its SIGSEGV handler with the real leaf minus every AVX-512, AMX and AVX-VNNI feature bit, as an
AVX2 + FMA core (the AMD EPYC of issue 15's table) reports. glibc chose its string functions
before any constructor runs; GLIBC_TUNABLES holds those to AVX2 too.

    env = avx2_env(workdir)           # LD_PRELOAD and GLIBC_TUNABLES for a child process
    subprocess.run([...], env=env)    # that child's numpy reports no AVX512F (see AVX512_PROBE)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

SOURCE = r"""
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long cpuid_faulting(int faulting) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, faulting ? 0 : 1); }

/* CPUID.(7,0): EBX AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31; ECX VBMI 1,
 * VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14; EDX 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22,
 * AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25. CPUID.(7,1): EAX AVX-VNNI 4, AVX512-BF16 5,
 * AMX-FP16 21, AVX-IFMA 23. */
static void mask(unsigned leaf, unsigned subleaf, unsigned *a, unsigned *b, unsigned *c, unsigned *d)
{
    if (leaf == 7 && subleaf == 0) {
        *b &= ~(1u << 16 | 1u << 17 | 1u << 21 | 1u << 26 | 1u << 27 | 1u << 28 | 1u << 30 | 1u << 31);
        *c &= ~(1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14);
        *d &= ~(1u << 2 | 1u << 3 | 1u << 8 | 1u << 22 | 1u << 23 | 1u << 24 | 1u << 25);
    } else if (leaf == 7 && subleaf == 1) {
        *a &= ~(1u << 4 | 1u << 5 | 1u << 21 | 1u << 23);
    }
}

static void on_segv(int sig, siginfo_t *info, void *context)
{
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    (void)info;
    if (ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        const unsigned leaf = (unsigned)r[REG_RAX], subleaf = (unsigned)r[REG_RCX];
        unsigned a, b, c, d;
        cpuid_faulting(0);
        __cpuid_count(leaf, subleaf, a, b, c, d);
        cpuid_faulting(1);
        mask(leaf, subleaf, &a, &b, &c, &d);
        r[REG_RAX] = a, r[REG_RBX] = b, r[REG_RCX] = c, r[REG_RDX] = d;
        r[REG_RIP] += 2;
        return;
    }
    signal(sig, SIG_DFL); /* a real fault: it happens again, and kills as it would have */
}

__attribute__((constructor)) static void hold_to_avx2(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    if (sigaction(SIGSEGV, &action, NULL) != 0 || cpuid_faulting(1) != 0) {
        fputs("cpuid_mask: this CPU or kernel cannot make CPUID fault (arch_prctl ARCH_SET_CPUID)\n", stderr);
        _exit(86);
    }
}
"""

# Run by the child: what numpy's dispatch saw (it reads CPUID when imported).
AVX512_PROBE = "import numpy, json; f = numpy._core._multiarray_umath.__cpu_features__; " \
               "print(json.dumps({k: f[k] for k in ('AVX2', 'FMA3', 'AVX512F')}))"

GLIBC_TUNABLES = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF"


def build_mask(workdir: Path, cc: str = "cc") -> Path:
    """The preloadable shared object, compiled into `workdir` (once)."""
    workdir.mkdir(parents=True, exist_ok=True)
    library = workdir / "libcpuid_avx2.so"
    if not library.exists():
        (workdir / "cpuid_avx2.c").write_text(SOURCE)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", str(workdir / "cpuid_avx2.c"),
                        "-o", str(library)], check=True, capture_output=True)
    return library


def peer_env(native_isa: str | None, build_isa: str | None, workdir: Path) -> dict | None:
    """The environment a peer runs in to be compared with a moa-edge build selecting `build_isa`
    on a host whose own builds select `native_isa` (moa/isa.h names): held to AVX2 for an AVX2
    build on an AVX-512 host, else None (the peer as it runs here)."""
    return avx2_env(workdir) if native_isa == "avx512" and build_isa == "avx2" else None


def avx2_env(workdir: Path, base: dict | None = None) -> dict:
    """An environment whose processes see this CPU without AVX-512; raises if a probe child
    still sees AVX-512 (or AVX2 is gone)."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(build_mask(workdir)), env.get("LD_PRELOAD", "")]))
    env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    probe = subprocess.run([sys.executable, "-c", AVX512_PROBE], env=env, capture_output=True, text=True)
    seen = json.loads(probe.stdout) if probe.returncode == 0 else None
    if seen != {"AVX2": True, "FMA3": True, "AVX512F": False}:
        raise RuntimeError(f"cpuid_mask: a child process did not see an AVX2 machine: {seen or probe.stderr.strip()}")
    return env
