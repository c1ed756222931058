"""Cost model of one attention block on one board, and the choice of its schedule.

For shapes, a Schedule (strategy, Br, Bc, key splits) and the board's cache geometry it
predicts the bytes filled into the last-level cache from DRAM, the bytes filled into L1D,
flops, exps, scratch bytes and energy. It does not assume K and V fit in cache: each row
block walks all (causal: the visible prefix of) K and V of its K/V head, and those re-reads
hit the last-level cache only while K and V of one head, the block's Q and output rows and
the scratch all fit in it together (LRU: everything touched between two uses of a K line
must fit). Write-allocate fills of the output count as traffic, as cachegrind counts them.

Row blocks: in the head form each query head walks its K/V head for its own rows, so a K/V
head is walked `group` times per block of rows; in the decode form (onf.decode_form) the
group's rows are stacked, and a block holding all of them walks each K/V head once: a
grouped-query decode step reads K and V bytes = kv_heads x L x (D + Dv) x 4, not q_heads x ...
With run-time key lengths (kv_lengths) the prediction is for `keys` valid keys (default: the
whole cache, the worst case).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import math

from moa_edge.ir import dtypes
from moa_edge.target import Board

from .mask import MASK_NONE
from .onf import STRATEGIES, Schedule, block_rows, decode_form, scratch_bytes, work_items
from .spec import AttentionSpec

ELEM = dtypes.COMPUTE_DTYPE.itemsize  # Q, K, V, the output and scratch (the spec names no type yet)
MASK_ELEM = {"float": dtypes.dtype("float32").itemsize, "bool": dtypes.dtype("bool").itemsize}  # by mask_kind
# Key tiles narrower than this leave the micro-kernels (moa/attention.h) too little work per
# call: the score tile's width is its vector dimension (32 floats, two AVX-512 registers; 32
# per RVV VLEN-256 LMUL-4 group), and every tile costs each row a max, an exp and a rescale.
MIN_BLOCK_K = 128
# Query tiles narrower than this leave the register tiles idle: the score tile packs each 16-key
# panel of K once per call and reuses it over the tile's rows (12 per register tile on AVX-512,
# 6 on AVX2), and the P V tile keeps 12 (AVX2: 6) rows in registers, so each tile should hold
# several of both. The x86 kernels pack their key panels themselves, so the ONF emits the same
# loop nest for AVX-512 and AVX2 builds; only moa/isa.h's choice of kernel differs.
MIN_BLOCK_Q = 64
# Rows of the score and P V micro-kernels' register tiles (RVV 4, NEON 5, AVX2 6 and 6, AVX-512
# 12 and 12; the smallest, a bound for every ISA): a K or V tile larger than L1 is streamed through
# it once per this many rows of the block, not once per row.
REGISTER_ROWS = 4
# A key split shorter than this costs its partial's start and its share of the combination
# more than the parallel work it adds (two micro-kernel tiles of MIN_BLOCK_K keys).
MIN_SPLIT_KEYS = 2 * MIN_BLOCK_K
BUSY = 0.9  # split the keys until the lifted items keep the workers this busy (choose_splits)


@dataclass(frozen=True)
class Cost:
    strategy: str
    block_q: int
    block_k: int
    splits: int
    flops: int
    exps: int
    scratch_bytes: int
    dram_bytes: int         # last-level cache fills (DRAM -> LLC)
    l1_fill_bytes: int      # L1D fills (from L2/LLC or DRAM)
    compulsory_bytes: int   # Q, K, V, mask read once and the output written once
    kv_fits_llc: bool
    energy_uj: float
    kv_dram_bytes: int = 0  # the K and V part of dram_bytes
    kv_walks: int = 0       # row blocks that walk a K/V head (head form: `group` per block of rows)

    def describe(self) -> dict:
        return asdict(self)

    @property
    def schedule(self) -> Schedule:
        """The schedule this predicts (tiles as the kernel uses them: Br > Sq still asks for the decode form)."""
        return Schedule(self.strategy, self.block_q, self.block_k, self.splits)


def _mask_bytes(spec: AttentionSpec) -> int:
    if spec.mask_kind == MASK_NONE:
        return 0
    distinct = math.prod(n for n, s in zip(spec.mask.shape, spec.mask.strides) if s != 0)
    return distinct * MASK_ELEM[spec.mask_kind]


def _valid_keys(spec: AttentionSpec, keys: int | None) -> int:
    """Keys a kernel may see: the run-time count L (kv_lengths; default the whole cache), else Skv."""
    return min(spec.kv_len, keys if keys is not None else spec.kv_len) if spec.kv_lengths else spec.kv_len


def _visible(spec: AttentionSpec, keys: int, query_end: int) -> int:
    """Keys walked by a row block whose last query index is query_end - 1."""
    if not spec.is_causal:
        return keys
    return max(0, min(keys, query_end + spec.causal_offset + (keys if spec.kv_lengths else 0)))


def row_blocks(spec: AttentionSpec, schedule: Schedule, keys: int | None = None) -> list[tuple[int, int]]:
    """(rows, keys walked) of every row block that walks one K/V head (per batch): `group`
    query heads' blocks in the head form, the stacked group's blocks in the decode form."""
    br, sq, group = block_rows(spec, schedule), spec.q_len, spec.q_heads // spec.kv_heads
    valid = _valid_keys(spec, keys)
    if not decode_form(spec, schedule):
        return [(min(br, sq - start), _visible(spec, valid, min(start + br, sq))) for start in range(0, sq, br)] * group
    blocks = []
    for start in range(0, group * sq, br):  # stacked rows r * Sq + i; a block may wrap into the next head
        rows = min(br, group * sq - start)
        last = sq - 1 if start % sq + rows > sq else (start + rows - 1) % sq
        blocks.append((rows, _visible(spec, valid, last + 1)))
    return blocks


def predict(spec: AttentionSpec, schedule: Schedule, board: Board, keys: int | None = None) -> Cost:
    """The cost of one block under `schedule` on `board`, for `keys` valid keys when the block
    has run-time key lengths (default: a full cache)."""
    l1, llc = board.l1d(), board.last_level_cache()
    br = block_rows(spec, schedule)
    bc = min(schedule.block_k, spec.kv_len)
    decode = decode_form(spec, schedule)
    heads = spec.batch * spec.q_heads
    kv_walkers = spec.batch * spec.kv_heads
    kv_row = spec.kv_row_bytes  # a key and a value row as stored (int8 cache: with their scales)
    q_bytes = heads * spec.q_len * spec.head_dim * dtypes.dtype(spec.q_dtype).itemsize  # int8 or half Q: as stored
    y_bytes = heads * spec.q_len * spec.value_dim * ELEM
    blocks = row_blocks(spec, schedule, keys)
    walked = sum(v for _, v in blocks)  # key rows walked per K/V head
    read = max((v for _, v in blocks), default=0)  # distinct key rows of a K/V head read at all
    kv_bytes = kv_walkers * read * kv_row
    mask_bytes = _mask_bytes(spec)
    scratch = scratch_bytes(spec, schedule)

    # DRAM: K/V of a head stay in the LLC across row blocks only if everything touched
    # between two uses of a K line fits: K and V, one Q tile, one output tile, scratch.
    between_uses = read * kv_row + br * (spec.head_dim + spec.value_dim) * ELEM + scratch
    kv_fits = between_uses <= llc.size
    kv_dram = kv_bytes if kv_fits else kv_walkers * walked * kv_row
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
    # Per key tile a block streams a K or V tile once per REGISTER_ROWS of its rows; the blocks'
    # rows weighted by their key tiles, so a short last block counts as short.
    tiles = [max(1, math.ceil(v / bc)) for _, v in blocks]
    weight = sum(tiles)
    streams = (sum(t * math.ceil(rows / REGISTER_ROWS) for t, (rows, _) in zip(tiles, blocks)) / weight
               if weight else math.ceil(br / REGISTER_ROWS))
    mean_rows = sum(t * rows for t, (rows, _) in zip(tiles, blocks)) / weight if weight else br
    k_tile_fills = 1 if score_set <= l1.size else streams
    v_tile_fills = 1 if value_set <= l1.size else streams
    group = spec.q_heads // spec.kv_heads
    # key tiles per K/V head, over all row blocks (the splits start on tile boundaries)
    key_tiles = sum(math.ceil(v / bc) for _, v in blocks) if decode else group * math.ceil(walked / group / bc)
    per_key_tile = bc * (spec.head_dim * k_tile_fills + spec.value_dim * v_tile_fills) * e
    if score_set + value_set - br * bc * e > l1.size:
        per_key_tile += mean_rows * (spec.head_dim + spec.value_dim) * e
    # The mask is read anew for every (batch, head) even when it is broadcast over heads.
    mask_l1 = heads * spec.q_len * spec.kv_len * MASK_ELEM[spec.mask_kind] if mask_bytes else 0
    l1_fill = q_bytes + y_bytes + kv_walkers * key_tiles * per_key_tile + mask_l1

    if spec.is_causal:
        pairs = heads * sum(_visible(spec, _valid_keys(spec, keys), i + 1) for i in range(spec.q_len))
    else:
        pairs = heads * spec.q_len * _valid_keys(spec, keys)
    rows = heads * spec.q_len
    flops = pairs * (2 * spec.head_dim + 2 * spec.value_dim + 4)
    flops += rows * (schedule.splits - 1) * (2 * spec.value_dim + 4)  # combining the splits' partials
    if schedule.strategy != "online":
        exps = pairs
    elif decode:  # a rescale per row and key tile, and a weight per row and split
        exps = pairs + kv_walkers * sum(r * math.ceil(v / bc) for r, v in blocks) + rows * (schedule.splits - 1)
    else:
        exps = pairs + heads * br * math.ceil(walked / group / max(bc, 1))
    e = board.energy
    energy_pj = (flops * e["pj_per_flop"] + flops * ELEM * e["pj_per_byte_l1"]
                 + l1_fill * e["pj_per_byte_l2"] + dram * e["pj_per_byte_dram"])
    return Cost(schedule.strategy, br, bc, schedule.splits, int(flops), int(exps), scratch, int(dram), int(l1_fill),
                q_bytes + y_bytes + kv_bytes + mask_bytes, kv_fits, energy_pj / 1e6, int(kv_dram),
                kv_walkers * len(blocks))


def _candidates(extent: int) -> list[int]:
    sizes = {extent}
    size = 1
    while size < extent:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def _row_candidates(spec: AttentionSpec, strategy: str) -> list[int]:
    """Br values: the head form's (up to Sq; powers of two, and 3 x 2^k from 48, whole register
    tiles of 12, 6 and 4 rows and of 16-row panels), and for the online form under grouped-query
    attention the decode form's stacked blocks (above Sq, up to group x Sq)."""
    sizes = sorted(set(_candidates(spec.q_len)) | {48 << k for k in range(20) if 48 << k < spec.q_len})
    group = spec.q_heads // spec.kv_heads
    if strategy == "online" and group > 1:
        sizes += [n for n in _candidates(group * spec.q_len) if n > spec.q_len]
    return sizes


