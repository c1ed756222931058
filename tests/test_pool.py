"""The worker pool (moa/pool.h) and the GEMM lifted onto it: every item runs exactly once, and the
product is bitwise the same for every thread count (a static partition), on the host (under
ASan/UBSan, and ThreadSanitizer) and under qemu-user on rpi4 and k230, against numpy float64."""
import subprocess

import numpy as np
import pytest

from moa_edge.ops.qmatmul import pack_quantized
from conftest import SANITIZE
from test_matmul import GEMM_SOURCES, build_harness

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa/matmul.h"
#include "moa/pool.h"
#include "moa/qmatmul.h"

/* argv: pool ITEMS THREADS...            stdout: per thread count, how often each item ran and the
 *                                        thread that ran it (int32 each)
 *       gemm KIND M N K THREADS...       KIND view | packed | i8 (scales per column, one block)
 *                                        stdin: A (M x K), then B: K x N floats (view), packed
 *                                        floats (packed), or panels of int8 then scales (i8); C (N)
 *                                        stdout: Y (M x N) per thread count */
typedef struct { int *hits, *owner; } count_job;

/* How often each item ran, and the thread that ran it. */
static void count(void *ctx, size_t first, size_t end, size_t thread)
{
    count_job *job = (count_job *)ctx;
    size_t i;
    for (i = first; i < end; i++) {
        job->hits[i]++;
        job->owner[i] = (int)thread;
    }
}

