"""INT4 embedding tables in FBGEMM's row layout, reference implementation (also the HPU path and the test
oracle): quantize_int4_rows, dequantize_int4_rows and the TBE-style pooled lookup int4_embedding_bag.

Row layout (FBGEMM ``IntNBitTableBatchedEmbeddingBagsCodegen``, SparseType.INT4, row_alignment 16):

    byte 0..1  scale  (fp16)          value = q * scale + bias,  q in 0..15
    byte 2..3  bias   (fp16)
    byte 4..   D/2 bytes of codes: element 2k is the low nibble of byte k, element 2k+1 the high nibble
    then zero padding up to row_bytes(D) = round_up(4 + D/2, 16)

Quantization (per row, asymmetric; the same arithmetic as FBGEMM's FloatToFusedNBitRowwiseQuantizedSBHalf,
so rows agree byte for byte): bias = fp16(min), scale = fp16((max - bias) / 15) (1 when that is 0),
q = clamp(rint((x - bias) * (1 / scale)), 0, 15), all in float32.

Batched lookup (TBE): T tables stored back to back in ``packed`` — table t has table_offsets[t+1] -
table_offsets[t] rows of row_bytes(D[t]) bytes starting at byte sum_{t' < t} rows_t' * row_bytes(D[t'])
— and bags laid out table-major: bag t*B + b is sample b's bag of table t, positions offsets[k] to
offsets[k+1] of ``indices`` (row numbers local to the table). Output (B, sum D) has table t in columns
[D[0] + ... + D[t-1], ... + D[t]). Empty bags give zeros; "mean" divides by the bag length (0 for an empty
bag); per-sample weights scale each row before pooling (Σ w_p v_p, / L for "mean"). Accumulation is float32.

bounds_check="error": indices, offsets and table_offsets are validated and bad values raise an error naming
them. "ignore": no validation, no device sync; an index outside its table (or whose row would lie outside
``packed``) contributes zero; kernels also clamp offsets into [0, N] so nothing is read out of bounds (with
invalid offsets the result is unspecified but memory-safe; this reference then relies on torch's own checks).

Static shapes (DESIGN.md, Gaudi TPC rules): occurrence -> bag by a cumulative sum of boundary marks, rows
gathered in 16-byte units with ``index_select``, nibbles split with bit ops, pooled with ``index_add_``; no
``unique``, ``nonzero``, boolean masking or ``.item()`` on the path. Value checks run eagerly on CPU/CUDA
tensors only and are skipped while tracing.
"""

from __future__ import annotations

import torch

