"""INT4 rows (FBGEMM TBE layout) in Triton: ``recsys::quantize_int4_rows_triton``,
``recsys::dequantize_int4_rows_triton`` and the TBE-style lookup ``recsys::int4_embedding_bag_triton``.

Layout and semantics: recsys_kernels/reference/int4_embedding_bag.py. Row-wise 4-bit quantization with fp16
scale and bias is FBGEMM's fused N-bit rowwise format (Khudia et al., 2021).

Lookup: one lane per 16-byte chunk, as in the CUDA kernel. A row is C = row_bytes(D) / 16 aligned chunks
(chunk 0: the fp16 scale and bias, then 24 codes; chunk c >= 1: 32 codes; 8 codes a 32-bit word, low nibble
first). A program takes BAGS bags of one table: lane u owns chunk u % C of every row of bag u // C (30 of 32
lanes busy at D = 128, BAGS = 6 a warp) and walks its bag BLOCK_L rows a step: BLOCK_L indices, then BLOCK_L
128-bit chunk loads and 32-bit qparams loads (an L1 hit for c >= 1) in flight. Each lane dequantizes its own
chunks, so nothing crosses lanes in the loop: no shared memory, no shuffles, no padded words (the loads go
through flat tiles so that Triton 3.6 keeps a lane's rows in its registers as well: _gather). (The previous
kernel read a D = 128 row as a 32-word tile for its 20 words, expanded codes across lanes through shared memory
and so spent 2x the arithmetic a row.) q * scale + bias in float32, times the per-sample weight, is summed over
the BLOCK_L rows (tl.sum over axis 0) and added to the float32 accumulator: the same sums as the QAT kernel
(recsys_kernels/triton/qat_embedding_bag.py), which pools (BLOCK_L, WORDS, 8) tiles with the same BLOCK_L
(bag_config), so converted tables give bit-identical results. Lane column 8 w + j (code j of word w of its
chunk) is output column 32 c - 8 + 8 w + j.

bounds_check="error": every program checks its bag's offsets, its table's table_offsets entries and its
indices, and raises a flag; the host reads the flag once after the launch (one device sync) and, when set,
re-runs the reference's checks for the detailed message. "ignore": no flag and no sync; bad indices
contribute zero and offsets are clamped into [0, N].

Rounding to nearest even uses (y + 1.5 * 2**23) - 1.5 * 2**23 on values clamped to the code range first
(exact for |y| < 2**22, and the same as FBGEMM's clamp(lrintf(y)); libdevice.rint has no interpreter
implementation); divisions use div_rn so scales match the C++ kernels bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from recsys_kernels.reference import int4_embedding_bag as reference
from recsys_kernels.reference.int4_embedding_bag import row_bytes

__all__ = ["dequantize_int4_rows_triton", "int4_embedding_bag_triton", "quantize_int4_rows_triton"]

@triton.jit
def _rint(y):
    """Round to nearest even for |y| < 2**22."""
    return (y + 12582912.0) - 12582912.0


@triton.jit
def _half(x):
    return x.to(tl.float16).to(tl.float32)


@triton.jit
def _to_out(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    """float32 -> output dtype, round to nearest even. The interpreter truncates fp32 -> bf16, so there the
    rounding is done on the bits first (the cast is then exact). Never taken on a GPU."""
    if ROUND_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _row_params(mn, mx):
    """(scale, bias, inv) of rows with minimum mn and maximum mx (vectors), FBGEMM's corner cases included."""
    bias = _half(mn)
    rng = mx - bias
    scale = _half(tl.where(rng == 0.0, 1.0, tl.math.div_rn(rng, tl.full(rng.shape, 15.0, tl.float32))))
    scale = tl.where(scale == 0.0, 1.0, scale)
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    overflow = (inv == float("inf")) | (inv == float("-inf"))
    return tl.where(overflow, 1.0, scale), bias, tl.where(overflow, 1.0, inv)


@triton.jit
def _code(x, bias, inv):
    return _rint(tl.minimum(tl.maximum((x - bias) * inv, 0.0), 15.0))


