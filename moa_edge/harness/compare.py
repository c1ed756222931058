"""Tolerances, stated once, and the error figures every report uses."""
from __future__ import annotations

import numpy as np

from moa_edge.ir import dtypes

# fp32 kernels against a PyTorch float64 reference (issue 2).
MAX_ABS_ERR = 1e-5
MAX_REL_ERR = 1e-5  # relative to max |reference|
# convert --weights fp16:native: half-precision sums in the GEMVs (qmatmul.h's contract), held to
# this error relative to max |reference| instead of float32's.
NATIVE_HALF_REL_ERR = 2.0 ** -8
# A float16 or bfloat16 output (passes/half.py) is rounded once from float32, and so is the
# reference: they may land on neighbouring halves; the ONNX reference evaluator rounds every op of a
# half file to the half. Two units in the half's last place, relative to max |reference|.
HALF_REL_ERR = {"float16": 2.0 ** -9, "bfloat16": 2.0 ** -6}


def _ulp_distance(a: np.ndarray, b: np.ndarray, dtype=np.float32) -> int:
    """Largest distance in units in the last place of `dtype` (float32, or the output's half type;
    a monotone integer mapping)."""
    bits = np.dtype(dtype).itemsize * 8
    def ordered(x):
        i = np.asarray(x, dtype=dtype).view(f"int{bits}").astype(np.int64)
        return np.where(i < 0, -(i & (2 ** (bits - 1) - 1)), i)
    if a.size == 0:
        return 0
    return int(np.max(np.abs(ordered(a) - ordered(b))))


def compare(got: np.ndarray, ref: np.ndarray, max_rel: float | None = None) -> dict:
    """Error figures of `got` against `ref`; a half `got` is held to HALF_REL_ERR, in its own ulps;
    with `max_rel`, any output is held to that error relative to max |ref| alone."""
    record = dtypes.from_numpy(np.asarray(got).dtype)
    half = record if record is not None and record.name in dtypes.HALF_DTYPES else None
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return {"ok": False, "error": f"shape {list(got.shape)} != reference {list(ref.shape)}",
                "max_abs_err": float("inf"), "max_rel_err": float("inf"), "max_ulp": None}
    if not np.all(np.isfinite(got)):
        return {"ok": False, "error": "non-finite values in the output",
                "max_abs_err": float("inf"), "max_rel_err": float("inf"), "max_ulp": None}
    abs_err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel_err = abs_err / scale if scale > 0 else abs_err
    norms = float(np.linalg.norm(got) * np.linalg.norm(ref))
    cosine = float(np.dot(got.reshape(-1), ref.reshape(-1)) / norms) if norms > 0 else float(abs_err == 0)
    if max_rel is not None:
        ok = rel_err <= max_rel
    elif half is not None:
        ok = rel_err <= HALF_REL_ERR[half.name]
    else:
        ok = abs_err <= MAX_ABS_ERR and rel_err <= MAX_REL_ERR
    return {"ok": ok, "max_abs_err": abs_err, "max_rel_err": rel_err,
            "max_ulp": _ulp_distance(got, ref, half.numpy if half is not None else np.float32), "cosine": cosine}


def compare_all(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], max_rel: float | None = None) -> dict:
    """Worst figures over all outputs (`max_rel`: as compare's)."""
    per = {name: compare(got[name], ref[name], max_rel) for name in ref}
    worst = {"ok": all(r["ok"] for r in per.values()),
             "max_abs_err": max(r["max_abs_err"] for r in per.values()),
             "max_rel_err": max(r["max_rel_err"] for r in per.values()),
             "max_ulp": max((r["max_ulp"] or 0) for r in per.values()),
             "min_cosine": min(r.get("cosine", 0.0) for r in per.values()), "outputs": per}
    errors = [f"{n}: {r['error']}" for n, r in per.items() if "error" in r]
    if errors:
        worst["error"] = "; ".join(errors)
    return worst


def accuracy(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """What a reduced-precision build gives up against the float model, per output: cosine, max abs
    and max rel error, and, for outputs of more than one class along the last axis (logits, scores),
    the share of rows whose highest value is the reference's (top-1 agreement). Reported, not judged."""
    figures = {}
    for name, want in ref.items():
        row = compare(got[name], want)
        row.pop("ok")
        row.pop("max_ulp", None)
        want = np.asarray(want)
        if want.ndim >= 1 and want.shape[-1] > 1:
            rows = want.reshape(-1, want.shape[-1])
            row["top1_agreement"] = float(np.mean(np.asarray(got[name]).reshape(rows.shape).argmax(1) == rows.argmax(1)))
        figures[name] = row
    return figures
