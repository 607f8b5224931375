"""INT4 embedding tables in FBGEMM's TBE row layout: quantize, dequantize, and the batched pooled lookup.

    quantize_int4_rows(weight: (E, D) float) -> (E, row_bytes(D)) uint8
    dequantize_int4_rows(packed: (E, row_bytes(D)) uint8, D: int, dtype=float32) -> (E, D)
    int4_embedding_bag(packed, indices: (N,) int32|int64, offsets: (T*B + 1,) int32|int64, *,
                       D: int | (T,) ints, table_offsets: (T + 1,) rows | None = None, pooling="sum"|"mean",
                       per_sample_weights: (N,) float32 | None = None, output_dtype=float32|float16|bfloat16,
                       bounds_check="error"|"ignore") -> (B, sum of D)
    concat_int4_tables([(E_t, row_bytes(D_t)) uint8, ...]) -> (packed (total_bytes,) uint8, table_offsets (T+1,))

Row: [fp16 scale][fp16 bias][D/2 bytes: element 2k low nibble, 2k+1 high nibble of byte k][zeros to a multiple
of 16 bytes]; value = q * scale + bias, q in 0..15. This is FBGEMM's IntNBitTableBatchedEmbeddingBagsCodegen
INT4 row (row_alignment 16; ``split_embedding_weights(split_scale_shifts=False)[t][0]`` is table t in this
layout) and quantize_int4_rows writes the same bytes as torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf
(which puts scale and bias at the row's end instead). D must be even.

Lookup: T tables lie back to back in ``packed`` — a (E, row_bytes) tensor when all tables share D, else a flat
uint8 tensor (concat_int4_tables builds it) — with table_offsets[t] the first row of table t (None: one table).
``offsets`` is table-major as in FBGEMM: bag t*B + b holds sample b's indices (local to table t) at positions
offsets[t*B + b] to offsets[t*B + b + 1]. Output columns: table t's D[t] columns after the previous tables'.
Empty bags give zeros ("mean" too); per_sample_weights scale rows before pooling (also with "mean": Σ w v / L).
Dequantization and accumulation are float32; the output is rounded once to output_dtype.

bounds_check="error" validates indices (each within its table), offsets (0 to N, non-decreasing) and
table_offsets, raising an error that names the argument; the CUDA and Triton kernels flag bad input on the
device and the host reads the flag once (one sync per call). "ignore" skips validation and the sync: an
out-of-range index contributes zero; kernels clamp offsets into [0, N] (invalid offsets give unspecified but
memory-safe results). Not differentiable (inference tables; train with qat_embedding_bag).

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/int4_embedding_bag/int4_embedding_bag_cuda.cu  — a thread a 16-byte unit of a row, 32 warps an SM
  triton    recsys_kernels/triton/int4_embedding_bag.py
  cpu       csrc/int4_embedding_bag/int4_embedding_bag_cpu.cpp  — parallel over bags
  reference recsys_kernels/reference/int4_embedding_bag.py       — plain torch ops; the HPU path
Registered ops: torch.ops.recsys.{quantize_int4_rows, dequantize_int4_rows, int4_embedding_bag} and their
``_triton`` twins.
"""

from __future__ import annotations

from typing import Sequence

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import int4_embedding_bag as reference
from recsys_kernels.reference.int4_embedding_bag import row_bytes

__all__ = ["concat_int4_tables", "dequantize_int4_rows", "int4_embedding_bag", "quantize_int4_rows", "row_bytes"]


def quantize_int4_rows(weight: torch.Tensor) -> torch.Tensor:
    """weight (E, D) float32|float16|bfloat16 (float64 rounded to float32), D even -> (E, row_bytes(D)) uint8."""
    backend = _backend.choose("quantize_int4_rows", weight.device)
    if backend == "reference":
        return reference.quantize_int4_rows(weight)
    if backend == "triton":
        return torch.ops.recsys.quantize_int4_rows_triton(weight)
    return torch.ops.recsys.quantize_int4_rows(weight)