@triton.jit(do_not_specialize=["E", "D", "RB", "s_we"])
def _quantize_kernel(w_ptr, out_ptr, E, D, RB, s_we, s_wd,
                     BLOCK_E: tl.constexpr, HALF: tl.constexpr, PAD: tl.constexpr):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    k = tl.arange(0, HALF)
    em = e < E
    km = k < D // 2
    m = em[:, None] & km[None, :]
    row = w_ptr + e.to(tl.int64)[:, None] * s_we
    lo = tl.load(row + (2 * k)[None, :] * s_wd, mask=m, other=0.0).to(tl.float32)
    hi = tl.load(row + (2 * k + 1)[None, :] * s_wd, mask=m, other=0.0).to(tl.float32)
    mn = tl.min(tl.where(m, tl.minimum(lo, hi), float("inf")), axis=1)
    mx = tl.max(tl.where(m, tl.maximum(lo, hi), float("-inf")), axis=1)
    mn = tl.where(em, mn, 0.0)  # rows past E: finite qparams, no inf - inf
    mx = tl.where(em, mx, 0.0)
    scale, bias, inv = _row_params(mn, mx)
    q_lo = _code(lo, bias[:, None], inv[:, None]).to(tl.int32)
    q_hi = _code(hi, bias[:, None], inv[:, None]).to(tl.int32)
    byte = (q_lo | (q_hi << 4)).to(tl.uint8)
    base = e.to(tl.int64) * RB
    tl.store(out_ptr + base[:, None] + 4 + k[None, :], byte, mask=m)
    # The fp16 scale and bias go out as little-endian byte pairs through the one uint8 pointer: a second, fp16
    # view of `out` would be two aliased kernel arguments, which torch.compile's functionalization copies apart.
    s16 = scale.to(tl.float16).to(tl.uint16, bitcast=True)
    b16 = bias.to(tl.float16).to(tl.uint16, bitcast=True)
    tl.store(out_ptr + base, (s16 & 0xFF).to(tl.uint8), mask=em)
    tl.store(out_ptr + base + 1, (s16 >> 8).to(tl.uint8), mask=em)
    tl.store(out_ptr + base + 2, (b16 & 0xFF).to(tl.uint8), mask=em)
    tl.store(out_ptr + base + 3, (b16 >> 8).to(tl.uint8), mask=em)
    p = tl.arange(0, PAD)
    pad_at = 4 + D // 2 + p
    tl.store(out_ptr + base[:, None] + pad_at[None, :], tl.zeros((BLOCK_E, PAD), tl.uint8),
             mask=em[:, None] & (pad_at < RB)[None, :])