static void *read_bytes(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL || fread(p, 1, n, stdin) != n) {
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    int arg;
    moa_pool pool;
    if (argc > 2 && strcmp(argv[1], "pool") == 0) {
        const size_t items = strtoul(argv[2], NULL, 10);
        count_job job;
        job.hits = calloc(items ? items : 1, sizeof(int)), job.owner = calloc(items ? items : 1, sizeof(int));
        for (arg = 3; arg < argc; arg++) {
            if (moa_pool_init(&pool, strtoul(argv[arg], NULL, 10)) != MOA_OK) {
                free(job.hits), free(job.owner);
                return 3;
            }
            memset(job.hits, 0, (items ? items : 1) * sizeof(int));
            moa_pool_for(&pool, items, count, &job);
            moa_pool_for(&pool, items, count, &job); /* a second job on the same workers */
            fwrite(job.hits, sizeof(int), items, stdout);
            fwrite(job.owner, sizeof(int), items, stdout);
            moa_pool_destroy(&pool);
        }
        free(job.hits), free(job.owner);
        return 0;
    }
    if (argc > 6 && strcmp(argv[1], "gemm") == 0) {
        const char *kind = argv[2];
        const size_t M = strtoul(argv[3], NULL, 10), N = strtoul(argv[4], NULL, 10), K = strtoul(argv[5], NULL, 10);
        const size_t panels = (N + 15) / 16;
        float *A = read_bytes(M * K * sizeof(float)), *B = NULL, *S = NULL, *C, *Y = malloc(M * N * sizeof(float));
        int8_t *Q = NULL;
        moa_matrix_f32 a, b, c;
        moa_qweights w;
        memset(&w, 0, sizeof w);
        if (strcmp(kind, "i8") == 0) {
            Q = read_bytes(panels * 16 * K), S = read_bytes(panels * 16 * sizeof(float));
            w.type = MOA_QW_I8, w.block = K, w.q = Q, w.scale = S;
        } else {
            B = read_bytes((strcmp(kind, "packed") == 0 ? panels * 16 : N) * K * sizeof(float));
        }
        C = read_bytes(N * sizeof(float));
        a.data = A, a.row_stride = (ptrdiff_t)K, a.col_stride = 1;
        b.data = B, b.row_stride = (ptrdiff_t)N, b.col_stride = 1;
        c.data = C, c.row_stride = 0, c.col_stride = 1; /* a bias row, broadcast */
        for (arg = 6; arg < argc; arg++) {
            moa_status status;
            if (moa_pool_init(&pool, strtoul(argv[arg], NULL, 10)) != MOA_OK) {
                return 3;
            }
            memset(Y, 0xff, M * N * sizeof(float));
            status = strcmp(kind, "view") == 0     ? moa_gemm_f32_on(&pool, M, N, K, 0.5f, a, b, 2.0f, c, Y, (ptrdiff_t)N)
                     : strcmp(kind, "packed") == 0 ? moa_gemm_packed_f32_on(&pool, M, N, K, 0.5f, a, B, 2.0f, c, Y,
                                                                             (ptrdiff_t)N)
                                                   : moa_gemm_qw_f32_on(&pool, M, N, K, 0.5f, a, w, 2.0f, c, Y,
                                                                        (ptrdiff_t)N);
            moa_pool_destroy(&pool);
            if (status != MOA_OK) {
                return 100 + (int)status;
            }
            fwrite(Y, sizeof(float), M * N, stdout);
        }
        free(A), free(B), free(Q), free(S), free(C), free(Y);
        return 0;
    }
    return 2;
}
"""
SOURCES = GEMM_SOURCES  # matmul.c and pool.c among them
VARIANTS = {
    "host-sanitized": ("host", SANITIZE, None, None),
    "host-thread-sanitized": ("host", ["-fsanitize=thread", "-g"], None, None),
    "rpi4-neon": ("rpi4", [], None, "neon"),
    "k230-rvv": ("k230", [], None, "rvv"),
}
THREADS = [1, 2, 3, 4, 7]


@pytest.fixture(scope="module", params=list(VARIANTS), ids=str)
def pool_exe(request, tmp_path_factory):
    return build_harness(VARIANTS[request.param], HARNESS, SOURCES, tmp_path_factory)


@pytest.mark.board
@pytest.mark.parametrize("items", [0, 1, 5, 64, 1001])
def test_every_item_runs_once_per_job(pool_exe, items):
    proc = subprocess.run([*pool_exe.command, "pool", str(items), *map(str, THREADS)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    counts = np.frombuffer(proc.stdout, np.int32).reshape(len(THREADS), 2, items)
    for threads, (hits, owner) in zip(THREADS, counts):
        assert np.all(hits == 2)  # two jobs, each item once in each
        static = np.concatenate([np.full(items * (t + 1) // threads - items * t // threads, t) for t in range(threads)]
                                ) if items > 1 else np.zeros(items, np.int32)  # one item: the caller's
        assert np.array_equal(owner, static), f"{threads} threads: not the static partition"


@pytest.mark.board
def test_too_many_threads_is_refused(pool_exe):
    proc = subprocess.run([*pool_exe.command, "pool", "4", "65"], capture_output=True)
    assert proc.returncode == 3


def _packed(b: np.ndarray) -> np.ndarray:
    K, N = b.shape
    panels = -(-N // 16)
    padded = np.zeros((K, panels * 16), np.float32)
    padded[:, :N] = b
    return np.ascontiguousarray(padded.reshape(K, panels, 16).transpose(1, 0, 2))


# Shapes that lift columns (more panels than threads; the decode GEMV), rows (one panel, many MC
# blocks of rows; a wide product of 64 rows a thread or more, by columns on 7 threads and i8)
# and neither (a small product stays on the caller's thread).
@pytest.mark.board
@pytest.mark.parametrize("kind", ["view", "packed", "i8"])
@pytest.mark.parametrize("M, N, K", [(1, 1000, 64), (37, 200, 70), (400, 16, 40), (300, 600, 50), (3, 20, 9)])
def test_gemm_is_bitwise_the_same_on_every_thread_count(pool_exe, kind, M, N, K):
    rng = np.random.default_rng(M + N + K)
    a = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    if kind == "i8":
        q = rng.integers(-127, 128, (K, N)).astype(np.int8)
        scale = rng.uniform(0.001, 0.05, (1, N)).astype(np.float32)
        values, scales, _ = pack_quantized(q, scale, None, "i8", K)
        b = q.astype(np.float64) * scale.astype(np.float64)
        stdin = a.tobytes() + values.tobytes() + scales.tobytes() + bias.tobytes()
    else:
        b32 = rng.standard_normal((K, N)).astype(np.float32)
        b = b32.astype(np.float64)
        stdin = a.tobytes() + (_packed(b32) if kind == "packed" else b32).tobytes() + bias.tobytes()
    proc = subprocess.run([*pool_exe.command, "gemm", kind, str(M), str(N), str(K), *map(str, THREADS)], input=stdin,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    ys = np.frombuffer(proc.stdout, np.float32).reshape(len(THREADS), M, N)
    for threads, y in zip(THREADS[1:], ys[1:]):
        assert np.array_equal(y.view(np.uint32), ys[0].view(np.uint32)), f"{threads} threads differ from one"
    expected = 0.5 * a.astype(np.float64) @ b + 2.0 * bias.astype(np.float64)
    magnitude = 0.5 * np.abs(a).astype(np.float64) @ np.abs(b) + 2.0 * np.abs(bias)
    assert np.all(np.abs(ys[0] - expected) <= 1e-5 * magnitude + 1e-30)
