"""Executed instructions counted by a TCG plugin of qemu: all of them (bench attention and bench
gemm, under qemu-user), and on a bare-metal run under qemu-system those between the runner's
profile hooks (main.c calls moa_profile_begin() and moa_profile_end() around each inference;
their addresses come from the program's symbols). QEMU is not cycle-accurate: this is the
count, not a time."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
import re
import shutil
import subprocess

from moa_edge.errors import MoaEdgeError
from moa_edge.target import Board, symbol_lister

HOOKS = ("moa_profile_begin", "moa_profile_end")

PLUGIN = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum { QEMU_PLUGIN_INLINE_ADD_U64 = 0, QEMU_PLUGIN_CB_NO_REGS = 0 };
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, int, void *, uint64_t);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
extern uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned int, void *), int, void *);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
extern void qemu_plugin_outs(const char *);

/* QEMU plugin API v1 (qemu 7.2); Debian ships no qemu-plugin.h, so what it uses is declared above. */
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
/* Each translation block adds its size when it starts (an inline add, no callback); the hooks
 * (begin=ADDR,end=ADDR, none without them) are functions of their own, so a hook's block is the
 * hook alone and the difference of two snapshots is exact. */
static uint64_t executed, started, inside;
static uint64_t begin_pc = UINT64_MAX, end_pc = UINT64_MAX;
static unsigned long windows;
static int open_window;

static void hook(unsigned int vcpu, void *is_end)
{
    (void)vcpu;
    if (!is_end) {
        started = executed;
        open_window = 1;
    } else if (open_window) {
        inside += executed - started;
        windows++;
        open_window = 0;
    }
}

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t i, n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, n);
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (pc == begin_pc || pc == end_pc) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, hook, QEMU_PLUGIN_CB_NO_REGS, pc == end_pc ? (void *)1 : NULL);
        }
    }
}

static void finished(qemu_plugin_id_t id, void *unused)
{
    char line[128];
    (void)id, (void)unused;
    snprintf(line, sizeof line, "insns=%llu inside=%llu windows=%lu\n", (unsigned long long)executed,
             (unsigned long long)inside, windows);
    qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv)
{
    int k;
    (void)info;
    for (k = 0; k < argc; k++) {
        if (strncmp(argv[k], "begin=", 6) == 0) {
            begin_pc = strtoull(argv[k] + 6, NULL, 0);
        } else if (strncmp(argv[k], "end=", 4) == 0) {
            end_pc = strtoull(argv[k] + 4, NULL, 0);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    qemu_plugin_register_atexit_cb(id, finished, NULL);
    return 0;
}
"""


def plugin() -> Path:
    """The plugin, compiled once per source text into the user's cache folder."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moa-edge"
    lib = folder / f"insncount-{hashlib.sha256(PLUGIN.encode()).hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise MoaEdgeError("counting instructions under qemu-system needs a host C compiler (cc) for its plugin")
    folder.mkdir(parents=True, exist_ok=True)
    src, partial = folder / f"{lib.stem}.c", folder / f"{lib.name}.{os.getpid()}.partial"
    src.write_text(PLUGIN)
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(partial)], capture_output=True, text=True)
    if proc.returncode:
        raise MoaEdgeError(f"the qemu instruction-count plugin failed to compile:\n{proc.stderr}")
    os.replace(partial, lib)  # whole, even when two runs build it at once
    return lib


def hook_addresses(binary: Path, board: Board) -> dict[str, int]:
    """The profile hooks' addresses in the program (a Thumb function's symbol has bit 0 set)."""
    nm = symbol_lister(board)
    out = subprocess.run([nm, str(binary)], capture_output=True, text=True, check=True).stdout if nm else ""
    found = {name: int(addr, 16) & ~1 for addr, _, name in (ln.split() for ln in out.splitlines() if len(ln.split()) == 3)
             if name in HOOKS}
    missing = [h for h in HOOKS if h not in found]
    if missing:
        raise MoaEdgeError(f"{binary}: no {', '.join(missing)} (a runner from an older moa-edge? convert again)")
    return found


def emulator_options(binary: Path, board: Board, log: Path) -> list[str]:
    hooks = hook_addresses(binary, board)
    return ["-plugin", f"{plugin()},begin={hooks[HOOKS[0]]:#x},end={hooks[HOOKS[1]]:#x}", "-d", "plugin",
            "-D", str(log)]


def read_counts(log: Path) -> dict:
    """The whole run's instructions, the inferences between the hooks, and one inference's
    (the mean: a bare-metal runner runs one)."""
    m = re.search(r"insns=(\d+) inside=(\d+) windows=(\d+)", log.read_text() if log.is_file() else "")
    if m is None:
        raise MoaEdgeError("the qemu instruction-count plugin reported nothing")
    total, inside, windows = map(int, m.groups())
    return {"instructions": total, "inferences": windows,
            "instructions_per_inference": inside // windows if windows else None}