@triton.jit(do_not_specialize=["E", "D", "RB"])
def _dequantize_kernel(packed_ptr, half_ptr, out_ptr, E, D, RB, BLOCK_E: tl.constexpr, HALF: tl.constexpr,
                       ROUND_BF16: tl.constexpr):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    k = tl.arange(0, HALF)
    em = e < E
    m = em[:, None] & (k < D // 2)[None, :]
    base = e.to(tl.int64) * RB
    scale = tl.load(half_ptr + base // 2, mask=em, other=0.0).to(tl.float32)
    bias = tl.load(half_ptr + base // 2 + 1, mask=em, other=0.0).to(tl.float32)
    byte = tl.load(packed_ptr + base[:, None] + 4 + k[None, :], mask=m, other=0).to(tl.int32)
    lo = (byte & 15).to(tl.float32) * scale[:, None] + bias[:, None]
    hi = (byte >> 4).to(tl.float32) * scale[:, None] + bias[:, None]
    vals = _to_out(tl.interleave(lo, hi), out_ptr.dtype.element_ty, ROUND_BF16)
    c = tl.arange(0, 2 * HALF)
    tl.store(out_ptr + e.to(tl.int64)[:, None] * D + c[None, :], vals, mask=em[:, None] & (c < D)[None, :])


@triton.jit
def _table_extent(to_ptr, meta_ptr, t, rb, total, HAS_TO: tl.constexpr, UNIFORM: tl.constexpr):
    """(rows, first byte, table_offsets broken) of table t; tables lie back to back in the storage."""
    if HAS_TO:
        lo = tl.load(to_ptr + t).to(tl.int64)
        hi = tl.load(to_ptr + t + 1).to(tl.int64)
        rows = tl.maximum(hi - lo, 0)
        if UNIFORM:
            base = lo * rb
        else:
            base = lo * 0
            for u in range(0, t):
                ru = tl.maximum(tl.load(to_ptr + u + 1).to(tl.int64) - tl.load(to_ptr + u).to(tl.int64), 0)
                base += ru * tl.load(meta_ptr + 3 * u + 2)
        first = tl.load(to_ptr).to(tl.int64)
        broken = (hi < lo) | (first != 0) | (base + rows * rb > total)
    else:
        rows = total // rb
        base = rows * 0
        broken = rows < 0
    return rows, base, broken


@triton.jit
def _bag_range(off_ptr, k, n_bags, N, CHECK: tl.constexpr):
    """Clamped [start, stop) of bag k, and whether its offsets are invalid."""
    o0 = tl.load(off_ptr + k).to(tl.int64)
    o1 = tl.load(off_ptr + k + 1).to(tl.int64)
    start = tl.minimum(tl.maximum(o0, 0), N)
    stop = tl.minimum(tl.maximum(o1, start), N)
    bad = o1 < o0
    if CHECK:
        bad = bad | ((k == 0) & (o0 != 0)) | ((k == n_bags - 1) & (o1 != N))
    return start, stop, bad


@triton.jit
def _gather(ptr, offs, mask, VEC: tl.constexpr):
    """The VEC elements at ptr + VEC * offs (VEC-aligned) where mask, else 0, for every element of an (rows,
    lanes) tile, as a (rows * lanes, VEC) tile (row-major; the caller reshapes it back). The compiler orders a
    load's threads by the pointer's contiguity; a (rows, lanes) tile has none along either axis, and Triton 3.6
    breaks that tie towards the rows (3.8 towards the lanes): rows over threads, shuffles for the row sums and
    layout conversions through shared memory. The flat tile has no tie, and the reshapes only rename registers:
    lanes on threads, rows and the VEC elements in each thread's registers."""
    flat = tl.reshape(offs, (offs.numel,))
    return tl.load(ptr + (VEC * flat)[:, None] + tl.arange(0, VEC)[None, :],
                   mask=tl.reshape(mask, (offs.numel,))[:, None], other=0)


@triton.jit
def _pool_code(bits, shift: tl.constexpr, scale, bias, weight):
    """The code at bits shift..shift+3 of every (row, lane, word), dequantized (and weighted), summed over the
    rows (axis 0). bits holds the words OR-ed with 0x4B000000 (the float 2**23), so masking leaves the float
    2**23 + q * 2**shift (shift <= 19) and subtracting 2**23 gives q * 2**shift exactly: one LOP3 and one FADD,
    no int -> float conversion. Times scale / 2**shift (exact) that is q * scale exactly, so v = q * scale +
    bias is rounded once, as in the other kernels."""
    q = (bits & ((15 << shift) | 0x4B000000)).to(tl.float32, bitcast=True) - 8388608.0
    v = q * (scale * (1.0 / (1 << shift)))[:, :, None] + bias[:, :, None]
    if weight is not None:
        v = weight[:, :, None] * v
    return tl.sum(v, axis=0)


@triton.jit
def _pool_rows(word, scale, bias, weight):
    """(rows, lanes, 4) words -> (lanes, 32) sums over the rows, column 8 w + j from code j of word w (bits
    4j..4j+3; codes 5..7 from the word shifted right by 12). The interleaves only rename registers."""
    hi = (word >> 12) | 0x4B000000
    word = word | 0x4B000000
    s0 = _pool_code(word, 0, scale, bias, weight)
    s1 = _pool_code(word, 4, scale, bias, weight)
    s2 = _pool_code(word, 8, scale, bias, weight)
    s3 = _pool_code(word, 12, scale, bias, weight)
    s4 = _pool_code(word, 16, scale, bias, weight)
    s5 = _pool_code(hi, 8, scale, bias, weight)
    s6 = _pool_code(hi, 12, scale, bias, weight)
    s7 = _pool_code(hi, 16, scale, bias, weight)
    return tl.interleave(tl.interleave(tl.interleave(s0, s4), tl.interleave(s2, s6)),
                         tl.interleave(tl.interleave(s1, s5), tl.interleave(s3, s7)))


# Sizes are not specialised on (divisibility by 16, == 1): one compiled variant serves every batch.
@triton.jit(do_not_specialize=["N", "B", "n_bags", "total", "out_stride"])
def _int4_bag_kernel(words_ptr, idx_ptr, off_ptr, to_ptr, meta_ptr, psw_ptr, out_ptr, err_ptr,
                     N, B, n_bags, total, out_stride,
                     HAS_TO: tl.constexpr, UNIFORM: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr,
                     CHECK: tl.constexpr, BLOCK_L: tl.constexpr, BAGS: tl.constexpr, LANES: tl.constexpr,
                     ALIGNED: tl.constexpr, ROUND_BF16: tl.constexpr):
    groups = tl.cdiv(B, BAGS)  # programs a table
    g = tl.program_id(0) % groups
    t = (tl.program_id(0) // groups).to(tl.int64)
    D = tl.load(meta_ptr + 3 * t).to(tl.int32)
    col = tl.load(meta_ptr + 3 * t + 1)
    rb = tl.load(meta_ptr + 3 * t + 2)
    rows, base, broken = _table_extent(to_ptr, meta_ptr, t, rb, total, HAS_TO, UNIFORM)
    # Lane u: 16-byte chunk u % n_chunks of every row of bag u // n_chunks.
    n_chunks = (rb // 16).to(tl.int32)
    u = tl.arange(0, LANES)
    bag = u // n_chunks
    chunk = u - bag * n_chunks
    b = g.to(tl.int64) * BAGS + bag
    live = (bag < BAGS) & (b < B)
    start, stop, bad_bag = _bag_range(off_ptr, tl.where(live, t * B + b, 0), n_bags, N, CHECK)
    stop = tl.where(live, stop, start)
    n_bad = (live & (broken | bad_bag)).to(tl.int32)
    i = tl.arange(0, BLOCK_L)
    acc = tl.zeros((LANES, 32), tl.float32)
    for p0 in range(0, tl.max(stop - start, axis=0), BLOCK_L):
        p = start[None, :] + p0 + i[:, None]  # (BLOCK_L, LANES): BLOCK_L rows of each lane's bag
        pm = p < stop[None, :]
        r = tl.reshape(_gather(idx_ptr, p, pm, 1), (BLOCK_L, LANES)).to(tl.int64)
        at = base + r * rb
        valid = pm & (r >= 0) & (r < rows) & (at >= 0) & (at + rb <= total)
        if CHECK:
            n_bad += tl.sum((pm & ~valid).to(tl.int32), axis=0)
        # Rows start on 16-byte boundaries: one 128-bit load of the lane's chunk, one 32-bit load of the qparams.
        row16 = tl.where(valid, at, 0) >> 4  # at >= 0 where valid
        word = tl.reshape(_gather(words_ptr, row16 + chunk[None, :], valid, 4),
                          (BLOCK_L, LANES, 4)).to(tl.uint32, bitcast=True)
        qp = tl.reshape(_gather(words_ptr, 4 * row16, valid, 1), (BLOCK_L, LANES)).to(tl.uint32, bitcast=True)
        scale = (qp & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        bias = (qp >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        weight = None
        if HAS_PSW:
            weight = tl.reshape(_gather(psw_ptr, p, valid, 1), (BLOCK_L, LANES)).to(tl.float32)
        # Rows that do not count have codes, scale and bias 0: v = +0.0, as the masked sum of the QAT kernel.
        acc += _pool_rows(word, scale, bias, weight)
    if MEAN:
        acc = acc / tl.maximum(stop - start, 1).to(tl.float32)[:, None]
    c = (chunk * 32 - 8)[:, None] + tl.arange(0, 32)[None, :]
    dst = b * out_stride + col
    if ALIGNED:  # every D a multiple of 4: 16-byte output stores
        dst = tl.multiple_of(dst, 4)
        D = tl.multiple_of(D, 4)
    tl.store(out_ptr + dst[:, None] + c, _to_out(acc, out_ptr.dtype.element_ty, ROUND_BF16),
             mask=live[:, None] & (c >= 0) & (c < D))
    if CHECK:
        n_bad = tl.max(n_bad, axis=0)
        if n_bad > 0:
            tl.atomic_max(err_ptr, n_bad)


# TRITON_INTERPRET=1 at import makes @triton.jit return interpreted (CPU, numpy) functions instead.
_INTERPRETED = not isinstance(_int4_bag_kernel, JITFunction)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _round_bf16(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and _INTERPRETED


def _no_data(t: torch.Tensor) -> bool:
    """No memory to run a kernel on: meta tensors, and fake tensors under the interpreter (see dot_interaction)."""
    return t.device.type == "meta" or (_INTERPRETED and is_fake(t))


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type not in ("cuda", "meta") and not _INTERPRETED:
        raise ValueError(f"{name}: the Triton INT4 kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
                         f"import), got device {t.device}")


_META_CACHE: dict[tuple, torch.Tensor] = {}


def table_meta(D: list[int], device: torch.device) -> torch.Tensor:
    """(T, 3) int64 [D, first output column, row_bytes] per table, cached per device outside tracing."""
    key = (tuple(D), str(device))
    cached = _META_CACHE.get(key)
    if cached is not None:
        return cached
    cols = [0]
    for d in D[:-1]:
        cols.append(cols[-1] + d)
    meta = torch.tensor([[d, c, row_bytes(d)] for d, c in zip(D, cols)], dtype=torch.int64, device=device)
    if not torch.compiler.is_compiling() and not is_fake(meta) and len(_META_CACHE) < 256:
        _META_CACHE[key] = meta
    return meta


def raise_if_flagged(err: torch.Tensor, check) -> None:
    """One sync: when a kernel flagged bad input, re-run the reference's checks for the detailed message.
    Skipped for fake tensors (shape propagation); the ops stay opaque in compiled graphs (below), so compiled
    code runs this with real tensors."""
    if is_fake(err) or err.device.type == "meta":
        return
    if int(err.item()):
        check()
        raise RuntimeError("int4 embedding bag: the kernel flagged invalid indices, offsets or table_offsets")


@triton_op("recsys::quantize_int4_rows_triton", mutates_args=())
def quantize_int4_rows_triton(weight: torch.Tensor) -> torch.Tensor:
    """weight (E, D) float32|float16|bfloat16, D even -> (E, row_bytes(D)) uint8 INT4 rows."""
    reference.check_quantize_inputs(weight)
    _check_device(weight, "weight")
    E, D = weight.shape
    rb = row_bytes(D)
    out = torch.empty((E, rb), dtype=torch.uint8, device=weight.device)
    if E == 0 or _no_data(out):
        return out
    w = weight if weight.dtype != torch.float64 else weight.to(torch.float32)
    half = _next_pow2(D // 2)
    block_e = max(1, min(64, 2048 // half))
    wrap_triton(_quantize_kernel)[(triton.cdiv(E, block_e),)](
        w, out, E, D, rb, w.stride(0), w.stride(1),
        BLOCK_E=block_e, HALF=half, PAD=16)
    return out


@triton_op("recsys::dequantize_int4_rows_triton", mutates_args=())
def dequantize_int4_rows_triton(packed: torch.Tensor, D: int, dtype: torch.dtype) -> torch.Tensor:
    """packed (E, row_bytes(D)) uint8 -> (E, D) in dtype (float32 arithmetic)."""
    reference.check_dequantize_inputs(packed, D, dtype)
    _check_device(packed, "packed")
    E = packed.shape[0]
    out = torch.empty((E, D), dtype=dtype, device=packed.device)
    if E == 0 or _no_data(out):
        return out
    p = packed.contiguous()
    half = _next_pow2(D // 2)
    block_e = max(1, min(64, 2048 // half))
    wrap_triton(_dequantize_kernel)[(triton.cdiv(E, block_e),)](
        p, p.view(torch.float16), out, E, D, row_bytes(D), BLOCK_E=block_e, HALF=half,
        ROUND_BF16=_round_bf16(dtype))
    return out


def bag_config(max_row_bytes: int, avg_len: float) -> tuple[int, int, int]:
    """(BLOCK_L, WORDS, num_warps): BLOCK_L, rows summed a step, is shared by the lookup and the QAT forward
    (the same float32 sums) and is also the lookup's rows in flight a lane; WORDS (a power of two >=
    row_bytes/4) is the QAT row tile; num_warps is the lookup's warps a program (32 * num_warps lanes, several
    bags; the QAT kernel picks its own). From the H100 sweep of 2026-12-06
    (benchmarks/ops/sweep_int4_triton.py, RESULTS.md), D = 128: 4 rows a step and 4 warps at L = 32 (0.144 ms
    against 0.150 for one warp, 2.40 against 2.48 ms for 26 tables; 2 and 8 rows within 10%), one row and
    2 warps for Criteo's L = 1 (0.388 against 0.420 ms for one warp, 0.453 for 8). Wider rows keep QAT tiles
    of at most 2048 codes (not measured)."""
    words = _next_pow2(max_row_bytes // 4)
    block_l = 1 if avg_len < 1.5 else max(1, min(4, 2048 // (words * 8)))
    num_warps = 2 if avg_len < 1.5 else 4
    return block_l, words, num_warps


@triton_op("recsys::int4_embedding_bag_triton", mutates_args=())
def int4_embedding_bag_triton(packed: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, D: list[int],
                              table_offsets: torch.Tensor | None, pooling: str,
                              per_sample_weights: torch.Tensor | None, output_dtype: torch.dtype,
                              bounds_check: str) -> torch.Tensor:
    """TBE-style INT4 lookup (layout: recsys_kernels/reference/int4_embedding_bag.py) -> (B, sum D)."""
    D = list(D)
    T, B = reference.check_bag_inputs(packed, indices, offsets, D, table_offsets, pooling, per_sample_weights,
                                      output_dtype, bounds_check)
    if output_dtype == torch.float64:
        raise ValueError("output_dtype must be float32, float16 or bfloat16, got torch.float64")
    _check_device(packed, "packed")
    out = torch.empty((B, sum(D)), dtype=output_dtype, device=packed.device)
    check = bounds_check == "error"
    n_bags, N = T * B, indices.shape[0]
    if _no_data(out):
        return out
    if n_bags == 0:
        if check and reference.reads_values(indices):
            reference.check_bag_values(packed, indices, offsets, D, table_offsets, B)
        return out
    err = torch.zeros(1, dtype=torch.int32, device=packed.device)
    flat = packed.reshape(-1)
    words = flat[: flat.numel() // 4 * 4].view(torch.int32)
    max_rb = max(row_bytes(d) for d in D)
    block_l, _, num_warps = bag_config(max_rb, N / n_bags)
    lanes = max(32 * num_warps, _next_pow2(max_rb // 16))
    bags = lanes // (max_rb // 16)
    wrap_triton(_int4_bag_kernel)[(T * triton.cdiv(B, bags),)](
        words, indices, offsets, table_offsets if table_offsets is not None else offsets,
        table_meta(D, packed.device), per_sample_weights if per_sample_weights is not None else out, out, err,
        N, B, n_bags, flat.numel(), out.stride(0),
        HAS_TO=table_offsets is not None, UNIFORM=len(set(D)) == 1, HAS_PSW=per_sample_weights is not None,
        MEAN=pooling == "mean", CHECK=check, BLOCK_L=block_l, BAGS=bags, LANES=lanes,
        ALIGNED=all(d % 4 == 0 for d in D), ROUND_BF16=_round_bf16(output_dtype), num_warps=lanes // 32)
    if check:
        raise_if_flagged(err, lambda: reference.check_bag_values(packed, indices, offsets, D, table_offsets, B))
    return out


# AOTDispatcher (torch.compile, opcheck) keeps these ops opaque instead of inlining their bodies: under the
# interpreter because wrap_triton cannot capture interpreted kernels (the launch would vanish from the graph),
# and the lookup always, because its bounds check reads a device flag on the host after the launch, which a
# traced body cannot do (inlining would silently drop the check). Nothing is lost: Inductor has nothing to fuse
# into a gather-and-reduce kernel.
from torch._subclasses.functional_tensor import FunctionalTensorMode  # noqa: E402


def keep_opaque(mode, op, types, args, kwargs):  # type: ignore[no-untyped-def]
    return mode.__torch_dispatch__(op, types, args, kwargs)


for _op in ((quantize_int4_rows_triton, dequantize_int4_rows_triton, int4_embedding_bag_triton) if _INTERPRETED
            else (int4_embedding_bag_triton,)):
    _op.register_torch_dispatch(FunctionalTensorMode, keep_opaque)
