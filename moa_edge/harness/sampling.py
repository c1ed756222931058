"""The Python mirror of the C token sampler (c_runtime/include/moa/sampling.h, whose comment states
the steps): the same PCG32 stream and the same float32/float64 operations in the same order, so
a seeded generation on a board can be checked token for token. Sums are sequential (np.cumsum,
never the pairwise np.sum), as the C loops add. The one operation that may differ is exp: numpy's
and the C library's double exp can disagree in the last bit, which changes a draw only if u * W
falls within that bit of a running sum."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moa_edge.errors import MoaEdgeError

RNG_STREAM = 54  # MOA_RNG_STREAM: pcg32-demo's stream
_PCG_MULTIPLIER = 6364136223846793005
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


class Pcg32:
    """pcg32_random_r of M. E. O'Neill's pcg-c-basic; Pcg32(seed) is moa_rng_seed, that is
    pcg32_srandom_r(seed, RNG_STREAM)."""

    def __init__(self, seed: int):
        self.inc = (RNG_STREAM << 1) | 1
        self.state = 0
        self.next_u32()
        self.state = (self.state + seed) & _MASK64
        self.next_u32()

    def next_u32(self) -> int:
        old = self.state
        self.state = (old * _PCG_MULTIPLIER + self.inc) & _MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & _MASK32
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & _MASK32

    def uniform(self) -> float:
        """moa_rng_uniform: the next output times 2^-32, in [0, 1)."""
        return self.next_u32() * 2.0 ** -32


@dataclass(frozen=True)
class Sampling:
    """moa_sampling. The C struct holds float32 fields, so the values are rounded to float32 as
    C would see them (a temperature of 1e-50 is 0 there, hence greedy)."""
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self):
        object.__setattr__(self, "temperature", np.float32(self.temperature))
        object.__setattr__(self, "top_p", np.float32(self.top_p))
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise MoaEdgeError(f"the temperature must be 0 (greedy) or a positive number, not {self.temperature}")
        if not 0 <= self.top_k < 2 ** 31:
            raise MoaEdgeError(f"top-k must be 0 (off) or a positive number of tokens, not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise MoaEdgeError(f"top-p must be in (0, 1] (1 is off), not {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def argmax(logits: np.ndarray) -> int:
    """moa_argmax_f32: the first index of the maximum; the first NaN wins (numpy's rule too)."""
    return int(np.argmax(np.asarray(logits, np.float32)))


def _weights(logits: np.ndarray, sampling: Sampling) -> tuple[np.ndarray, float]:
    """Steps 1-4 of sampling.h: the float32 weights of the kept tokens (0 elsewhere) and their
    float64 sum in token-id order."""
    with np.errstate(over="ignore"):  # a tiny temperature may overflow: refused just below, as in C
        scaled = np.asarray(logits, np.float32).reshape(-1) / sampling.temperature
    if np.isnan(scaled).any() or (scaled == np.inf).any() or (scaled == -np.inf).all():
        raise MoaEdgeError("the logits have no finite maximum (NaN, +inf, or all -inf): nothing to sample from")
    top = np.float64(scaled.max())
    vocab = scaled.size
    if 0 < sampling.top_k < vocab:
        kth = np.sort(scaled)[vocab - sampling.top_k]  # repeated values count, ties at kth stay
        scaled = np.where(scaled < kth, np.float32(-np.inf), scaled)
    if sampling.top_p < 1:
        exps = np.exp(scaled.astype(np.float64) - top)  # 0 for removed tokens, which add nothing
        z = np.cumsum(exps)[-1]
        ids = np.flatnonzero(scaled > -np.inf)
        ranked = ids[np.lexsort((ids, -scaled[ids]))]  # best first, ties by lower id
        reached = np.flatnonzero(np.cumsum(exps[ranked] / z) >= np.float64(sampling.top_p))
        kept = ranked[:reached[0] + 1] if reached.size else ranked
        nucleus = np.full(vocab, -np.inf, np.float32)
        nucleus[kept] = scaled[kept]
        scaled = nucleus
    weights = np.exp(scaled.astype(np.float64) - top).astype(np.float32)
    return weights, float(np.cumsum(weights, dtype=np.float64)[-1])


def sampling_probs(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """moa_sampling_probs_f32: the float32 distribution moa_sample_f32 draws from."""
    if sampling.greedy:
        probs = np.zeros(np.asarray(logits).size, np.float32)
        probs[argmax(logits)] = 1
        return probs
    weights, total = _weights(logits, sampling)
    return (weights.astype(np.float64) / total).astype(np.float32)


def sample(logits: np.ndarray, sampling: Sampling, rng: Pcg32) -> int:
    """moa_sample_f32: greedy takes nothing from rng, sampling one output."""
    if sampling.greedy:
        return argmax(logits)
    weights, total = _weights(logits, sampling)
    target = rng.uniform() * total
    return int(np.argmax(np.cumsum(weights, dtype=np.float64) > target))
