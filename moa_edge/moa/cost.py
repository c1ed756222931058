"""Cost model of one attention block on one board, and the choice of its schedule.

For shapes, a Schedule (strategy, Br, Bc) and the board's cache geometry it predicts the
bytes filled into the last-level cache from DRAM, the bytes filled into L1D, flops, exps,
scratch bytes and energy. It does not assume K and V fit in cache: each query tile walks
all (causal: the visible prefix of) K and V, and those re-reads hit the last-level cache
only while K and V of one head, the tile's Q and output rows and the scratch all fit in
it together (LRU: everything touched between two uses of a K line must fit).
Write-allocate fills of the output count as traffic, as cachegrind counts them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import math

from moa_edge.ir import dtypes
from moa_edge.target import Board

from .mask import MASK_NONE
from .onf import STRATEGIES, Schedule, scratch_bytes
from .spec import AttentionSpec

ELEM = dtypes.COMPUTE_DTYPE.itemsize  # Q, K, V, the output and scratch (the spec names no type yet)
MASK_ELEM = {"float": dtypes.dtype("float32").itemsize, "bool": dtypes.dtype("bool").itemsize}  # by mask_kind
# Key tiles narrower than this leave the micro-kernels (moa/attention.h) too little work per
# call: the score tile's width is its vector dimension (16 floats per AVX-512 register, 32
# per RVV VLEN-256 LMUL-4 group), and every tile costs each row a max, an exp and a rescale.
MIN_BLOCK_K = 128
# Query tiles narrower than this leave the register tiles idle: the score tile packs each 16-key
# panel of K once per call and reuses it over the tile's rows (16 per register tile), and the P V
# tile keeps 12 rows in registers, so each tile should hold several of both.
MIN_BLOCK_Q = 64


@dataclass(frozen=True)
class Cost:
    strategy: str
    block_q: int
    block_k: int
    flops: int
    exps: int
    scratch_bytes: int
    dram_bytes: int         # last-level cache fills (DRAM -> LLC)
    l1_fill_bytes: int      # L1D fills (from L2/LLC or DRAM)
    compulsory_bytes: int   # Q, K, V, mask read once and the output written once
    kv_fits_llc: bool
    energy_uj: float

    def describe(self) -> dict:
        return asdict(self)


def _mask_bytes(spec: AttentionSpec) -> int:
    if spec.mask_kind == MASK_NONE:
        return 0
    distinct = math.prod(n for n, s in zip(spec.mask.shape, spec.mask.strides) if s != 0)
    return distinct * MASK_ELEM[spec.mask_kind]


def _visible_keys(spec: AttentionSpec, block_q: int) -> int:
    """Keys visited summed over the query tiles of one head."""
    br = min(block_q, spec.q_len)
    tiles = math.ceil(spec.q_len / br)
    if not spec.is_causal:
        return tiles * spec.kv_len
    return sum(max(0, min(spec.kv_len, min((t + 1) * br, spec.q_len) + spec.causal_offset)) for t in range(tiles))


def predict(spec: AttentionSpec, schedule: Schedule, board: Board) -> Cost:
    l1, llc = board.l1d(), board.last_level_cache()
    br = min(schedule.block_q, spec.q_len)
    bc = min(schedule.block_k, spec.kv_len)
    heads = spec.batch * spec.q_heads
    kv_row = (spec.head_dim + spec.value_dim) * ELEM
    q_bytes = heads * spec.q_len * spec.head_dim * ELEM
    y_bytes = heads * spec.q_len * spec.value_dim * ELEM
    kv_bytes = spec.batch * spec.kv_heads * spec.kv_len * kv_row
    mask_bytes = _mask_bytes(spec)
    scratch = scratch_bytes(spec, schedule)
    visited = _visible_keys(spec, br)  # per head

    # DRAM: K/V of a head stay in the LLC across query tiles only if everything touched
    # between two uses of a K line fits: K and V, one Q tile, one output tile, scratch.
    between_uses = spec.kv_len * kv_row + br * (spec.head_dim + spec.value_dim) * ELEM + scratch
    kv_fits = between_uses <= llc.size
    kv_dram = kv_bytes if kv_fits else heads * visited * kv_row
    if not mask_bytes or mask_bytes + between_uses <= llc.size:
        mask_dram = mask_bytes  # read once
    else:  # re-read for every head
        mask_dram = heads * spec.q_len * spec.kv_len * MASK_ELEM[spec.mask_kind]
    dram = q_bytes + y_bytes + kv_dram + mask_dram

    # L1: per key tile the K and V tiles are filled once and serve all Br rows while the
    # phase that uses them (scores: Q tile, K tile, score tile; values: V tile, accumulator,
    # score tile) fits in L1; the Q tile and accumulator come back per key tile unless
    # both phases fit together.
    e = ELEM
    score_set = br * spec.head_dim * e + bc * spec.head_dim * e + br * bc * e
    value_set = bc * spec.value_dim * e + br * spec.value_dim * e + br * bc * e
    k_tile_fills = 1 if score_set <= l1.size else br
    v_tile_fills = 1 if value_set <= l1.size else br
    key_tiles = math.ceil(visited / bc)  # per head, over all query tiles
    per_key_tile = bc * (spec.head_dim * k_tile_fills + spec.value_dim * v_tile_fills) * e
    if score_set + value_set - br * bc * e > l1.size:
        per_key_tile += br * (spec.head_dim + spec.value_dim) * e
    # The mask is read anew for every (batch, head) even when it is broadcast over heads.
    mask_l1 = heads * spec.q_len * spec.kv_len * MASK_ELEM[spec.mask_kind] if mask_bytes else 0
    l1_fill = q_bytes + y_bytes + heads * key_tiles * per_key_tile + mask_l1

    pairs = heads * (visited * br if not spec.is_causal else _causal_pairs(spec))
    pairs = min(pairs, heads * spec.q_len * spec.kv_len)
    flops = pairs * (2 * spec.head_dim + 2 * spec.value_dim + 4)
    exps = pairs + (heads * br * math.ceil(visited / max(bc, 1)) if schedule.strategy == "online" else 0)
    e = board.energy
    energy_pj = (flops * e["pj_per_flop"] + flops * ELEM * e["pj_per_byte_l1"]
                 + l1_fill * e["pj_per_byte_l2"] + dram * e["pj_per_byte_dram"])
    return Cost(schedule.strategy, br, bc, int(flops), int(exps), scratch, int(dram), int(l1_fill),
                q_bytes + y_bytes + kv_bytes + mask_bytes, kv_fits, energy_pj / 1e6)


def _causal_pairs(spec: AttentionSpec) -> int:
    """(i, k) pairs with k <= i: the scores a causal kernel computes."""
    return sum(max(0, min(i + 1 + spec.causal_offset, spec.kv_len)) for i in range(spec.q_len))


def _candidates(extent: int) -> list[int]:
    sizes = {extent}
    size = 1
    while size < extent:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def choose(spec: AttentionSpec, board: Board, scratch_budget: int | None = None) -> Cost:
    """The schedule with the least predicted DRAM traffic whose scratch fits the budget
    (default: the L1D, or an eighth of the next level when that is larger: the register-blocked
    micro-kernels move few bytes per flop and run at full speed with their tiles in L2); ties go
    to fewer L1 fills, then fewer key tiles, then less scratch. Tiles of at least MIN_BLOCK_Q
    rows and MIN_BLOCK_K keys (or the whole axis) come first; smaller ones only when none fits."""
    outer = board.caches[1:]  # the levels after L1D, if any
    budget = scratch_budget or max(board.l1d().size, outer[0].size // 8 if outer else 0)
    for min_q, min_k in ((MIN_BLOCK_Q, MIN_BLOCK_K), (1, MIN_BLOCK_K), (1, 1)):
        best = None
        for strategy in STRATEGIES:
            for br in _candidates(spec.q_len):
                for bc in _candidates(spec.kv_len):
                    if bc < min(min_k, spec.kv_len) or br < min(min_q, spec.q_len):
                        continue
                    schedule = Schedule(strategy, br, bc)
                    if scratch_bytes(spec, schedule) > budget:
                        continue
                    cost = predict(spec, schedule, board)
                    # Then fewer key tiles: each costs every row a call of the max, exp and (online)
                    # rescale micro-kernels, which wider tiles amortise.
                    key = (cost.dram_bytes, cost.l1_fill_bytes, math.ceil(spec.kv_len / bc), cost.scratch_bytes,
                           strategy != "online")
                    if best is None or key < best[0]:
                        best = (key, cost)
        if best is not None:
            return best[1]
    return predict(spec, Schedule("online", 1, min(16, spec.kv_len)), board)  # nothing fits: the smallest tile
