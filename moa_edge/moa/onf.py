"""ONF lowering: the attention DNF as a C loop nest over lifted axes.

Dimension lifting splits the query axis i into (ib, ii) with i = ib*Br + ii and the key
axis k into (kb, kk) with k = kb*Bc + kk (the paper's N -> Pi # (N / Pi)). Every operand
is read through its access map, so gamma is folded into the index arithmetic as
compile-time constants: the kernel reads Q, K, V and the mask where they are stored.

Two softmax schedules, both exact rewrites of the DNF
    s[i,k]   = scale * red_+_j Q[i,j] K[k,j]  (softcap)  + bias[i,k]
    Out[i,q] = red_+_k exp(s[i,k] - max_k s[i,k]) V[k,q] / red_+_k exp(s[i,k] - max_k s[i,k])
  * "two_pass": the paper's row form: scores of Br rows into Br x Skv scratch, then the
    max, then exp and sum, then the output (O(Br * Skv) scratch);
  * "online": per Br x Bc tile keep the running max m, normaliser l and accumulator acc,
    rescaling by exp(m_old - m_new) (O(Br * (Bc + Dv)) scratch, independent of Skv).

Production kernels (emit_kernel) have one form: the inner loops are calls to the micro-kernels
of a KernelSet (for fp32, the SIMD kernels of c_runtime's moa/attention.h): the Br x Bc score
tile (Q K^T, or Q times K^T stored as such), the row max, exp in place with its sum, the
rescale, and the P V update as a small GEMM tile. What the DNF adds to Q.K (softcap, mask,
causal, window, key lengths) is printed as one pass over the tile with the reduction replaced
by the tile's value. The kernels read rows (contiguous elements, rows at a constant stride:
every layout attention produces); an operand stored otherwise has the rows a tile needs
copied into scratch through its access map first.

The decode form (decode_form: few query rows against a K/V cache, grouped-query attention)
loops over K/V heads g instead of query heads: the rows of g's `group` query heads are stacked
as one row block (row = r * Sq + i is query i of head g * group + r), so every K and V tile is
read once for all of them and the score and P V micro-kernels see group x Sq rows per tile; a
decode step reads K and V bytes = kv_heads x L x (D + Dv) x 4 (L the run-time key count), not
q_heads x ... (tests/test_cost.py measures it). Split-K (flash-decoding, Schedule.splits = S)
cuts the visible keys [0, kv_end) at run time into S chunks of whole key tiles; each chunk is
an item of its own (lifted onto cores with the row blocks) that runs the online form into its
partial (m_s, l_s, acc_s) in scratch the threads share, and once every chunk has run,
name_combine combines each block's partials exactly: m = max_s m_s, l = sum_s l_s e^(m_s - m),
y = sum_s acc_s e^(m_s - m) / l, as the DNF's split_keys rewrite (dnf/split.py) states it.

The oracle (emit_oracle_kernel) prints the whole DNF term as a float64 loop nest: what the
exactness harness compares with PyTorch float64, never what a model runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
import re

from moa_edge.ir import dtypes
from moa_edge.ir.c_syntax import c_float_short, c_real

from . import dnf
from .layout import Layout
from .mask import MASK_NONE
from .spec import AttentionSpec

STRATEGIES = ("online", "two_pass")


@dataclass(frozen=True)
class Schedule:
    strategy: str
    block_q: int  # Br: query rows per tile (of the stacked group's rows in the decode form)
    block_k: int  # Bc: keys per tile
    splits: int = 1  # S: chunks of the key axis, each an online partial (m, l, acc) combined exactly

    def __post_init__(self):
        assert self.strategy in STRATEGIES and self.block_q >= 1 and self.block_k >= 1
        assert self.splits >= 1 and (self.splits == 1 or self.strategy == "online")


def decode_form(spec: AttentionSpec, schedule: Schedule) -> bool:
    """Whether the block runs in the decode form: per K/V head g, the rows of its `group` query
    heads stacked into one row block (row rho = r * Sq + i is query i of head g * group + r), so
    each K and V tile is read once for all of them; the key axis may be split (split-K). The
    online schedule asks for it with a key split, or with Br > Sq under grouped-query attention
    (rows of one head cannot fill the block)."""
    grouped = spec.q_heads > spec.kv_heads and schedule.block_q > spec.q_len
    return schedule.strategy == "online" and (schedule.splits > 1 or grouped)


def block_rows(spec: AttentionSpec, schedule: Schedule) -> int:
    """Br as the kernel uses it: at most the rows there are (the stacked group's in the decode form)."""
    rows = spec.q_len * (spec.q_heads // spec.kv_heads if decode_form(spec, schedule) else 1)
    return min(schedule.block_q, rows)


# The one scratch region every thread shares: split-K's partials, written by the item of each
# split and read by the block's combination after all have run. Every other region is a thread's own.
SHARED_REGION = "partials"


@dataclass(frozen=True)
class Scratch:
    """Scratch regions of one kernel call, in elements, in the order they sit in memory."""
    regions: tuple[tuple[str, int], ...]

    @property
    def elements(self) -> int:
        return sum(n for _, n in self.regions)

    @property
    def shared(self) -> int:
        return sum(n for region, n in self.regions if region == SHARED_REGION)

    @property
    def per_thread(self) -> int:
        return self.elements - self.shared


@dataclass(frozen=True)
class KernelSet:
    """What the micro-kernel form needs of one datatype: the C types it prints and the names
    of the micro-kernels its inner loops call (signatures as moa/attention.h's fp32 ones).
    A new datatype, or another family of kernels, is a new record, not a new loop nest."""
    name: str        # suffix of the kernels' family, e.g. "f32"
    dtype: str       # the tensors' element type, e.g. "float32"
    ctype: str       # C type of Q, K, V, Y and the scratch
    acc_ctype: str   # C type of the per-row scalars (1 / l)
    math_suffix: str  # of <math.h> functions and literals in ctype: expf, 1.0f
    scores: str      # s = scale * Q K^T, a Br x Bc tile
    pv: str          # acc += P V, a small GEMM tile
    softmax: str     # the online step of a tile: running max, exp in place, sum, rescale factors
    scale: str       # y = alpha * x
    max: str         # row maximum (NaN wins)
    exp: str         # x = exp(x - m) in place, returns the sum
    scalar_exp: str  # exp of one value: the weights e^(m_s - m) combining split-K partials
    kv_ctype: str = ""  # C type of K and V when not ctype: rows the score and P V kernels read as such
    kv_scaled: bool = False  # K and V rows carry a float scale each: those kernels take the row's
                             # scales after its stride (moa_attn_*_f32_s8)
    combine: str = ""  # acc += w acc_c over ctype rows (split-K partials): pv when K and V are ctype


F32_KERNELS = KernelSet("f32", "float32", "float", "float", "f", scores="moa_attn_scores_f32",
                        pv="moa_attn_pv_f32", softmax="moa_attn_softmax_f32", scale="moa_attn_scale_f32",
                        max="moa_attn_max_f32", exp="moa_attn_exp_f32", scalar_exp="moa_expf")
# An int8 key/value cache: the same loop nest and float softmax; only the two kernels that read K
# and V change, to ones that widen each int8 row in registers and apply its scale.
F32_S8_KV_KERNELS = dataclasses.replace(F32_KERNELS, name="f32_s8", kv_ctype="int8_t", kv_scaled=True,
                                        scores="moa_attn_scores_f32_s8", pv="moa_attn_pv_f32_s8",
                                        combine="moa_attn_pv_f32")
# A float16 key/value cache: the same again, the two kernels widening each half in registers (no scale).
F32_F16_KV_KERNELS = dataclasses.replace(F32_KERNELS, name="f32_f16", kv_ctype="uint16_t",
                                         scores="moa_attn_scores_f32_f16", pv="moa_attn_pv_f32_f16",
                                         combine="moa_attn_pv_f32")
KERNEL_SETS = {"float32": F32_KERNELS, "int8": F32_S8_KV_KERNELS,
               "float16": F32_F16_KV_KERNELS}  # by the spec's kv_dtype


# A half Q (passes/half_attention.py): its rows widened exactly into q_pack as each row block is packed.
WIDEN = {"float16": "moa_f16_to_f32", "bfloat16": "moa_bf16_to_f32"}  # moa/half.h


def kernel_set(spec: AttentionSpec) -> KernelSet:
    """The micro-kernels a block's production kernel calls: chosen by the type of its K and V."""
    return KERNEL_SETS[spec.kv_dtype]


def _softmax_regions(spec: AttentionSpec, schedule: Schedule) -> tuple[tuple[str, int], ...]:
    """The online form's score tile, row state and accumulator; split-K keeps one partial
    (m, l, acc) per split side by side, S x Br x (Dv + 2), never an Sq x Skv matrix."""
    br = block_rows(spec, schedule)
    bc = min(schedule.block_k, spec.kv_len)
    if schedule.strategy == "online":
        parts = schedule.splits
        return (("s", br * bc), ("m", parts * br), ("l", parts * br), ("alpha", br),
                ("acc", parts * br * spec.value_dim))
    return (("s", br * spec.kv_len), ("m", br), ("l", br))


def _packing_regions(spec: AttentionSpec, schedule: Schedule) -> tuple[tuple[str, int], ...]:
    """Rows of the operands the micro-kernels cannot read where they are stored, copied per
    tile: Q rows of the block, K and V rows of the key tile, and (two_pass, which sums into
    the output rows) Y rows of the block. The online form scales its accumulator in place
    and scatters it, so it never packs Y."""
    br = block_rows(spec, schedule)
    bc = min(schedule.block_k, spec.kv_len)
    rows = rows_of(spec, decode_form(spec, schedule))
    q_rows = rows.q if spec.q_dtype == "float32" else None  # int8 or half Q: its rows widened into q_pack
    wanted = [("q_pack", q_rows, br * spec.head_dim), ("k_pack", rows.k, bc * spec.head_dim),
              ("v_pack", rows.v, bc * spec.value_dim)]
    if schedule.strategy == "two_pass":
        wanted.append(("y_pack", rows.y, br * spec.value_dim))
    return tuple((region, n) for region, stride, n in wanted if stride is None)


def partial_elements(spec: AttentionSpec, schedule: Schedule) -> int:
    """One row block's split-K partials: S x (m, l) of Br rows, then S x acc of Br x Dv."""
    return schedule.splits * block_rows(spec, schedule) * (spec.value_dim + 2)


def scratch_layout(spec: AttentionSpec, schedule: Schedule) -> Scratch:
    """The production kernel's scratch: the softmax's regions, then any packed rows. Split-K's
    partials are a region of their own, one per (row block, split) item, shared by the threads
    (an item's split may run on any of them): the score tile and row factors stay per thread."""
    softmax = _softmax_regions(spec, schedule)
    if schedule.splits > 1:
        blocks = work_items(spec, schedule)
        softmax = ((SHARED_REGION, blocks * partial_elements(spec, schedule)),
                   *((region, n) for region, n in softmax if region in ("s", "alpha")))
    return Scratch(softmax + _packing_regions(spec, schedule))


def scratch_bytes(spec: AttentionSpec, schedule: Schedule, threads: int = 1,
                  elem_bytes: int = dtypes.COMPUTE_DTYPE.itemsize) -> int:
    """Bytes of the block's scratch for `threads` threads (the shared partials once, the rest
    per thread); its elements are of the compute type (the spec names no type yet)."""
    layout = scratch_layout(spec, schedule)
    return (layout.shared + threads * layout.per_thread) * elem_bytes


# --- index arithmetic ----------------------------------------------------------------

def _gamma(layout: Layout, *index: str) -> str:
    """C expression for layout's offset at a symbolic index; zero strides vanish."""
    divisors = layout.axis_divisors()
    terms = [str(layout.offset)] if layout.offset else []
    for var, stride, div, extent in zip(index, layout.strides, divisors, layout.shape):
        if stride == 0 or extent == 1 or var == "0":
            continue
        if any(c in var for c in " +-*"):
            var = f"({var})"
        v = f"({var} / {div})" if div != 1 else var
        terms.append(v if stride == 1 else f"{v} * {stride}")
    return " + ".join(terms) or "0"


def _kv_head(spec: AttentionSpec) -> str:  # the value load's head index, as the DNF's psi-repeat-kv gives it
    group = spec.q_heads // spec.kv_heads
    return "h" if group == 1 else f"(h / {group})"


# --- C emission ------------------------------------------------------------------------

def output_over_q(spec: AttentionSpec) -> bool:
    """Y may be written over Q (FlashAttention's O over Q): element (b, h, i, d) of both at
    one address, and every schedule here reads a row block's Q rows (for all its key tiles)
    before it writes those rows of Y, rows no other block reads. Not with a second scores
    output: its kernel reads Q again after this one."""
    return spec.q == spec.y and spec.qk_mode < 0 and spec.q_dtype == "float32"


def _stacked_index(spec: AttentionSpec, row: str) -> tuple[str, str]:
    """(query head, query index) of row `row` of K/V head g's stacked block: row = r * Sq + i is
    query i of head g * group + r."""
    group, sq = spec.q_heads // spec.kv_heads, spec.q_len
    if group == 1:
        return "g", row
    if sq == 1:
        return f"g * {group} + {row}", "0"
    return f"g * {group} + ({row}) / {sq}", f"({row}) % {sq}"


def _sum_terms(*terms) -> str:
    """C sum of the terms in order (strings, and integers folded into the first one's place;
    zero terms dropped)."""
    constant, out = sum(t for t in terms if isinstance(t, int)), []
    for t in terms:
        if isinstance(t, int) and not any(isinstance(o, int) for o in out):
            out.append(constant)
        elif isinstance(t, str):
            out.append(t)
    return " + ".join(str(t) for t in out if t != 0) or "0"


def _open_kernel(spec: AttentionSpec, schedule: Schedule, name: str, ctype: str, scratch: Scratch, w,
                 split_items: bool = False):
    """The function head, its scratch regions, and the loops over (b, h, ib) (decode form:
    (b, g, ib) over the stacked rows) with each block's row count and last visible key;
    _close_kernel ends them. With split_items, an item is one split c of a block (b, g, ib, c),
    and the function takes the shared partials beside its thread's scratch."""
    decode = decode_form(spec, schedule)
    br = block_rows(spec, schedule)
    bc = min(schedule.block_k, spec.kv_len)
    group = spec.q_heads // spec.kv_heads
    if decode:
        lifted = (f"decode form: K/V head g's {group} query heads stacked, row = r*{spec.q_len} + i of head "
                  f"g*{group} + r, row = ib*{br} + ii, k = kb*{bc} + kk"
                  + (f", the keys split in {schedule.splits} chunks" if schedule.splits > 1 else ""))
    else:
        lifted = f"lifted: i = ib*{br} + ii, k = kb*{bc} + kk"
    w(f"/* {name}: ONF of one attention block ({schedule.strategy} softmax).\n"
      f" * Q[{spec.batch},{spec.q_heads},{spec.q_len},{spec.head_dim}] K,V[{spec.batch},{spec.kv_heads},"
      f"{spec.kv_len},{spec.head_dim}|{spec.value_dim}] -> Y[{spec.batch},{spec.q_heads},{spec.q_len},{spec.value_dim}]\n"
      f" * {lifted}; scratch {scratch.elements} x {ctype}: "
      + ", ".join(f"{r}[{n}]" for r, n in scratch.regions) + " */")
    head, heads, row_count = ("g", spec.kv_heads, group * spec.q_len) if decode else ("h", spec.q_heads, spec.q_len)
    blocks = -(-row_count // br)
    if split_items:
        w(f"/* Items first .. end - 1 of the {work_items(spec, schedule) * schedule.splits} = {spec.batch} x {heads} x "
          f"{blocks} x {schedule.splits} (b, {head}, ib, c): the dimensions lifted onto cores (name_on), each item one "
          "split's partial; name_combine then combines each block's. */")
        w(f"static moa_status {name}_items({kernel_parameters(spec, ctype)}, {ctype} *restrict partials, "
          "size_t first, size_t end)")
    else:
        w(f"/* Items first .. end - 1 of the {work_items(spec, schedule)} = {spec.batch} x {heads} x {blocks} "
          f"(b, {head}, ib): the dimensions lifted onto cores (name_on). */")
        w(f"static moa_status {name}_items({kernel_parameters(spec, ctype)}, size_t first, size_t end)")
    w("{")
    offset = 0
    for region, n in scratch.regions:
        if region != SHARED_REGION:
            w(f"    {ctype} *const {region} = scratch + {offset};")
            offset += n
    w("    size_t item;")
    if spec.mask_kind == MASK_NONE:
        w("    (void)M;")
    if split_items:
        w("    (void)Y; /* written by name_combine */")
    w("    for (item = first; item < end; item++) {")
    block = "item"
    if split_items:
        block = "block"
        w(f"        const size_t block = item / {schedule.splits}; /* split c of row block `block` */")
        w(f"        const ptrdiff_t c = (ptrdiff_t)(item % {schedule.splits});")
    _block_indices(spec, head, heads, blocks, br, row_count, block, w)
    query_end = "ib + rows"  # one past the block's last query index
    if decode and spec.q_len > 1 and group > 1:  # a block of stacked rows may wrap from one head to the next
        sq = spec.q_len
        w(f"        const ptrdiff_t wraps = ib % {sq} + rows > {sq}; /* rows of two heads: every query index */")
        w(f"        const ptrdiff_t i_first = wraps ? 0 : ib % {sq}, i_last = wraps ? {sq - 1} : (ib + rows - 1) % {sq};")
        w("        (void)i_first, (void)i_last;")
        query_end = "i_last + 1"
    elif decode and spec.q_len == 1:
        query_end = 1
    # Keys past kv_end are hidden for every row of the tile: causal, or past a batch's valid length.
    limit = f"(ptrdiff_t)L[b] < {spec.kv_len} ? (ptrdiff_t)L[b] : {spec.kv_len}" if spec.kv_lengths else str(spec.kv_len)
    w(f"        const ptrdiff_t kv_limit = {limit};")
    if spec.is_causal:
        last = _sum_terms(query_end, spec.causal_offset, *(["(ptrdiff_t)L[b]"] if spec.kv_lengths else []))
        w(f"        const ptrdiff_t kv_end = {last} < 0 ? 0 : ({last} < kv_limit ? {last} : kv_limit);")
    else:
        w("        const ptrdiff_t kv_end = kv_limit < 0 ? 0 : kv_limit;")


def _block_indices(spec: AttentionSpec, head: str, heads: int, blocks: int, br: int, row_count: int, block: str, w):
    """(b, head, ib) of row block `block`, and its row count."""
    w(f"        const ptrdiff_t b = (ptrdiff_t)({block} / {heads * blocks}), {head} = (ptrdiff_t)({block} / {blocks} % {heads});"
      " /* 64-bit on 64-bit targets */")
    w(f"        const ptrdiff_t ib = (ptrdiff_t)({block} % {blocks}) * {br};")
    w(f"        (void)b, (void){head}; /* an axis of one element is read at offset 0 */")
    w(f"        const ptrdiff_t rows = {row_count} - ib < {br} ? {row_count} - ib : {br};")


def kernel_parameters(spec: AttentionSpec, ctype: str = "float") -> str:
    """The kernel's parameter list: Q, K, V (and an int8 cache's row scales KS, VS beside them),
    M, Y, scratch (and the key lengths L)."""
    lengths = f", const {spec.lengths_ctype} *restrict L" if spec.kv_lengths else ""
    shared = "" if output_over_q(spec) else "restrict "  # Y may be Q's storage
    kv = spec.kv_ctype or ctype
    scales = ", const float *restrict KS, const float *restrict VS" if spec.kv_dtype == "int8" else ""
    q = spec.q_ctype or ctype
    return (f"const {q} *{shared}Q, const {kv} *restrict K, const {kv} *restrict V{scales},\n"
            f"    const {spec.mask_ctype} *restrict M, {ctype} *{shared}Y, {ctype} *restrict scratch{lengths}")


def work_items(spec: AttentionSpec, schedule: Schedule) -> int:
    """The (batch, head, row block) items of the kernel's outer loop: the work lifted onto cores."""
    rows = (spec.q_heads // spec.kv_heads) * spec.q_len if decode_form(spec, schedule) else spec.q_len
    heads = spec.kv_heads if decode_form(spec, schedule) else spec.q_heads
    return spec.batch * heads * -(-rows // block_rows(spec, schedule))


def _argument_names(spec: AttentionSpec) -> list[str]:
    """The names of kernel_parameters(spec), in order."""
    return (["Q", "K", "V"] + (["KS", "VS"] if spec.kv_dtype == "int8" else []) + ["M", "Y", "scratch"]
            + (["L"] if spec.kv_lengths else []))


def _close_kernel(spec: AttentionSpec, schedule: Schedule, name: str, ctype: str, w, split_items: bool = False):
    """The item loop's end, then `name`: every item on the caller's thread (split items: every
    split's partial, then every block's combination)."""
    w("    }")
    w("    return MOA_OK;")
    w("}")
    w("")
    w(f"moa_status {name}({kernel_parameters(spec, ctype)})")
    w("{")
    items = work_items(spec, schedule)
    if split_items:
        shared = scratch_layout(spec, schedule).shared
        arguments = ", ".join(f"scratch + {shared}" if n == "scratch" else n for n in _argument_names(spec))
        w(f"    (void){name}_items({arguments}, scratch, 0, {items * schedule.splits});")
        w(f"    {name}_combine(Y, scratch, 0, {items});")
        w("    return MOA_OK;")
    else:
        w(f"    return {name}_items({', '.join(_argument_names(spec))}, 0, {items});")
    w("}")


def emit_lifted(spec: AttentionSpec, schedule: Schedule, name: str) -> str:
    """`name_on(pool, ...)`: the block's items lifted onto the worker pool's threads (moa/pool.h),
    a static share each; thread t uses its own copy of the scratch, the t-th of `scratch`'s
    regions of scratch_layout(spec, schedule).elements floats. An item is computed alike on
    every thread, so Y is bitwise the same for every thread count."""
    ctype = kernel_set(spec).ctype
    names = _argument_names(spec)
    fields = [p.strip().replace("restrict ", "") for p in kernel_parameters(spec, ctype).replace("\n", " ").split(",")]
    layout, items, splits = scratch_layout(spec, schedule), work_items(spec, schedule), schedule.splits
    own = f"job->scratch + {layout.shared} + thread * {layout.per_thread}" if layout.shared else \
        f"job->scratch + thread * {layout.per_thread}"
    call = ", ".join(f"job->{n}" if n != "scratch" else own for n in names)
    partials = ", job->scratch" if splits > 1 else ""
    lines = [f"typedef struct {{ {' '.join(f + ';' for f in fields)} }} {name}_job;", "",
             f"static void {name}_share(void *ctx, size_t first, size_t end, size_t thread)", "{",
             f"    const {name}_job *job = (const {name}_job *)ctx;",
             f"    (void){name}_items({call}{partials}, first, end);", "}", ""]
    if splits > 1:  # a second share: each block's splits combined, once every split has run
        lines += [f"static void {name}_combine_share(void *ctx, size_t first, size_t end, size_t thread)", "{",
                  f"    const {name}_job *job = (const {name}_job *)ctx;",
                  "    (void)thread;",
                  f"    {name}_combine(job->Y, job->scratch, first, end);", "}", ""]
    lines += [f"moa_status {name}_on(moa_pool *pool, {kernel_parameters(spec, ctype)})", "{",
              f"    {name}_job job;",
              *(f"    job.{n} = {n};" for n in names),
              f"    moa_pool_for(pool, {items * splits}, {name}_share, &job);"]
    if splits > 1:
        lines.append(f"    moa_pool_for(pool, {items}, {name}_combine_share, &job);")
    return "\n".join(lines + ["    return MOA_OK;", "}", ""])


def emit_kernel(spec: AttentionSpec, schedule: Schedule, name: str, kernels: KernelSet | None = None) -> str:
    """A C function `moa_status name(Q, K, V, M, Y, scratch)` computing the block, its inner
    loops calls to the micro-kernels of `kernels` (default: the set for the spec's K/V type)."""
    kernels = kernels or kernel_set(spec)
    L: list[str] = []
    w = L.append
    split = schedule.splits > 1  # each split of a block its own item (the decode form)
    form = _MicroKernels(spec, schedule, kernels)
    if split:
        _combine_function(form, name, w)
    _open_kernel(spec, schedule, name, kernels.ctype, scratch_layout(spec, schedule), w, split)
    w("        ptrdiff_t ii, kb, kk" + (", j" if form.copies else "") + ";")
    w("        (void)kk;")
    if form.decode:
        _decode_tiles(form, w)
    else:
        (_online_tiles if schedule.strategy == "online" else _two_pass_tiles)(form, w)
    _close_kernel(spec, schedule, name, kernels.ctype, w, split)
    return "\n".join(L) + "\n"


def emit_oracle_kernel(spec: AttentionSpec, schedule: Schedule, name: str) -> str:
    """The same function in double with the whole DNF term printed as loops (no micro-kernel,
    no packing): the exactness harness's oracle, compared with PyTorch float64 to 1e-12."""
    real, exp, tanh, suffix = "double", "exp", "tanh", ""
    bc = min(schedule.block_k, spec.kv_len)
    L: list[str] = []
    w = L.append
    _open_kernel(spec, schedule, name, real, Scratch(_softmax_regions(spec, schedule)), w)
    w("        ptrdiff_t ii, kb, kk, j, q" + (", c" if schedule.splits > 1 else "") + ";")
    if schedule.strategy == "online":
        w("        (void)alpha; /* the micro-kernel form's per-row rescale factors */")
    score = _score_lines(spec, real, exp, tanh, suffix)
    if decode_form(spec, schedule):
        _decode_body(spec, schedule, real, exp, score, w)
    elif schedule.strategy == "online":
        _online_body(spec, bc, real, exp, suffix, score, w)
    else:
        _two_pass_body(spec, bc, real, exp, suffix, score, w)
    _close_kernel(spec, schedule, name, real, w)
    return "\n".join(L) + "\n"


def _score_lines(spec: AttentionSpec, real, exp, tanh, suffix) -> list[str]:
    """Statements assigning `sc`, the biased score s(b, h, i, k): the DNF's score term
    printed as C, each Load through its operand's access map (gamma folded in)."""
    term = dnf.score_term(dnf.derive(spec.features()))
    printer = _CPrinter(spec, real, {"exp": exp, "tanh": tanh}, suffix)
    return [f"{real} sc;"] + printer.assign("sc", term)


class _CPrinter:
    """Prints DNF scalar terms as C. Reductions become loops into temporaries; a Where
    whose branches hold reductions becomes if/else, so hidden keys cost nothing."""

    def __init__(self, spec, real, functions, suffix):
        self.spec, self.real, self.functions, self.suffix = spec, real, functions, suffix
        self.extents = {"D": spec.head_dim, "Dv": spec.value_dim, "Skv": spec.kv_len, "Sq": spec.q_len}
        self.layouts = {"Q": spec.q, "K": spec.k, "V": spec.v, "M": spec.mask}
        self.temps = 0
        self.tile = "s[ii * ld + kk]"  # what a TileScore prints as

    def assign(self, target: str, term) -> list[str]:
        if isinstance(term, dnf.Where) and self._has_reduce(term):
            lines = [f"if ({self.expr(term.cond, [])}) {{"]
            lines += ["    " + ln for ln in self.assign(target, term.then)]
            lines.append("} else {")
            lines += ["    " + ln for ln in self.assign(target, term.otherwise)]
            return lines + ["}"]
        pre: list[str] = []
        value = self.expr(term, pre)
        return pre + [f"{target} = {value};"]

    def _has_reduce(self, term) -> bool:
        return any(isinstance(t, dnf.Reduce) for t in dnf.subterms(term))

    def expr(self, term, pre: list[str]) -> str:
        if isinstance(term, TileScore):
            return self.tile
        if isinstance(term, dnf.Literal):
            return c_real(term.value, self.suffix)
        if isinstance(term, dnf.Load):
            index = [self._index(ix) for ix in term.index]
            load = f"{term.array}[{_gamma(self.layouts[term.array], *index)}]"
            if term.array == "Q" and self.spec.q_dtype == "int8":  # int8 Q times its scale
                return f"(({self.real}){load} * {c_float_short(self.spec.q_scale)})"
            if term.array == "Q" and self.spec.q_dtype in WIDEN:  # a half Q's value (moa/half.h)
                return f"(({self.real}){WIDEN[self.spec.q_dtype]}({load}))"
            if term.array in ("K", "V") and self.spec.kv_dtype == "int8":  # the cached row times its scale
                scales = {"K": ("KS", self.spec.k_scale), "V": ("VS", self.spec.v_scale)}[term.array]
                return f"(({self.real}){load} * {scales[0]}[{_gamma(scales[1], *index[:3])}])"
            if term.array in ("K", "V") and self.spec.kv_dtype == "float16":  # the half's value (moa/half.h)
                return f"(({self.real})moa_f16_to_f32({load}))"
            return load
        if isinstance(term, dnf.Binary):
            return f"({self.expr(term.left, pre)} {term.op} {self.expr(term.right, pre)})"
        if isinstance(term, dnf.Call):
            return f"{self.functions[term.function]}({self.expr(term.arg, pre)})"
        if isinstance(term, dnf.Where):
            return f"({self.expr(term.cond, pre)} ? {self.expr(term.then, pre)} : {self.expr(term.otherwise, pre)})"
        if isinstance(term, dnf.IndexGreater):
            return f"({self._index(term.left)} > {self._index(term.right)})"
        if isinstance(term, dnf.Reduce) and term.op == "+":
            self.temps += 1
            acc = f"red{self.temps}"
            body_pre: list[str] = []
            body = self.expr(term.body, body_pre)
            pre.append(f"{self.real} {acc} = 0;")
            pre.append(f"for ({term.var} = 0; {term.var} < {self.extents[term.extent]}; {term.var}++) {{")
            pre += ["    " + ln for ln in body_pre]
            pre.append(f"    {acc} += {body};")
            pre.append("}")
            return acc
        raise NotImplementedError(f"no C form for {type(term).__name__} in a score term")

    @staticmethod
    def _index(ix) -> str:
        if isinstance(ix, dnf.FloorDiv):
            return f"({_CPrinter._index(ix.arg)} / {ix.divisor})"
        if isinstance(ix, dnf.Shift):
            return f"({_CPrinter._index(ix.arg)} + {ix.amount})"
        if isinstance(ix, dnf.KeyCount):
            return f"(ptrdiff_t)L[{_CPrinter._index(ix.arg)}]"
        if isinstance(ix, dnf.Sum):
            return f"({_CPrinter._index(ix.left)} + {_CPrinter._index(ix.right)})"
        return ix.name


def emit_scores_kernel(spec: AttentionSpec, name: str, real: str = "float") -> str:
    """The qk_matmul_output stage, row by row: modes 0-2 are the DNF's score term for fewer
    features (no softcap, no bias), mode 3 the row softmax of the full score."""
    features = {0: dict(softcap=0.0, causal=False, mask=MASK_NONE), 1: dict(causal=False, mask=MASK_NONE),
                2: {}, 3: {}}[spec.qk_mode]
    term = dnf.score_term(dnf.derive(dataclasses.replace(spec.features(), **features)))
    exp = "expf" if real == "float" else "exp"
    printer = _CPrinter(spec, real, {"exp": exp, "tanh": "tanhf" if real == "float" else "tanh"},
                        "f" if real == "float" else "")
    skv = spec.kv_len
    L = [f"/* {name}: scores of stage {spec.qk_mode} (0 scaled Q K^T, 1 softcapped, 2 biased, 3 softmax) */",
         f"void {name}(const {real} *restrict Q, const {real} *restrict K, const {spec.mask_ctype} *restrict M,"
         f" {real} *restrict P" + (f", const {spec.lengths_ctype} *restrict L)" if spec.kv_lengths else ")"),
         "{", "    ptrdiff_t b, h, i, k, j;", "    (void)M;",
         f"    for (b = 0; b < {spec.batch}; b++) {{", f"    for (h = 0; h < {spec.q_heads}; h++) {{",
         f"    for (i = 0; i < {spec.q_len}; i++) {{",
         f"        {real} *const row = P + ((b * {spec.q_heads} + h) * {spec.q_len} + i) * {skv};",
         f"        for (k = 0; k < {skv}; k++) {{", f"            {real} sc;"]
    L += ["            " + ln for ln in printer.assign("sc", term)]
    L += ["            row[k] = sc;", "        }"]
    if spec.qk_mode == 3:
        L += [f"        {{ {real} m = -INFINITY, l = 0;",
              f"          for (k = 0; k < {skv}; k++) {{ if (!(row[k] <= m)) {{ m = row[k]; }} }}",
              f"          for (k = 0; k < {skv}; k++) {{ row[k] = m == -INFINITY ? 0 : {exp}(row[k] - m); l += row[k]; }}",
              f"          for (k = 0; k < {skv}; k++) {{ if (l > 0) {{ row[k] /= l; }} }} }}"]
    L += ["    }", "    }", "    }", "    (void)j;", "}"]
    return "\n".join(L) + "\n"


def _score_tile(bc, score, store, w, begin="0", end="kv_end", indent="        ", query=None):
    """Opens the key-tile loop (kb over [begin, end)) and fills the Br x Bc tile of biased
    scores; the caller closes the loop after its own use of the tile. `query` gives a block
    row's (query head, query index) in the decode form (default: head h, row ib + ii)."""
    w(f"{indent}for (kb = {begin}; kb < {end}; kb += {bc}) {{")
    w(f"{indent}    const ptrdiff_t cols = {end} - kb < {bc} ? {end} - kb : {bc};")
    w(f"{indent}    for (ii = 0; ii < rows; ii++) {{")
    head, row = query("ib + ii") if query else ("h", "ib + ii")
    if query and any(re.search(r"\bh\b", line) for line in score):
        w(f"{indent}        const ptrdiff_t h = {head};")
    if any(re.search(r"\bi\b", line) for line in score):  # a single query row folds i away
        w(f"{indent}        const ptrdiff_t i = {row};")
    w(f"{indent}        for (kk = 0; kk < cols; kk++) {{")
    w(f"{indent}            const ptrdiff_t k = kb + kk;")
    for line in list(score) + list(store):
        w(f"{indent}            " + line)
    w(f"{indent}        }}")
    w(f"{indent}    }}")


def _online_body(spec, bc, real, exp, suffix, score, w):
    # Row maxima take a NaN score (`!(s <= m)`), so NaN inputs give NaN, never a silent 0.
    dv = spec.value_dim
    kvh = _kv_head(spec)
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            m[ii] = -INFINITY;")
    w("            l[ii] = 0;")
    w(f"            for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] = 0; }}")
    w("        }")
    _score_tile(bc, score, [f"s[ii * {bc} + kk] = sc;"], w)
    w("            for (ii = 0; ii < rows; ii++) {")
    w(f"                {real} m_new = m[ii], rescale;")
    w(f"                for (kk = 0; kk < cols; kk++) {{ if (!(s[ii * {bc} + kk] <= m_new)) {{ m_new = s[ii * {bc} + kk]; }} }}")
    w("                if (m_new == -INFINITY) { continue; } /* every key so far hidden */")
    w(f"                rescale = {exp}(m[ii] - m_new);")
    w("                l[ii] *= rescale;")
    w(f"                for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] *= rescale; }}")
    w("                for (kk = 0; kk < cols; kk++) {")
    w(f"                    const {real} p = {exp}(s[ii * {bc} + kk] - m_new);")
    row, element = _oracle_v_row(spec, real, kvh, "kb + kk")
    w(f"                    {row}")
    w("                    l[ii] += p;")
    w(f"                    for (q = 0; q < {dv}; q++) {{ acc[ii * {dv} + q] += p * {element}; }}")
    w("                }")
    w("                m[ii] = m_new;")
    w("            }")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w(f"            const {real} inv_l = l[ii] > 0 ? ({real})1 / l[ii] : 0; /* fully hidden row -> 0 */")
    w(f"            {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')};  /* a single query row folds i away */")
    w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = acc[ii * {dv} + q] * inv_l; }}")
    w("        }")


def _two_pass_body(spec, bc, real, exp, suffix, score, w):
    """The paper's row form, lifted: Step I (scores and row max) and Eq. 21 (output) walk
    the key tiles outermost so each K and V tile serves all Br rows while it is in cache."""
    dv, skv = spec.value_dim, spec.kv_len
    kvh = _kv_head(spec)
    w("        for (ii = 0; ii < rows; ii++) { m[ii] = -INFINITY; }")
    _score_tile(bc, score, [f"s[ii * {skv} + k] = sc;", "if (!(sc <= m[ii])) { m[ii] = sc; } /* a NaN score wins, so NaN propagates */"], w)
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) { /* Steps II-III: exponentiate and sum */")
    w(f"            {real} *const row = s + ii * {skv};")
    w("            l[ii] = 0;")
    w("            if (m[ii] == -INFINITY) { continue; } /* every key hidden */")
    w(f"            for (kk = 0; kk < kv_end; kk++) {{ row[kk] = {exp}(row[kk] - m[ii]); l[ii] += row[kk]; }}")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) {")
    w(f"            {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')};")
    w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = 0; }}")
    w("        }")
    w(f"        for (kb = 0; kb < kv_end; kb += {bc}) {{ /* Step IV and Eq. 21 */")
    w(f"            const ptrdiff_t cols = kv_end - kb < {bc} ? kv_end - kb : {bc};")
    w("            for (ii = 0; ii < rows; ii++) {")
    w(f"                const {real} *const row = s + ii * {skv};")
    w(f"                {real} *restrict y_row = Y + {_gamma(spec.y, 'b', 'h', 'ib + ii', '0')};")
    w(f"                {real} inv_l;")
    w("                if (l[ii] == 0) { continue; } /* fully hidden row stays 0 */")
    w(f"                inv_l = ({real})1 / l[ii];")
    w("                for (kk = 0; kk < cols; kk++) {")
    w(f"                    const {real} p = row[kb + kk] * inv_l;")
    row, element = _oracle_v_row(spec, real, kvh, "kb + kk")
    w(f"                    {row}")
    w(f"                    for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] += p * {element}; }}")
    w("                }")
    w("            }")
    w("        }")


def _oracle_v_row(spec: AttentionSpec, real: str, head: str, key: str) -> tuple[str, str]:
    """(the declaration of V's row `key` of K/V head `head`, its element q as a C expression) in
    the oracle: an int8 row's element is its value times the row's scale, a half's its value widened
    (moa/half.h), both exact in double."""
    row = f"V + {_gamma(spec.v, 'b', head, key, '0')}"
    element = f"v_row[{_stride_term(spec.v.strides[3], 'q')}]"
    if spec.kv_dtype == "int8":
        return (f"const {spec.kv_ctype} *restrict v_row = {row}; "
                f"const {real} v_scale = VS[{_gamma(spec.v_scale, 'b', head, key)}];", f"(v_scale * {element})")
    if spec.kv_dtype == "float16":
        return f"const {spec.kv_ctype} *restrict v_row = {row};", f"(({real})moa_f16_to_f32({element}))"
    return f"const {real} *restrict v_row = {row};", element


def _stride_term(stride: int, var: str) -> str:
    return var if stride == 1 else f"{var} * {stride}"


# --- the micro-kernel form -------------------------------------------------------------

@dataclass(frozen=True)
class TileScore(dnf.Term):
    """The score tile's element (ii, kk) as the score kernel left it: Q.K, scaled when the
    kernel folded the scale in."""


@dataclass(frozen=True)
class Rows:
    """How the micro-kernels read a block: row strides (in elements) of Q, K, V and Y, None
    for an operand whose rows are packed into scratch first, and whether K's rows are keys
    ("nt": s = Q K^T by dot products; packed K is) or head dims ("nn": K is stored
    transposed, s = Q (K^T) as a GEMM tile)."""
    q: int | None
    k: int | None
    v: int | None
    y: int | None
    k_form: str


def _row_stride(layout: Layout, extent_inner: int, transposed: bool = False) -> int | None:
    """The stride between rows of the (row, element) axes 2 and 3 when elements are
    contiguous (axes swapped when `transposed`), else None."""
    row, inner = (3, 2) if transposed else (2, 3)
    if any(layout.axis_divisors()[a] != 1 for a in (2, 3)):
        return None
    if extent_inner > 1 and layout.strides[inner] != 1:
        return None
    return layout.strides[row] if layout.shape[row] > 1 else 0


def _stacked_row_stride(layout: Layout, spec: AttentionSpec, width: int) -> int | None:
    """The stride between consecutive stacked rows (row = r * Sq + i over the group's heads r)
    of a Q-shaped layout when it is one constant with contiguous elements, else None."""
    group, sq = spec.q_heads // spec.kv_heads, spec.q_len
    if group == 1:
        return _row_stride(layout, width)
    if any(d != 1 for d in layout.axis_divisors()[1:]) or (width > 1 and layout.strides[3] != 1):
        return None
    if sq == 1:
        return layout.strides[1]
    return layout.strides[2] if layout.strides[1] == sq * layout.strides[2] else None


def rows_of(spec: AttentionSpec, decode: bool = False) -> Rows:
    """The block's Rows; in the decode form Q's rows are the stacked group's (Y is written row
    by row there, so its entry only says whether a row's elements are contiguous)."""
    if decode:
        y_elements = spec.y.axis_divisors()[3] == 1 and (spec.value_dim == 1 or spec.y.strides[3] == 1)
        return dataclasses.replace(rows_of(spec), q=_stacked_row_stride(spec.q, spec, spec.head_dim),
                                   y=0 if y_elements else None)
    q = _row_stride(spec.q, spec.head_dim)
    v = _row_stride(spec.v, spec.value_dim)
    y = _row_stride(spec.y, spec.value_dim)
    k, form = _row_stride(spec.k, spec.head_dim), "nt"
    if k is None:
        k, form = _row_stride(spec.k, spec.kv_len, transposed=True), "nn"
    if k is None:
        form = "nt"
    return Rows(q, k, v, y, form)


def _substitute(term, scale_folded: bool):
    """(term with its Q.K reduction replaced by TileScore, the scale the score kernel
    applies): the kernel computes `scale * Q.K` when the term has that product."""
    found = []

    def sub(t):
        if (scale_folded and isinstance(t, dnf.Binary) and t.op == "*" and isinstance(t.left, dnf.Literal)
                and isinstance(t.right, dnf.Reduce)):
            found.append(t.left.value)
            return TileScore()
        if isinstance(t, dnf.Reduce):
            return TileScore()
        if isinstance(t, dnf.Term) and dataclasses.is_dataclass(t):
            return dataclasses.replace(t, **{f.name: sub(getattr(t, f.name)) for f in dataclasses.fields(t)
                                             if isinstance(getattr(t, f.name), dnf.Term)})
        return t

    out = sub(term)
    assert len(set(found)) <= 1
    return out, (found[0] if found else 1.0)


class _MicroKernels:
    """The micro-kernel form of one block: where the kernels read each operand (in place, or
    rows packed into scratch through its access map), the loop over key tiles, the score
    tile (the kernel call and the DNF's pass over it) and the final normalisation. The two
    schedules below are only the order of these parts and their softmax calls."""

    def __init__(self, spec: AttentionSpec, schedule: Schedule, kernels: KernelSet):
        self.decode = decode_form(spec, schedule)
        self.spec, self.schedule, self.kernels, self.rows = spec, schedule, kernels, rows_of(spec, self.decode)
        self.bc = min(schedule.block_k, spec.kv_len)
        self.br = block_rows(spec, schedule)
        # Query head and index of a block row, the K/V head, and the query indices a block spans.
        self.query = (lambda row: _stacked_index(spec, row)) if self.decode else (lambda row: ("h", row))
        self.kv_head = "g" if self.decode else _kv_head(spec)
        self.query_range = ("ib", "(ib + rows - 1)")
        if self.decode:
            self.query_range = ("0", "0") if spec.q_len == 1 else \
                ("i_first", "i_last") if spec.q_heads > spec.kv_heads else self.query_range
        self.packs = {region for region, _ in _packing_regions(spec, schedule)}
        if kernels.kv_ctype and ({"k_pack", "v_pack"} & self.packs or self.rows.k_form != "nt"):
            # A cache's rows are always contiguous: the int8 and float16 kernels read them in place only.
            raise NotImplementedError(f"{kernels.name}: K and V must be stored as rows of contiguous elements")
        self.copies = bool(self.packs) or self.rows.y is None  # element loops over j: packing, or Y's scatter
        term = dnf.score_term(dnf.derive(spec.features()))
        self.term, self.scale = _substitute(term, scale_folded=self.rows.k_form == "nt")
        suffix = kernels.math_suffix
        self.printer = _CPrinter(spec, kernels.ctype, {"exp": "exp" + suffix, "tanh": "tanh" + suffix}, suffix)

    def real(self, x: float) -> str:
        return c_real(x, self.kernels.math_suffix)

    def operand_rows(self, operand: str) -> tuple[str, int]:
        """(pointer to the tile's first row, row stride) of operand Q, K, V or Y as the kernels
        read it: its packed copy in scratch, or the operand where it is stored."""
        spec = self.spec
        if f"{operand.lower()}_pack" in self.packs:
            return f"{operand.lower()}_pack", spec.head_dim if operand in ("Q", "K") else spec.value_dim
        layout, index = {"Q": (spec.q, self.query("ib")), "K": (spec.k, (self.kv_head, "kb")),
                         "V": (spec.v, (self.kv_head, "kb")), "Y": (spec.y, self.query("ib"))}[operand]
        return f"{operand} + {_gamma(layout, 'b', *index, '0')}", getattr(self.rows, operand.lower())

    def kv_rows(self, operand: str) -> str:
        """The arguments naming K's or V's rows of the key tile for the score or P V kernel:
        pointer and stride, then (an int8 cache) the pointer to those rows' scales."""
        pointer, stride = self.operand_rows(operand)
        if not self.kernels.kv_scaled:
            return f"{pointer}, {stride}"
        array, layout = {"K": ("KS", self.spec.k_scale), "V": ("VS", self.spec.v_scale)}[operand]
        return f"{pointer}, {stride}, {array} + {_gamma(layout, 'b', self.kv_head, 'kb')}"

    def _pack(self, w, region, array, layout, index, count, width, indent, scale=None, widen=None):
        if region not in self.packs:
            return
        value = f"{array}[{_gamma(layout, 'b', *index, 'j')}]"
        if scale is not None:  # int8 rows dequantized: the float32 product, as DequantizeLinear's
            value = f"{c_float_short(scale)} * ({self.kernels.ctype}){value}"
        if widen is not None:  # rows of halves: each widened exactly (moa/half.h)
            value = f"{widen}({value})"
        w(f"{indent}for (ii = 0; ii < {count}; ii++) {{ /* {array}'s rows as the micro-kernels read them */")
        w(f"{indent}    for (j = 0; j < {width}; j++) {{ {region}[ii * {width} + j] = {value}; }}")
        w(f"{indent}}}")

    def pack_q(self, w):
        self._pack(w, "q_pack", "Q", self.spec.q, self.query("ib + ii"), "rows", self.spec.head_dim, "        ",
                   self.spec.q_scale if self.spec.q_dtype == "int8" else None, WIDEN.get(self.spec.q_dtype))

    def pack_k(self, w, indent="            "):
        self._pack(w, "k_pack", "K", self.spec.k, (self.kv_head, "kb + ii"), "cols", self.spec.head_dim, indent)

    def pack_v(self, w, indent="            "):
        self._pack(w, "v_pack", "V", self.spec.v, (self.kv_head, "kb + ii"), "cols", self.spec.value_dim, indent)

    def key_tiles(self, w, comment: str = "", begin: str = "0", end: str = "kv_end", indent: str = "        "):
        """Opens the loop over the visible key tiles of [begin, end); the caller closes it."""
        w(f"{indent}for (kb = {begin}; kb < {end}; kb += {self.bc}) {{{comment}")
        w(f"{indent}    const ptrdiff_t cols = {end} - kb < {self.bc} ? {end} - kb : {self.bc};")

    def write_y(self, w, acc: str, ld: int):
        """Y rows of the block = acc rows / l; a fully hidden row (l = 0) gives 0."""
        spec, k = self.spec, self.kernels
        dv = spec.value_dim
        w("        for (ii = 0; ii < rows; ii++) {")
        w(f"            const {k.acc_ctype} inv_l = l[ii] > 0 ? {self.real(1.0)} / l[ii] : 0;")
        if self.rows.y is not None:
            w(f"            {k.scale}({dv}, inv_l, {acc} + ii * {ld}, Y + {_gamma(spec.y, 'b', *self.query('ib + ii'), '0')});")
        else:  # Y's rows are not contiguous: normalise in place, then store through Y's map
            w(f"            {k.scale}({dv}, inv_l, {acc} + ii * {ld}, {acc} + ii * {ld});")
            w(f"            for (j = 0; j < {dv}; j++) {{ Y[{_gamma(spec.y, 'b', *self.query('ib + ii'), 'j')}] = {acc}[ii * {ld} + j]; }}")
        w("        }")

    def score_tile(self, w, ld: int, col0: str, indent: str):
        """Fills s[ii * ld + col0 + kk] for ii < rows, kk < cols, keys kb + kk."""
        spec, k = self.spec, self.kernels
        tile = f"s + {col0}" if col0 != "0" else "s"
        element = f"s[ii * {ld} + {col0} + kk]" if col0 != "0" else f"s[ii * {ld} + kk]"
        (q, ldq), (keys, ldk) = self.operand_rows("Q"), self.operand_rows("K")
        if self.rows.k_form == "nt":
            w(f"{indent}{k.scores}((size_t)rows, (size_t)cols, {spec.head_dim}, {self.real(self.scale)}, "
              f"{q}, {ldq}, {self.kv_rows('K')}, {tile}, {ld});")
        else:  # K^T stored: the tile is Q (rows x D) times K^T (D x cols), a GEMM tile from zero
            w(f"{indent}for (ii = 0; ii < rows; ii++) {{ for (kk = 0; kk < cols; kk++) {{ {element} = 0; }} }}")
            w(f"{indent}{k.pv}((size_t)rows, {spec.head_dim}, (size_t)cols, {q}, {ldq}, {keys}, {ldk}, {tile}, {ld});")
        self.printer.tile = element
        hidden, rest = _split_hidden(self.term)
        if not hidden:
            self._pass(w, self.term, element, indent)
            return
        # Keys hidden by index alone (causal, window, key lengths) are affine in (i, k), so a
        # tile hides one iff one of its corners does; a tile no corner hides skips them.
        corners = [(i, k) for i in self.query_range for k in ("kb", "(kb + cols - 1)")]
        tests = " || ".join(self.printer.expr(_rename(cond, {"i": i, "k": k}), [])
                            for cond in hidden for i, k in corners)
        w(f"{indent}if ({tests}) {{ /* some key of the tile is hidden */")
        self._pass(w, self.term, element, indent + "    ")
        if rest == TileScore():
            w(f"{indent}}}")
            return
        w(f"{indent}}} else {{")
        self._pass(w, rest, element, indent + "    ")
        w(f"{indent}}}")

    def _pass(self, w, term, element, indent):
        if term == TileScore():
            return
        pre: list[str] = []
        value = self.printer.expr(term, pre)
        assert not pre
        w(f"{indent}for (ii = 0; ii < rows; ii++) {{ /* the DNF's terms around Q.K: softcap, bias, hidden keys */")
        head, query = self.query("ib + ii")
        if self.decode and re.search(r"\bh\b", value):
            w(f"{indent}    const ptrdiff_t h = {head};")
        if re.search(r"\bi\b", value):
            w(f"{indent}    const ptrdiff_t i = {query};")
        w(f"{indent}    for (kk = 0; kk < cols; kk++) {{")
        if re.search(r"\bk\b", value):
            w(f"{indent}        const ptrdiff_t k = kb + kk;")
        w(f"{indent}        {element} = {value};")
        w(f"{indent}    }}")
        w(f"{indent}}}")


def _split_hidden(term):
    """(the index-only conditions hiding a key, the term when none holds): the chain of
    Where(i/k comparison, -inf, ...) the DNF puts around the score, peeled while affine."""
    conditions = []
    while (isinstance(term, dnf.Where) and isinstance(term.cond, dnf.IndexGreater)
           and isinstance(term.then, dnf.Literal) and term.then.value == -math.inf
           and _affine(term.cond.left) and _affine(term.cond.right)):
        conditions.append(term.cond)
        term = term.otherwise
    return conditions, term


def _affine(ix) -> bool:
    if isinstance(ix, dnf.FloorDiv):
        return False
    if isinstance(ix, dnf.Sum):
        return _affine(ix.left) and _affine(ix.right)
    if isinstance(ix, (dnf.Shift, dnf.KeyCount)):
        return isinstance(ix, dnf.KeyCount) or _affine(ix.arg)
    return True


def _rename(cond: dnf.IndexGreater, names: dict) -> dnf.IndexGreater:
    def ren(ix):
        if isinstance(ix, dnf.Index):
            return dnf.Index(names.get(ix.name, ix.name))
        if isinstance(ix, dnf.Sum):
            return dnf.Sum(ren(ix.left), ren(ix.right))
        if isinstance(ix, dnf.KeyCount):
            return ix  # L[b]: b is fixed over the tile
        return dataclasses.replace(ix, arg=ren(ix.arg))
    return dnf.IndexGreater(ren(cond.left), ren(cond.right))


def _online_tiles(form: _MicroKernels, w):
    k, dv, bc = form.kernels, form.spec.value_dim, form.bc
    w("        for (ii = 0; ii < rows; ii++) {")
    w("            m[ii] = -INFINITY;")
    w("            l[ii] = 0;")
    w(f"            for (kk = 0; kk < {dv}; kk++) {{ acc[ii * {dv} + kk] = 0; }}")
    w("        }")
    form.pack_q(w)
    form.key_tiles(w)
    form.pack_k(w)
    form.pack_v(w)
    form.score_tile(w, bc, "0", "            ")
    w(f"            {k.softmax}((size_t)rows, (size_t)cols, s, {bc}, m, l, alpha); /* p = exp(s - m), m, l */")
    w("            for (ii = 0; ii < rows; ii++) {")
    w(f"                if (alpha[ii] != {form.real(1.0)}) {{ /* the running max moved: rescale what earlier key tiles summed */")
    w(f"                    {k.scale}({dv}, alpha[ii], acc + ii * {dv}, acc + ii * {dv});")
    w("                }")
    w("            }")
    w(f"            {k.pv}((size_t)rows, (size_t)cols, {dv}, s, {bc}, {form.kv_rows('V')}, acc, {dv});")
    w("        }")
    form.write_y(w, "acc", dv)


def _two_pass_tiles(form: _MicroKernels, w):
    """Scores of all visible keys per key tile, then per row max and exp in place, then
    Y += P V tile by tile (each V tile serves all Br rows), then Y *= 1 / l."""
    k, dv, skv = form.kernels, form.spec.value_dim, form.spec.kv_len
    y, ldy = form.operand_rows("Y")
    form.pack_q(w)
    form.key_tiles(w, " /* Step I: the scores */")
    form.pack_k(w)
    form.score_tile(w, skv, "kb", "            ")
    w("        }")
    w("        for (ii = 0; ii < rows; ii++) { /* Steps II-III: max, exponentiate and sum */")
    w(f"            {k.ctype} *const row = s + ii * {skv};")
    w(f"            m[ii] = {k.max}((size_t)kv_end, row);")
    w("            if (m[ii] == -INFINITY) { /* every key hidden: the row adds nothing */")
    w("                l[ii] = 0;")
    w("                for (kk = 0; kk < kv_end; kk++) { row[kk] = 0; }")
    w("            } else {")
    w(f"                l[ii] = {k.exp}((size_t)kv_end, row, m[ii]);")
    w("            }")
    w(f"            for (kk = 0; kk < {dv}; kk++) {{ ({y} + ii * {ldy})[kk] = 0; }}")
    w("        }")
    form.key_tiles(w, " /* Step IV and Eq. 21 */")
    form.pack_v(w)
    w(f"            {k.pv}((size_t)rows, (size_t)cols, {dv}, s + kb, {skv}, {form.kv_rows('V')}, {y}, {ldy});")
    w("        }")
    form.write_y(w, y, ldy)


# --- the decode form: stacked query heads, split key axis -----------------------------

def _splits(schedule: Schedule, bc: int, dv: int, real: str, body, w, lifted: bool = False):
    """The key axis [0, kv_end) in S chunks of whole key tiles (sized at run time from kv_end),
    each reduced by body(indent, m, l, acc, begin, end) into its own partial; one chunk (S = 1)
    is the whole axis into m, l, acc. Lifted: the item's chunk c only (the item loop is over c)."""
    parts = schedule.splits
    if parts == 1:
        body("        ", "m", "l", "acc", "0", "kv_end")
        return
    indent = "        " if lifted else "            "
    w(f"        const ptrdiff_t chunk = ((kv_end + {parts - 1}) / {parts} + {bc - 1}) / {bc} * {bc}; /* keys per split, whole tiles */")
    if not lifted:
        w(f"        for (c = 0; c < {parts}; c++) {{ /* split c: keys [c*chunk, (c+1)*chunk) into its partial (m_c, l_c, acc_c) */")
    w(f"{indent}{real} *const m_c = m + c * rows, *const l_c = l + c * rows, *const acc_c = acc + c * rows * {dv};"
      + (" /* split c: keys [c*chunk, (c+1)*chunk) */" if lifted else ""))
    w(f"{indent}const ptrdiff_t k_begin = c * chunk < kv_end ? c * chunk : kv_end;")
    w(f"{indent}const ptrdiff_t k_end = k_begin + chunk < kv_end ? k_begin + chunk : kv_end;")
    body(indent, "m_c", "l_c", "acc_c", "k_begin", "k_end")
    if not lifted:
        w("        }")


def _combine_comment(parts: int) -> str:
    return (f"/* combine the {parts} splits exactly: m = max_c m_c, w_c = e^(m_c - m), l = sum_c w_c l_c, "
            "acc = sum_c w_c acc_c */")


def _decode_tiles(form: _MicroKernels, w):
    """The decode form through the micro-kernels: each K and V tile of head g serves all the
    stacked rows of its query heads (one score tile, one P V tile); with S splits the item is
    one chunk of keys, run in the online form into its block's partial c (the partials combine
    exactly in name_combine, once every split has run)."""
    spec, k, bc, parts = form.spec, form.kernels, form.bc, form.schedule.splits
    dv = spec.value_dim
    form.pack_q(w)
    if parts > 1:
        _block_partials(form, "block", w)

    def chunk(indent, m, l, acc, begin, end):
        inner = indent + "    "
        _empty_partial(w, indent, m, l, acc, dv, "kk")
        form.key_tiles(w, "", begin, end, indent)
        form.pack_k(w, inner)
        form.pack_v(w, inner)
        form.score_tile(w, bc, "0", inner)
        w(f"{inner}{k.softmax}((size_t)rows, (size_t)cols, s, {bc}, {m}, {l}, alpha); /* p = exp(s - m), m, l */")
        w(f"{inner}for (ii = 0; ii < rows; ii++) {{")
        w(f"{inner}    if (alpha[ii] != {form.real(1.0)}) {{ /* the running max moved: rescale what earlier key tiles summed */")
        w(f"{inner}        {k.scale}({dv}, alpha[ii], {acc} + ii * {dv}, {acc} + ii * {dv});")
        w(f"{inner}    }}")
        w(f"{inner}}}")
        w(f"{inner}{k.pv}((size_t)rows, (size_t)cols, {dv}, s, {bc}, {form.kv_rows('V')}, {acc}, {dv});")
        w(f"{indent}}}")

    _splits(form.schedule, bc, dv, k.ctype, chunk, w, lifted=True)
    if parts == 1:
        form.write_y(w, "acc", dv)


def _block_partials(form: _MicroKernels, block: str, w):
    """m, l and acc: the S partials of row block `block` (partial_elements apart), as both the
    splits' items and name_combine find them."""
    rows = form.schedule.splits * form.br
    w(f"        {form.kernels.ctype} *const m = partials + {block} * {partial_elements(form.spec, form.schedule)}, "
      f"*const l = m + {rows}, *const acc = l + {rows};")


def _combine_function(form: _MicroKernels, name: str, w):
    """`name_combine`: blocks first .. end - 1 of Y from their S partials, combined exactly."""
    spec, k, schedule, br = form.spec, form.kernels, form.schedule, form.br
    dv, parts = spec.value_dim, schedule.splits
    group = spec.q_heads // spec.kv_heads
    row_count = group * spec.q_len
    w(f"/* {name}_combine: Y of blocks first .. end - 1 from their {parts} split-K partials. */")
    w(f"static void {name}_combine({k.ctype} *restrict Y, {k.ctype} *restrict partials, size_t first, size_t end)")
    w("{")
    w("    size_t item;")
    w("    for (item = first; item < end; item++) {")
    _block_indices(spec, "g", spec.kv_heads, -(-row_count // br), br, row_count, "item", w)
    _block_partials(form, "item", w)
    w("        ptrdiff_t ii, c" + (", j" if form.rows.y is None else "") + ";")
    w(f"        for (ii = 0; ii < rows; ii++) {{ {_combine_comment(parts)}")
    w(f"            {k.ctype} m_all = m[ii], l_all = 0, weight[{parts}];")
    w(f"            for (c = 1; c < {parts}; c++) {{ if (!(m[c * rows + ii] <= m_all)) {{ m_all = m[c * rows + ii]; }} }} /* a NaN wins */")
    w(f"            for (c = 0; c < {parts}; c++) {{")
    w(f"                weight[c] = m_all == -INFINITY ? 0 : {k.scalar_exp}(m[c * rows + ii] - m_all);")
    w("                l_all += weight[c] * l[c * rows + ii];")
    w("            }")
    w(f"            {k.scale}({dv}, weight[0], acc + ii * {dv}, acc + ii * {dv});")
    w(f"            {k.combine or k.pv}(1, {parts - 1}, {dv}, weight + 1, {parts - 1}, acc + (rows + ii) * {dv}, rows * {dv}, "
      f"acc + ii * {dv}, {dv}); /* + sum_c>0 w_c acc_c */")
    w("            l[ii] = l_all;")
    w("        }")
    form.write_y(w, "acc", dv)
    w("    }")
    w("}")
    w("")


def _empty_partial(w, indent: str, m: str, l: str, acc: str, dv: int, var: str) -> None:
    """A key chunk's partial (row max, row sum, accumulator) before its first key tile."""
    w(f"{indent}for (ii = 0; ii < rows; ii++) {{")
    w(f"{indent}    {m}[ii] = -INFINITY;")
    w(f"{indent}    {l}[ii] = 0;")
    w(f"{indent}    for ({var} = 0; {var} < {dv}; {var}++) {{ {acc}[ii * {dv} + {var}] = 0; }}")
    w(f"{indent}}}")


def _decode_body(spec: AttentionSpec, schedule: Schedule, real, exp, score, w):
    """The oracle's decode form: the online body over the stacked rows, per key split, the
    partials combined as split_keys (dnf/split.py) combines them."""
    bc, dv, parts = min(schedule.block_k, spec.kv_len), spec.value_dim, schedule.splits
    query = lambda row: _stacked_index(spec, row)  # noqa: E731

    def chunk(indent, m, l, acc, begin, end):
        inner = indent + "    "
        _empty_partial(w, indent, m, l, acc, dv, "q")
        _score_tile(bc, score, [f"s[ii * {bc} + kk] = sc;"], w, begin, end, indent, query)
        w(f"{inner}for (ii = 0; ii < rows; ii++) {{")
        w(f"{inner}    {real} m_new = {m}[ii], rescale;")
        w(f"{inner}    for (kk = 0; kk < cols; kk++) {{ if (!(s[ii * {bc} + kk] <= m_new)) {{ m_new = s[ii * {bc} + kk]; }} }}")
        w(f"{inner}    if (m_new == -INFINITY) {{ continue; }} /* every key so far hidden */")
        w(f"{inner}    rescale = {exp}({m}[ii] - m_new);")
        w(f"{inner}    {l}[ii] *= rescale;")
        w(f"{inner}    for (q = 0; q < {dv}; q++) {{ {acc}[ii * {dv} + q] *= rescale; }}")
        w(f"{inner}    for (kk = 0; kk < cols; kk++) {{")
        w(f"{inner}        const {real} p = {exp}(s[ii * {bc} + kk] - m_new);")
        row, element = _oracle_v_row(spec, real, "g", "kb + kk")
        w(f"{inner}        {row}")
        w(f"{inner}        {l}[ii] += p;")
        w(f"{inner}        for (q = 0; q < {dv}; q++) {{ {acc}[ii * {dv} + q] += p * {element}; }}")
        w(f"{inner}    }}")
        w(f"{inner}    {m}[ii] = m_new;")
        w(f"{inner}}}")
        w(f"{indent}}}")

    _splits(schedule, bc, dv, real, chunk, w)
    w("        for (ii = 0; ii < rows; ii++) {" + (" " + _combine_comment(parts) if parts > 1 else ""))
    head, row = query("ib + ii")
    w(f"            {real} *restrict y_row = Y + {_gamma(spec.y, 'b', head, row, '0')};")
    if parts > 1:
        w(f"            {real} m_all = m[ii], l_all = 0;")
        w(f"            for (c = 1; c < {parts}; c++) {{ if (!(m[c * rows + ii] <= m_all)) {{ m_all = m[c * rows + ii]; }} }}")
        w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = 0; }}")
        w("            if (m_all == -INFINITY) { continue; } /* no split saw a key: the row gives 0 */")
        w(f"            for (c = 0; c < {parts}; c++) {{")
        w(f"                const {real} weight = {exp}(m[c * rows + ii] - m_all);")
        w("                l_all += weight * l[c * rows + ii];")
        w(f"                for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] += weight * acc[(c * rows + ii) * {dv} + q]; }}")
        w("            }")
        w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] /= l_all; }}")
    else:
        w(f"            const {real} inv_l = l[ii] > 0 ? ({real})1 / l[ii] : 0; /* fully hidden row -> 0 */")
        w(f"            for (q = 0; q < {dv}; q++) {{ y_row[{_stride_term(spec.y.strides[3], 'q')}] = acc[ii * {dv} + q] * inv_l; }}")
    w("        }")
