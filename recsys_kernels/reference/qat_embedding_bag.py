"""Quantization-aware-training embedding bags, reference implementation (also the HPU path and the oracle).

Forward: every looked-up row of the float32 master weight is fake-quantized to INT4 and the dequantized
values are pooled exactly as int4_embedding_bag pools stored rows (DQRM, Zhou et al. 2023):

  "row"   per-row asymmetric, the INT4 storage format's own arithmetic (reference/int4_embedding_bag.py):
          bias = fp16(min), scale = fp16((max - bias) / 15), q = clamp(rint((w - bias) / scale), 0, 15),
          value = q * scale + bias;
  "table" per-table symmetric with the scale s_t given in ``table_scale`` (T,) (DQRM: max|W_t| / 7, refreshed
          every k steps by the module): s = fp16(s_t), q = clamp(rint(w * (1 / s)), -8, 7), value = q * s
          (s = 0 gives 0). Stored as INT4 rows with scale s and bias -8 s, codes q + 8.

Scales are rounded to fp16 and codes computed in float32 in both modes, so ``to_int4`` tables reproduce the
forward exactly. A float64 weight (test oracle) is rounded to float32 for the quantization and pooled in
float64.

Backward (straight-through estimator): each occurrence p of bag t*B + b gets the gradient row
grad_output[b, t*D:(t+1)*D] * per_sample_weights[p] (/ bag length for "mean"); the weight's gradient is the
sparse COO tensor of those N rows at rows table_offsets[t] + indices[p] (uncoalesced) — never a dense (E, D)
tensor. Occurrences outside their table (bounds_check="ignore") get a zero row at row 0.

Layout, pooling, bounds checks and static-shape rules are those of reference/int4_embedding_bag.py; all T
tables share one D here (weight (E, D) holds them back to back at table_offsets).
"""

from __future__ import annotations

import torch

from recsys_kernels.reference.int4_embedding_bag import (
    bag_ids,
    check_bag_layout,
    check_indices_values,
    check_offsets_values,
    check_table_offsets_values,
    pool,
    quantize_codes,
    reads_values,
    round_to_fp16,
    row_qparams,
    table_rows,
)

QPARAMS = ("row", "table")
_WEIGHT_DTYPES = (torch.float32, torch.float64)

__all__ = ["QPARAMS", "fake_quantize", "qat_embedding_bag", "qat_embedding_bag_backward", "table_int4_rows",
           "table_scales"]


def check_inputs(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                 table_offsets: torch.Tensor | None, pooling: str, per_sample_weights: torch.Tensor | None,
                 qparams: str, table_scale: torch.Tensor | None, bounds_check: str) -> tuple[int, int]:
    """Shapes, dtypes and devices of qat_embedding_bag (no data is read); returns (T, B)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (E, D), got {tuple(weight.shape)}")
    if weight.dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"weight must be float32 (float64 for tests), got {weight.dtype}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one row, got {tuple(weight.shape)}")
    if weight.shape[1] < 2 or weight.shape[1] % 2:
        raise ValueError(f"weight's D must be an even number >= 2 (INT4 rows pack two codes a byte), "
                         f"got D = {weight.shape[1]}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (a table is never copied)")
    T, B = check_bag_layout(weight, "weight", indices, offsets, table_offsets, pooling, per_sample_weights,
                            bounds_check)
    if qparams not in QPARAMS:
        raise ValueError(f"qparams must be 'row' or 'table', got {qparams!r}")
    if qparams == "table":
        if table_scale is None:
            raise ValueError("table_scale (T,) float32 is required with qparams='table'")
        if table_scale.dim() != 1 or table_scale.shape[0] != T:
            raise ValueError(f"table_scale must have shape (T,) = ({T},), got {tuple(table_scale.shape)}")
        if table_scale.dtype != torch.float32:
            raise ValueError(f"table_scale must be float32, got {table_scale.dtype}")
        if table_scale.device != weight.device:
            raise ValueError(f"weight and table_scale must be on the same device, got {weight.device} and "
                             f"{table_scale.device}")
    return T, B


def check_backward_inputs(grad_output: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                          table_offsets: torch.Tensor | None, pooling: str,
                          per_sample_weights: torch.Tensor | None, num_rows: int) -> tuple[int, int, int]:
    """Shapes of qat_embedding_bag_backward; returns (T, B, D)."""
    if grad_output.dim() != 2:
        raise ValueError(f"grad_output must have shape (B, T*D), got {tuple(grad_output.shape)}")
    if grad_output.dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"grad_output must be float32 (or float64), got {grad_output.dtype}")
    T, B = check_bag_layout(grad_output, "grad_output", indices, offsets, table_offsets, pooling,
                            per_sample_weights, "error")
    if grad_output.shape[0] != B or grad_output.shape[1] % T or grad_output.shape[1] // T < 2:
        raise ValueError(f"grad_output must have shape (B, T*D) = ({B}, {T}*D), got {tuple(grad_output.shape)}")
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    return T, B, grad_output.shape[1] // T


def check_values(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                 table_offsets: torch.Tensor | None, B: int) -> None:
    """bounds_check="error": table_offsets, offsets and indices against the data (eager only)."""
    E = weight.shape[0]
    check_table_offsets_values(table_offsets, E, "weight")
    check_offsets_values(offsets, indices.shape[0])
    check_indices_values(indices, offsets, table_rows(weight, table_offsets, E), B)


def table_scales(weight: torch.Tensor, table_offsets: torch.Tensor | None, T: int) -> torch.Tensor:
    """(T,) float32 DQRM table scales max|W_t| / 7 (reads every row: the module refreshes them every k steps).
    Static shapes: rows are tagged with their table by a cumulative sum and reduced with scatter_reduce."""
    a = weight.detach().abs().amax(1).to(torch.float32)
    if table_offsets is None:
        return (a.amax().reshape(1) if a.numel() else a.new_zeros(1)) / 7.0
    marks = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
    inner = table_offsets[1:-1].to(torch.int64).clamp(0, weight.shape[0])
    marks.index_add_(0, inner, torch.ones_like(inner))
    table = torch.cumsum(marks[:-1], 0).clamp(max=T - 1)
    out = torch.zeros(T, dtype=torch.float32, device=weight.device)
    return out.scatter_reduce(0, table, a, reduce="amax") / 7.0


def fake_quantize(x: torch.Tensor, qparams: str, scale: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows x (N, D) float32 -> their INT4 fake-quantized values in ``dtype``. Scales, biases and codes are
    computed in float32; q * scale + bias is evaluated in ``dtype`` (float32: as the kernels and the INT4
    lookup; float64: exactly). ``scale`` (N,) float32: the table scale of each row (qparams="table")."""
    if qparams == "row":
        s, bias, inv = row_qparams(x.amin(1), x.amax(1))
        q = quantize_codes(x, bias, inv)
        return q.to(dtype) * s.to(dtype)[:, None] + bias.to(dtype)[:, None]
    s = round_to_fp16(scale.to(torch.float32))
    inv = torch.where(s == 0, torch.zeros_like(s), torch.ones_like(s) / s)  # true division (see row_qparams)
    return (x * inv[:, None]).clamp(-8.0, 7.0).round().to(dtype) * s.to(dtype)[:, None]


