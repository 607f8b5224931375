"""Hypothesis strategies for the INT4 and QAT embedding-bag ops. Every value a strategy draws is used by the
case it builds; ``inputs(device)`` materialises the same tensors every call (from the case's seed).

Tables: T = 1-4 of different row counts and even dims (2 to 512, with the small and odd-multiple edges),
rows of very different magnitudes per table (so per-row scales differ by orders of magnitude), some constant
rows (scale 1 corner case). Bags: B from 0, lengths 0-40 (or at most 1), indices uniform, all on one row, or
half on one row; sum/mean pooling, with and without per-sample weights; int32/int64 indices and offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from recsys_kernels.reference.int4_embedding_bag import quantize_int4_rows

OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATTERNS = ("uniform", "all_equal", "half_on_one")
EDGE_DIMS = (2, 4, 6, 8, 30, 64, 128, 130, 512)


def _rows(pattern: str, n: int, num_rows: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, num_rows, (n,), generator=g)
    if pattern == "all_equal" and n:
        idx[:] = idx[0]
    elif pattern == "half_on_one" and n:
        hot = torch.randperm(n, generator=g)[: n // 2 + 1]
        idx[hot] = torch.randint(0, num_rows, (1,), generator=g)
    return idx


def random_table(E: int, D: int, g: torch.Generator) -> torch.Tensor:
    """(E, D) float32 rows with magnitudes spread over 1e-3..1e2, an offset row and a constant row."""
    w = torch.randn(E, D, generator=g, dtype=torch.float64)
    w = w * torch.pow(10.0, torch.empty(E, 1, dtype=torch.float64).uniform_(-3, 2, generator=g))
    if E > 1:
        w[1] += 50.0  # rows far from 0: bias dominates
    if E > 2:
        w[2] = 0.25  # constant row: scale 1
    return w.to(torch.float32)


@dataclass(frozen=True)
class BagCase:
    """T tables (rows[t] x dims[t]), B samples, bag lengths (T*B, table-major)."""

    rows: tuple[int, ...]
    dims: tuple[int, ...]
    B: int
    lengths: tuple[int, ...]
    pattern: str
    pooling: str
    per_sample_weights: bool
    pass_table_offsets: bool
    flat: bool  # packed as a flat byte tensor even though the dims agree
    index_dtype: torch.dtype
    offsets_dtype: torch.dtype
    output_dtype: torch.dtype
    seed: int

    @property
    def T(self) -> int:
        return len(self.rows)

    @property
    def N(self) -> int:
        return sum(self.lengths)

    def tables(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return [random_table(E, D, g) for E, D in zip(self.rows, self.dims)]

    def bags(self, device: str) -> dict:
        """indices (local to their table), offsets, table_offsets (None when not passed), per_sample_weights."""
        g = torch.Generator().manual_seed(self.seed + 1)
        parts = [_rows(self.pattern, n, self.rows[k // self.B], g) for k, n in enumerate(self.lengths)]
        indices = (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)).to(device, self.index_dtype)
        offsets = torch.tensor([0, *torch.tensor(self.lengths, dtype=torch.int64).cumsum(0).tolist()],
                               dtype=self.offsets_dtype, device=device)
        table_offsets = None
        if self.pass_table_offsets:
            table_offsets = torch.tensor([0, *torch.tensor(self.rows).cumsum(0).tolist()], dtype=self.offsets_dtype,
                                         device=device)
        psw = torch.rand(self.N, generator=g).to(device) if self.per_sample_weights else None
        return dict(indices=indices, offsets=offsets, table_offsets=table_offsets, per_sample_weights=psw)

    def packed(self, device: str) -> torch.Tensor:
        tables = [quantize_int4_rows(w) for w in self.tables()]
        if self.flat or len(set(self.dims)) > 1:
            return torch.cat([x.reshape(-1) for x in tables]).to(device)
        return torch.cat(tables, 0).to(device)

    def kwargs(self, device: str) -> dict:
        bags = self.bags(device)
        return dict(D=list(self.dims), table_offsets=bags["table_offsets"], pooling=self.pooling,
                    per_sample_weights=bags["per_sample_weights"], output_dtype=self.output_dtype)


@st.composite
def bag_cases(draw, max_tables: int = 4, max_batch: int = 4, max_rows: int = 50, max_len: int = 40,
              dims=EDGE_DIMS, one_dim: bool = False, output_dtypes=OUTPUT_DTYPES) -> BagCase:
    T = draw(st.integers(1, max_tables))
    B = draw(st.integers(0, max_batch))
    cap = draw(st.sampled_from([1, max_len]))
    lengths = tuple(draw(st.lists(st.integers(0, cap), min_size=T * B, max_size=T * B)))
    dim_strategy = st.one_of(st.sampled_from(dims), st.integers(1, max(dims) // 2).map(lambda h: 2 * h))
    if one_dim:
        dims_t = (draw(dim_strategy),) * T
    else:
        dims_t = tuple(draw(st.lists(dim_strategy, min_size=T, max_size=T)))
    pooling = draw(st.sampled_from(["sum", "mean"]))
    return BagCase(
        rows=tuple(draw(st.lists(st.integers(1, max_rows), min_size=T, max_size=T))),
        dims=dims_t,
        B=B,
        lengths=lengths,
        pattern=draw(st.sampled_from(PATTERNS)),
        pooling=pooling,
        per_sample_weights=draw(st.booleans()),
        pass_table_offsets=T > 1 or draw(st.booleans()),
        flat=draw(st.booleans()),
        index_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        offsets_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        output_dtype=draw(st.sampled_from(output_dtypes)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def table_cases(draw, max_rows: int = 40, dims=EDGE_DIMS) -> tuple[int, int, int]:
    """(E, D, seed) for quantize / dequantize."""
    D = draw(st.one_of(st.sampled_from(dims), st.integers(1, 256).map(lambda h: 2 * h)))
    return draw(st.integers(0, max_rows)), D, draw(st.integers(0, 2**31 - 1))