def choose_splits(spec: AttentionSpec, schedule: Schedule, workers: int, budget: int | None = None,
                  keys: int | None = None) -> int:
    """Split-K when the independent (batch, K/V head, row block) items of the decode form do not
    share evenly among `workers` (a decode step has a few: SmolLM2's 3 K/V heads on 2 or 4 cores):
    the fewest splits S whose items * S keep every worker at least BUSY of the time, else the
    most even S; each split keeps at least MIN_SPLIT_KEYS keys, and the partials fit the scratch
    budget. On one worker splitting only adds scratch and a combination: 1."""
    if workers <= 1 or schedule.strategy != "online":
        return 1
    def busy(splits: int) -> float:  # the share of the workers' time the items fill
        n = work_items(spec, replace(schedule, splits=splits)) * splits
        return n / (math.ceil(n / workers) * workers)

    most = max(1, _valid_keys(spec, keys) // MIN_SPLIT_KEYS)
    while most > 1 and budget is not None and scratch_bytes(spec, replace(schedule, splits=most)) > budget:
        most -= 1
    candidates = range(1, most + 1)
    return next((s for s in candidates if busy(s) >= BUSY), max(candidates, key=lambda s: (busy(s), -s)))


def choose(spec: AttentionSpec, board: Board, scratch_budget: int | None = None, workers: int = 1) -> Cost:
    """The schedule with the least predicted DRAM traffic whose scratch fits the budget
    (default: the L1D, or an eighth of the next level when that is larger: the register-blocked
    micro-kernels move few bytes per flop and run at full speed with their tiles in L2); ties go
    to fewer L1 fills, then fewer walks over K/V heads (each streams them through L2 again),
    then fewer key tiles, then less scratch. Tiles of at least MIN_BLOCK_Q
    rows and MIN_BLOCK_K keys (or the whole axis) come first; smaller ones only when none fits.
    Under grouped-query attention the decode form's stacked row blocks are candidates too (a
    block of all the group's rows reads each K/V tile once for them). Then the key splits for
    `workers` (choose_splits; 1 on one core)."""
    outer = board.caches[1:]  # the levels after L1D, if any
    budget = scratch_budget or max(board.l1d().size, outer[0].size // 8 if outer else 0)
    chosen = None
    for min_q, min_k in ((MIN_BLOCK_Q, MIN_BLOCK_K), (1, MIN_BLOCK_K), (1, 1)):
        best = None
        for strategy in STRATEGIES:
            for br in _row_candidates(spec, strategy):
                for bc in _candidates(spec.kv_len):
                    if bc < min(min_k, spec.kv_len) or br < min(min_q, spec.q_len):
                        continue
                    schedule = Schedule(strategy, br, bc)
                    if scratch_bytes(spec, schedule) > budget:
                        continue
                    cost = predict(spec, schedule, board)
                    # Then fewer key tiles: each costs every row a call of the max, exp and (online)
                    # rescale micro-kernels, which wider tiles amortise.
                    key = (cost.dram_bytes, cost.l1_fill_bytes, cost.kv_walks, math.ceil(spec.kv_len / bc),
                           cost.scratch_bytes, strategy != "online")
                    if best is None or key < best[0]:
                        best = (key, cost)
        if best is not None:
            chosen = best[1]
            break
    if chosen is None:
        return predict(spec, Schedule("online", 1, min(16, spec.kv_len)), board)  # nothing fits: the smallest tile
    splits = choose_splits(spec, chosen.schedule, workers, budget)
    return chosen if splits == 1 else predict(spec, replace(chosen.schedule, splits=splits), board)