def _occurrences(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                 table_offsets: torch.Tensor | None, B: int):
    """(bag, table, keep, global row) of every occurrence; keep: the row lies in its table and in weight."""
    N, E = indices.shape[0], weight.shape[0]
    bag = bag_ids(offsets, N)
    table = torch.div(bag, max(B, 1), rounding_mode="floor")
    idx = indices.to(torch.int64)
    rows = table_rows(weight, table_offsets, E).index_select(0, table)
    start = (torch.zeros_like(idx) if table_offsets is None
             else table_offsets.to(torch.int64).index_select(0, table))
    glob = start + idx
    keep = (idx >= 0) & (idx < rows) & (glob >= 0) & (glob < E)
    return bag, table, keep, torch.where(keep, glob, torch.zeros_like(glob))


def qat_embedding_bag(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                      table_offsets: torch.Tensor | None = None, pooling: str = "sum",
                      per_sample_weights: torch.Tensor | None = None, qparams: str = "row",
                      table_scale: torch.Tensor | None = None, bounds_check: str = "error") -> torch.Tensor:
    """weight (E, D) float32, indices (N,), offsets (T*B + 1,) -> (B, T*D) in weight's dtype: the pooled
    INT4-fake-quantized rows (no autograd here; recsys_kernels.ops.qat_embedding_bag adds the STE backward)."""
    T, B = check_inputs(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                        table_scale, bounds_check)
    if bounds_check == "error" and reads_values(indices):
        check_values(weight, indices, offsets, table_offsets, B)
    D = weight.shape[1]
    bag, table, keep, rows = _occurrences(weight, indices, offsets, table_offsets, B)
    x = weight.detach().index_select(0, rows).to(torch.float32)
    scale = table_scale.index_select(0, table) if qparams == "table" else None
    vals = fake_quantize(x, qparams, scale, weight.dtype)
    return pool(vals, keep, bag, offsets, per_sample_weights, pooling, T, B, [D] * T, weight.dtype)


def qat_embedding_bag_backward(grad_output: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                               table_offsets: torch.Tensor | None, pooling: str,
                               per_sample_weights: torch.Tensor | None,
                               num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through gradient: grad_output (B, T*D) -> (rows (N,) int64 into weight, grad_rows (N, D) in
    grad_output's dtype), one row per occurrence; ``num_rows`` is weight's E (rows outside it get zeros)."""
    T, B, D = check_backward_inputs(grad_output, indices, offsets, table_offsets, pooling, per_sample_weights,
                                    num_rows)
    N = indices.shape[0]
    bag, table, keep, rows = _occurrences(grad_output.new_empty(num_rows, 0), indices, offsets, table_offsets, B)
    b = bag - table * B
    g = grad_output.reshape(B * T, D).index_select(0, b * T + table)
    if per_sample_weights is not None:
        g = g * per_sample_weights.to(g.dtype)[:, None]
    if pooling == "mean":
        lengths = (offsets[1:] - offsets[:-1]).to(g.dtype).clamp(min=1)
        g = g / lengths.index_select(0, bag)[:, None]
    g = torch.where(keep[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
    return rows, g.reshape(N, D)


def table_int4_rows(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """INT4 rows (E, row_bytes(D)) holding exactly the "table"-mode fake-quantized values of weight (E, D) for
    the table scale ``scale`` (a 0-d or (1,) float32 tensor): codes q + 8 in 0..15, row scale s = fp16(scale),
    row bias -8 s, so that (q + 8) * s + (-8 s) = q * s exactly."""
    from recsys_kernels.reference.int4_embedding_bag import pack_int4_rows

    x = weight.detach().to(torch.float32)
    s = round_to_fp16(scale.reshape(1).to(torch.float32))
    inv = torch.where(s == 0, torch.zeros_like(s), torch.ones_like(s) / s)  # true division (see row_qparams)
    q = (x * inv).clamp(-8.0, 7.0).round() + 8.0
    E = x.shape[0]
    return pack_int4_rows(q, s.expand(E), (-8.0 * s).expand(E))