POOLINGS = ("sum", "mean")
BOUNDS_CHECKS = ("error", "ignore")
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QPARAM_BYTES = 4
ROW_ALIGNMENT = 16
_INDEX_DTYPES = (torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

__all__ = [
    "BOUNDS_CHECKS",
    "POOLINGS",
    "dequantize_int4_rows",
    "int4_embedding_bag",
    "pack_int4_rows",
    "quantize_int4_rows",
    "round_to_fp16",
    "row_bytes",
    "row_qparams",
]


def row_bytes(D: int) -> int:
    """Bytes of one INT4 row of D elements: 4 bytes of fp16 scale and bias, D/2 bytes of codes, padded to 16."""
    return (QPARAM_BYTES + D // 2 + ROW_ALIGNMENT - 1) // ROW_ALIGNMENT * ROW_ALIGNMENT


def check_D(D: int, name: str = "D") -> None:
    if isinstance(D, bool) or not isinstance(D, (int, torch.SymInt)) or D < 2 or D % 2:
        raise ValueError(f"{name} must be an even number >= 2 (two INT4 codes per byte), got {D!r}")


def is_traced(t: torch.Tensor) -> bool:
    """True under torch.compile / export tracing (fake or meta tensors): data cannot be read."""
    return (torch.compiler.is_compiling() or t.device.type == "meta"
            or torch._subclasses.fake_tensor.is_fake(t))


def reads_values(t: torch.Tensor) -> bool:
    """Eager value checks run on CPU and CUDA tensors outside tracing (on HPU they would force a host sync)."""
    return not is_traced(t) and t.device.type in ("cpu", "cuda")


# ------------------------------------------------------------------------------------------ quantization

def round_to_fp16(x: torch.Tensor) -> torch.Tensor:
    """float32 x -> float32 holding fp16(x) (round to nearest even; subnormals; inf past 65504).

    Not ``x.to(torch.float16).to(torch.float32)``: torch.compile's inductor drops such a cast pair inside a
    fused kernel (it keeps the float32 value unless ``emulate_precision_casts`` is set), which changed ~15% of
    the scales a compiled quantize wrote. Rounding to the fp16 ulp of each value's binade is exact float32
    arithmetic no compiler may elide: x / ulp and q * ulp only move the exponent. The ulp is built from x's
    exponent bits (integer ops on a bitcast, which Gaudi runs too; torch.frexp has no HPU kernel)."""
    biased = (x.contiguous().view(torch.int32) >> 23) & 0xFF  # |x| in [2^(e-127), 2^(e-126)): ulp 2^(e-137)
    ulp = ((biased - 10).clamp(min=103) << 23).view(torch.float32)  # 103 = 2^-24, fp16's subnormal step
    r = torch.round(x / ulp) * ulp
    return torch.where(r.abs() > 65504.0, r * float("inf"), r)


def row_qparams(mn: torch.Tensor, mx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (scale, bias, inverse scale), float32 holding fp16 values, from the row minimum and maximum
    (float32), with FBGEMM's corner cases: scale 1 for a constant row (or one whose scale rounds to 0 in
    fp16), and scale = inverse = 1 if 1 / scale overflows."""
    bias = round_to_fp16(mn)
    rng = mx - bias
    one = torch.ones_like(rng)
    # Tensor / tensor on purpose: torch on CUDA divides by a Python scalar as a multiply by its reciprocal,
    # which is 1 ulp off often enough to flip the fp16 rounding of a scale (measured: ~4e-5 of random rows).
    scale = round_to_fp16(torch.where(rng == 0, one, rng / torch.full_like(rng, 15.0)))
    scale = torch.where(scale == 0, one, scale)
    inv = one / scale
    overflow = torch.isinf(inv)
    return torch.where(overflow, one, scale), bias, torch.where(overflow, one, inv)


def quantize_codes(x: torch.Tensor, bias: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (float32) of rows x (N, D) float32 with per-row bias and inverse scale (N,).
    Clamping before rounding equals FBGEMM's clamp(lrintf(.)) for finite inputs; torch.round is half-to-even."""
    return ((x - bias[:, None]) * inv[:, None]).clamp(0.0, 15.0).round()


def pack_int4_rows(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Rows in the INT4 layout from codes q (E, D) (integers 0..15, any dtype), scale (E,) and bias (E,)
    (rounded to fp16 here). Returns (E, row_bytes(D)) uint8 with zero padding."""
    E, D = q.shape
    check_D(D, "q.shape[1]")
    q8 = q.to(torch.uint8)
    data = q8[:, 0::2] | (q8[:, 1::2] << 4)
    qp = torch.stack([scale.to(torch.float16), bias.to(torch.float16)], 1).view(torch.uint8)
    pad = torch.zeros(E, row_bytes(D) - QPARAM_BYTES - D // 2, dtype=torch.uint8, device=q.device)
    return torch.cat([qp, data, pad], 1)


def _check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name} must have shape (E, D), got {tuple(weight.shape)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16, bfloat16 (or float64), got {weight.dtype}")
    check_D(weight.shape[1], f"{name}.shape[1] (D)")


def check_quantize_inputs(weight: torch.Tensor) -> None:
    _check_weight(weight)


def check_dequantize_inputs(packed: torch.Tensor, D: int, dtype: torch.dtype) -> None:
    check_D(D)
    if packed.dim() != 2:
        raise ValueError(f"packed must have shape (E, row_bytes), got {tuple(packed.shape)}")
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8, got {packed.dtype}")
    if packed.shape[1] != row_bytes(D):
        raise ValueError(f"packed has {packed.shape[1]} bytes a row, but rows of D = {D} INT4 codes take "
                         f"row_bytes = {row_bytes(D)} (4 bytes of fp16 scale and bias + D/2, padded to 16)")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32, float16, bfloat16 (or float64), got {dtype}")


def quantize_int4_rows(weight: torch.Tensor) -> torch.Tensor:
    """weight (E, D) float (D even) -> (E, row_bytes(D)) uint8 in FBGEMM's INT4 row layout. Quantization runs
    in float32 (float64 and fp16/bf16 weights are converted first)."""
    check_quantize_inputs(weight)
    x = weight.to(torch.float32)
    if x.shape[0] == 0:
        return torch.zeros(0, row_bytes(x.shape[1]), dtype=torch.uint8, device=x.device)
    scale, bias, inv = row_qparams(x.amin(1), x.amax(1))
    return pack_int4_rows(quantize_codes(x, bias, inv), scale, bias)


def unpack_rows(rows: torch.Tensor, D: int, dtype: torch.dtype) -> torch.Tensor:
    """rows (N, >= 4 + D/2) uint8 -> dequantized (N, D) in ``dtype``: q * scale + bias, computed in float32
    (float64 for a float64 ``dtype``; the product of a code and an fp16 scale is exact in both)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    qp = rows[:, :QPARAM_BYTES].contiguous().view(torch.float16).to(acc)
    data = rows[:, QPARAM_BYTES:QPARAM_BYTES + D // 2]
    q = torch.stack([data & 15, data >> 4], 2).reshape(rows.shape[0], D).to(acc)
    return q * qp[:, 0:1] + qp[:, 1:2]


def dequantize_int4_rows(packed: torch.Tensor, D: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """packed (E, row_bytes(D)) uint8 -> (E, D) ``dtype`` (float32 arithmetic, then rounded to dtype)."""
    check_dequantize_inputs(packed, D, dtype)
    return unpack_rows(packed, D, dtype).to(dtype)


# -------------------------------------------------------------------------------------- batched lookup

def _check_index(t: torch.Tensor, name: str, like: torch.Tensor, like_name: str, shape: str) -> None:
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{like_name} and {name} must be on the same device, got {like.device} and {t.device}")


def check_bag_layout(table: torch.Tensor, table_name: str, indices: torch.Tensor, offsets: torch.Tensor,
                     table_offsets: torch.Tensor | None, pooling: str, per_sample_weights: torch.Tensor | None,
                     bounds_check: str) -> tuple[int, int]:
    """Checks shared by the INT4 and QAT lookups (no data is read); returns (T, B)."""
    _check_index(indices, "indices", table, table_name, "(N,)")
    _check_index(offsets, "offsets", table, table_name, "(T*B + 1,)")
    if offsets.shape[0] < 1:
        raise ValueError("offsets must have T*B + 1 elements (at least one), got none")
    T = 1
    if table_offsets is not None:
        _check_index(table_offsets, "table_offsets", table, table_name, "(T + 1,)")
        T = table_offsets.shape[0] - 1
        if T < 1:
            raise ValueError(f"table_offsets must have shape (T + 1,) with T >= 1, got {tuple(table_offsets.shape)}")
    if (offsets.shape[0] - 1) % T:
        raise ValueError(f"offsets must have T*B + 1 elements for T = {T} tables, got {offsets.shape[0]}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
    if bounds_check not in BOUNDS_CHECKS:
        raise ValueError(f"bounds_check must be 'error' or 'ignore', got {bounds_check!r}")
    if per_sample_weights is not None:
        if per_sample_weights.dim() != 1 or per_sample_weights.shape[0] != indices.shape[0]:
            raise ValueError(f"per_sample_weights must have shape (N,) = ({indices.shape[0]},), "
                             f"got {tuple(per_sample_weights.shape)}")
        if per_sample_weights.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"per_sample_weights must be float32 (or float64), got {per_sample_weights.dtype}")
        if per_sample_weights.device != table.device:
            raise ValueError(f"{table_name} and per_sample_weights must be on the same device, "
                             f"got {table.device} and {per_sample_weights.device}")
    return T, (offsets.shape[0] - 1) // T


def check_bag_inputs(packed: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, D: list[int],
                     table_offsets: torch.Tensor | None, pooling: str, per_sample_weights: torch.Tensor | None,
                     output_dtype: torch.dtype, bounds_check: str) -> tuple[int, int]:
    """Shapes, dtypes and devices of int4_embedding_bag (no data is read); returns (T, B)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8 INT4 rows, got {packed.dtype}")
    if packed.dim() not in (1, 2):
        raise ValueError(f"packed must have shape (E, row_bytes) or (total_bytes,), got {tuple(packed.shape)}")
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous (a table is never copied)")
    T, B = check_bag_layout(packed, "packed", indices, offsets, table_offsets, pooling, per_sample_weights,
                            bounds_check)
    if len(D) != T:
        raise ValueError(f"D must give one dimension per table: {T} tables, got {len(D)} dims {list(D)}")
    for t, d in enumerate(D):
        check_D(d, f"D[{t}]")
    if packed.dim() == 2:
        if len(set(D)) != 1:
            raise ValueError(f"packed (E, row_bytes) holds tables of one D; for dims {list(D)} pass the tables "
                             "back to back as a flat (total_bytes,) uint8 tensor")
        if packed.shape[1] != row_bytes(D[0]):
            raise ValueError(f"packed has {packed.shape[1]} bytes a row, but rows of D = {D[0]} INT4 codes take "
                             f"row_bytes = {row_bytes(D[0])} (4 bytes of fp16 scale and bias + D/2, padded to 16)")
    if output_dtype not in OUTPUT_DTYPES + (torch.float64,):
        raise ValueError(f"output_dtype must be float32, float16 or bfloat16, got {output_dtype}")
    return T, B


def table_rows(table: torch.Tensor, table_offsets: torch.Tensor | None, default_rows: int) -> torch.Tensor:
    """(T,) int64 row counts of the tables (negative counts, from bad table_offsets, become 0)."""
    if table_offsets is None:
        return torch.full((1,), default_rows, dtype=torch.int64, device=table.device)
    to = table_offsets.to(torch.int64)
    return (to[1:] - to[:-1]).clamp(min=0)


def packed_rows_if_one_table(packed: torch.Tensor, D: list[int]) -> int:
    return packed.shape[0] if packed.dim() == 2 else packed.numel() // row_bytes(D[0])


def check_offsets_values(offsets: torch.Tensor, N: int) -> None:
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != N:
        raise ValueError(f"offsets must start at 0 and end at N = {N} (the number of indices), "
                         f"got {first} and {last}")
    steps = offsets[1:] - offsets[:-1]
    if steps.numel() and bool((steps < 0).any()):
        k = int(torch.argmax((steps < 0).to(torch.int8)))
        raise ValueError(f"offsets must be non-decreasing, got {int(offsets[k])} then {int(offsets[k + 1])} at bag {k}")


def check_table_offsets_values(table_offsets: torch.Tensor | None, capacity: int, what: str) -> None:
    """table_offsets start at 0, never decrease and end within ``capacity`` rows."""
    if table_offsets is None:
        return
    to = table_offsets.tolist()
    if to[0] != 0:
        raise ValueError(f"table_offsets must start at 0, got {to[0]}")
    for t in range(len(to) - 1):
        if to[t] > to[t + 1]:
            raise ValueError(f"table_offsets must be non-decreasing, got {to[t]} then {to[t + 1]} at table {t}")
    if to[-1] > capacity:
        raise ValueError(f"table_offsets end at row {to[-1]}, past the {capacity} rows of {what}")


def check_indices_values(indices: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor, B: int) -> None:
    """Every index within its table's rows (offsets already valid)."""
    N = indices.shape[0]
    if N == 0:
        return
    table = torch.div(bag_ids(offsets, N), max(B, 1), rounding_mode="floor")
    limit = rows.index_select(0, table)
    bad = (indices < 0) | (indices.to(torch.int64) >= limit)
    if bool(bad.any()):
        p = int(torch.argmax(bad.to(torch.int8)))
        raise ValueError(f"indices[{p}] = {int(indices[p])} is out of range for table {int(table[p])} "
                         f"with {int(limit[p])} rows")


def check_bag_values(packed: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, D: list[int],
                     table_offsets: torch.Tensor | None, B: int) -> None:
    """bounds_check="error": table_offsets, offsets and indices against the data (reads data: eager only)."""
    if table_offsets is not None:
        check_table_offsets_values(table_offsets, 1 << 62, "packed")
        rows = table_rows(packed, table_offsets, 0).tolist()
        need = sum(r * row_bytes(d) for r, d in zip(rows, D))
        if need > packed.numel():
            raise ValueError(f"table_offsets describe {need} bytes of INT4 rows (dims {list(D)}), but packed "
                             f"holds {packed.numel()}")
    check_offsets_values(offsets, indices.shape[0])
    check_indices_values(indices, offsets, table_rows(packed, table_offsets, packed_rows_if_one_table(packed, D)), B)


def bag_ids(offsets: torch.Tensor, N: int) -> torch.Tensor:
    """(N,) int64 bag of each occurrence for valid offsets (offsets[0] = 0, offsets[-1] = N): each inner
    bag boundary marks a position and a cumulative sum counts the marks (static shapes)."""
    marks = torch.zeros(N + 1, dtype=torch.int64, device=offsets.device)
    inner = offsets[1:-1].to(torch.int64)
    marks.index_add_(0, inner, torch.ones_like(inner))
    return torch.cumsum(marks[:N], 0)


def pool(vals: torch.Tensor, keep: torch.Tensor, bag: torch.Tensor, offsets: torch.Tensor,
         per_sample_weights: torch.Tensor | None, pooling: str, T: int, B: int, D: list[int],
         output_dtype: torch.dtype) -> torch.Tensor:
    """Shared by the INT4 and QAT references: vals (N, Dmax) dequantized rows (columns past a table's D are
    ignored), keep (N,) bool occurrences that count, bag (N,) their bag -> (B, sum D) in output_dtype."""
    acc = vals.dtype
    Dmax = vals.shape[1]
    if per_sample_weights is not None:
        vals = per_sample_weights.to(acc)[:, None] * vals
    vals = torch.where(keep[:, None], vals, torch.zeros((), dtype=acc, device=vals.device))
    pooled = torch.zeros(T * B, Dmax, dtype=acc, device=vals.device).index_add_(0, bag, vals)
    if pooling == "mean":
        lengths = (offsets[1:] - offsets[:-1]).to(acc)
        pooled = pooled / lengths.clamp(min=1)[:, None]
    pooled = pooled.reshape(T, B, Dmax)
    out = torch.cat([pooled[t, :, :d] for t, d in enumerate(D)], 1) if T > 1 else pooled[0, :, :D[0]]
    return out.to(output_dtype)


def int4_embedding_bag(packed: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, D: list[int],
                       table_offsets: torch.Tensor | None = None, pooling: str = "sum",
                       per_sample_weights: torch.Tensor | None = None, output_dtype: torch.dtype = torch.float32,
                       bounds_check: str = "error") -> torch.Tensor:
    """packed INT4 rows, indices (N,), offsets (T*B + 1,), D (T,) dims -> (B, sum D) in output_dtype
    (float64 too: the test oracle, which dequantizes and pools in float64)."""
    D = list(D)
    T, B = check_bag_inputs(packed, indices, offsets, D, table_offsets, pooling, per_sample_weights,
                            output_dtype, bounds_check)
    if bounds_check == "error" and reads_values(indices):
        check_bag_values(packed, indices, offsets, D, table_offsets, B)
    N, dev = indices.shape[0], packed.device
    acc = torch.float64 if output_dtype == torch.float64 else torch.float32
    rb = [row_bytes(d) for d in D]
    Dmax, RBmax = max(D), max(rb)
    bag = bag_ids(offsets, N)
    table = torch.div(bag, max(B, 1), rounding_mode="floor")
    rows_t = table_rows(packed, table_offsets, packed_rows_if_one_table(packed, D))
    rb_t = torch.tensor(rb, dtype=torch.int64, device=dev)
    base_t = torch.cumsum(rows_t * rb_t, 0) - rows_t * rb_t  # byte where each table starts
    occ_rb, occ_base = rb_t.index_select(0, table), base_t.index_select(0, table)
    idx = indices.to(torch.int64)
    # An occurrence counts when its row lies inside its table and inside packed (memory safety for "ignore").
    keep = (idx >= 0) & (idx < rows_t.index_select(0, table)) & (occ_base + (idx + 1) * occ_rb <= packed.numel())
    start = occ_base + torch.where(keep, idx, torch.zeros_like(idx)) * occ_rb
    # Gather whole rows as 16-byte units (rows and tables start on 16-byte boundaries).
    units = packed.reshape(-1)[: packed.numel() // ROW_ALIGNMENT * ROW_ALIGNMENT].reshape(-1, ROW_ALIGNMENT)
    n_units = RBmax // ROW_ALIGNMENT
    pos = (start // ROW_ALIGNMENT)[:, None] + torch.arange(n_units, device=dev)[None, :]
    pos = pos.clamp(max=max(units.shape[0] - 1, 0))
    if units.shape[0] == 0:  # nothing stored: every occurrence is out of range
        rows = torch.zeros(N, RBmax, dtype=torch.uint8, device=dev)
    else:
        rows = units.index_select(0, pos.reshape(-1)).reshape(N, RBmax)
    vals = unpack_rows(rows, Dmax, acc)
    return pool(vals, keep, bag, offsets, per_sample_weights, pooling, T, B, D, output_dtype)