def dequantize_int4_rows(packed: torch.Tensor, D: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """packed (E, row_bytes(D)) uint8 -> (E, D) in dtype (q * scale + bias in float32, rounded once)."""
    backend = _backend.choose("dequantize_int4_rows", packed.device)
    if backend == "reference":
        return reference.dequantize_int4_rows(packed, D, dtype)
    if backend == "triton":
        return torch.ops.recsys.dequantize_int4_rows_triton(packed, D, dtype)
    return torch.ops.recsys.dequantize_int4_rows(packed, D, dtype)


def table_dims(D: int | Sequence[int], table_offsets: torch.Tensor | None) -> list[int]:
    """D as one dimension per table (an int is repeated for every table of table_offsets)."""
    if isinstance(D, int) and not isinstance(D, bool):
        return [D] * (1 if table_offsets is None else max(table_offsets.shape[0] - 1, 1))
    return [int(d) for d in D]


def int4_embedding_bag(packed: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, *,
                       D: int | Sequence[int], table_offsets: torch.Tensor | None = None, pooling: str = "sum",
                       per_sample_weights: torch.Tensor | None = None, output_dtype: torch.dtype = torch.float32,
                       bounds_check: str = "error") -> torch.Tensor:
    """Pooled lookup of T INT4 tables in one launch -> (B, sum of D) in output_dtype (see the module docstring)."""
    dims = table_dims(D, table_offsets)
    args = (packed, indices, offsets, dims, table_offsets, pooling, per_sample_weights, output_dtype, bounds_check)
    backend = _backend.choose("int4_embedding_bag", packed.device)
    if backend == "reference":
        if output_dtype == torch.float64:
            raise ValueError("output_dtype must be float32, float16 or bfloat16, got torch.float64")
        return reference.int4_embedding_bag(*args)
    if backend == "triton":
        return torch.ops.recsys.int4_embedding_bag_triton(*args)
    return torch.ops.recsys.int4_embedding_bag(*args)


def concat_int4_tables(tables: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 tables (E_t, row_bytes(D_t)) uint8 -> (packed (sum E_t * row_bytes(D_t),) uint8 back to back,
    table_offsets (T + 1,) int64), the storage int4_embedding_bag reads with D = [D_0, ...]."""
    if not tables:
        raise ValueError("tables must hold at least one (E, row_bytes) uint8 table")
    for t, x in enumerate(tables):
        if x.dim() != 2 or x.dtype != torch.uint8 or x.shape[1] % reference.ROW_ALIGNMENT:
            raise ValueError(f"tables[{t}] must be (E, row_bytes) uint8 INT4 rows, got {tuple(x.shape)} {x.dtype}")
    starts = [0]
    for x in tables:
        starts.append(starts[-1] + x.shape[0])
    packed = torch.cat([x.reshape(-1) for x in tables])
    return packed, torch.tensor(starts, dtype=torch.int64, device=packed.device)


def _fake_quantize(weight):
    reference.check_quantize_inputs(weight)
    return weight.new_empty((weight.shape[0], row_bytes(weight.shape[1])), dtype=torch.uint8)


def _fake_dequantize(packed, D, dtype):
    reference.check_dequantize_inputs(packed, D, dtype)
    return packed.new_empty((packed.shape[0], D), dtype=dtype)


def _fake_bag(packed, indices, offsets, D, table_offsets, pooling, per_sample_weights, output_dtype, bounds_check):
    T, B = reference.check_bag_inputs(packed, indices, offsets, list(D), table_offsets, pooling, per_sample_weights,
                                      output_dtype, bounds_check)
    return packed.new_empty((B, sum(D)), dtype=output_dtype)


if _backend.EXTENSION_LOADED:
    torch.library.register_fake("recsys::quantize_int4_rows")(_fake_quantize)
    torch.library.register_fake("recsys::dequantize_int4_rows")(_fake_dequantize)
    torch.library.register_fake("recsys::int4_embedding_bag")(_fake_bag)
