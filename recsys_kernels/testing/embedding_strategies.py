"""Hypothesis strategies and comparison helpers for the embedding-table ops (row-wise Adagrad, fused
embedding-bag backward). Every value a strategy draws is used by the case it builds.

Cases hold sizes and a seed; ``inputs(device)`` materialises the tensors (the same values every call), so a
test can build the low-precision inputs for a kernel and their float64 twins for the exact reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WEIGHT_DECAY_MODES = ("none", "l2", "decoupled")
# How occurrences pick rows: uniformly, all on one row, half of them on one row (the rest uniform).
PATTERNS = ("uniform", "all_equal", "half_on_one")


def _rows(pattern: str, n: int, num_rows: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, num_rows, (n,), generator=g)
    if pattern == "all_equal":
        idx[:] = idx[0] if n else 0
    elif pattern == "half_on_one" and n:
        hot = torch.randperm(n, generator=g)[: n // 2 + 1]
        idx[hot] = torch.randint(0, num_rows, (1,), generator=g)
    return idx


def _momentum(E: int, init: str, g: torch.Generator) -> torch.Tensor:
    return torch.zeros(E, dtype=torch.float64) if init == "zero" else torch.rand(E, generator=g, dtype=torch.float64)


@dataclass(frozen=True)
class RowwiseAdagradCase:
    """One rowwise_adagrad_update_ call: weight (E, D), N occurrences chosen by ``pattern``."""

    E: int
    D: int
    N: int
    pattern: str
    dtype: torch.dtype
    grad_in_float32: bool
    index_dtype: torch.dtype
    weight_decay_mode: str
    lr: float
    eps: float
    weight_decay: float
    momentum_init: str
    seed: int

    @property
    def grad_dtype(self) -> torch.dtype:
        return torch.float32 if self.grad_in_float32 else self.dtype

    @property
    def hyper(self) -> dict:
        return dict(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, weight_decay_mode=self.weight_decay_mode)

    def inputs(self, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """weight (E, D) dtype, momentum (E,) float32, indices (N,), grad_rows (N, D) grad_dtype."""
        g = torch.Generator().manual_seed(self.seed)
        weight = (0.5 * torch.randn(self.E, self.D, generator=g, dtype=torch.float64)).to(device, self.dtype)
        momentum = _momentum(self.E, self.momentum_init, g).to(device, torch.float32)
        indices = _rows(self.pattern, self.N, self.E, g).to(device, self.index_dtype)
        grad = torch.randn(self.N, self.D, generator=g, dtype=torch.float64).to(device, self.grad_dtype)
        return weight, momentum, indices, grad


@st.composite
def rowwise_adagrad_cases(draw, max_rows: int = 40, max_dim: int = 40, max_n: int = 64,
                          dtypes=WEIGHT_DTYPES) -> RowwiseAdagradCase:
    """E from 1, D from 1 (odd, and multiples of 4 for the vector paths), N from 0 (empty batch), heavy
    duplication (all equal, half on one row), every weight-decay mode and weight dtype."""
    edge_d = [d for d in (4, 8, 33) if d <= max_dim] or [max_dim]
    return RowwiseAdagradCase(
        E=draw(st.integers(1, max_rows)),
        D=draw(st.one_of(st.integers(1, max_dim), st.sampled_from(edge_d))),
        N=draw(st.one_of(st.integers(0, max_n), st.just(0))),
        pattern=draw(st.sampled_from(PATTERNS)),
        dtype=draw(st.sampled_from(dtypes)),
        grad_in_float32=draw(st.booleans()),
        index_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        weight_decay_mode=draw(st.sampled_from(WEIGHT_DECAY_MODES)),
        lr=draw(st.sampled_from([0.01, 0.1, 0.5])),
        eps=draw(st.sampled_from([1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.2])),
        momentum_init=draw(st.sampled_from(["zero", "random"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class FusedBagCase:
    """One embedding_bag_backward_rowwise_adagrad_ call: T tables of ``rows[t]`` rows, B samples, bag
    lengths ``lengths`` (T*B, table-major), one D."""

    rows: tuple[int, ...]
    B: int
    D: int
    lengths: tuple[int, ...]
    pattern: str
    pooling: str
    per_sample_weights: bool
    pass_table_offsets: bool
    dtype: torch.dtype
    grad_in_float32: bool
    index_dtype: torch.dtype
    offsets_dtype: torch.dtype
    weight_decay_mode: str
    lr: float
    weight_decay: float
    momentum_init: str
    seed: int

    @property
    def T(self) -> int:
        return len(self.rows)

    @property
    def N(self) -> int:
        return sum(self.lengths)

    @property
    def grad_dtype(self) -> torch.dtype:
        return torch.float32 if self.grad_in_float32 else self.dtype

    @property
    def hyper(self) -> dict:
        return dict(lr=self.lr, eps=1e-8, weight_decay=self.weight_decay, weight_decay_mode=self.weight_decay_mode)

    def inputs(self, device: str) -> dict[str, torch.Tensor | None]:
        """weight, momentum, indices (local to their table), offsets, grad_output, table_offsets (None when
        not passed, T = 1), per_sample_weights (None unless drawn)."""
        g = torch.Generator().manual_seed(self.seed)
        E = sum(self.rows)
        weight = (0.5 * torch.randn(E, self.D, generator=g, dtype=torch.float64)).to(device, self.dtype)
        momentum = _momentum(E, self.momentum_init, g).to(device, torch.float32)
        parts = []
        for k, n in enumerate(self.lengths):
            parts.append(_rows(self.pattern, n, self.rows[k // self.B], g))
        indices = (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)).to(device, self.index_dtype)
        offsets = torch.tensor([0, *torch.tensor(self.lengths, dtype=torch.int64).cumsum(0).tolist()],
                               dtype=self.offsets_dtype, device=device)
        grad_output = torch.randn(self.B, self.T * self.D, generator=g, dtype=torch.float64).to(device, self.grad_dtype)
        table_offsets = None
        if self.pass_table_offsets:
            table_offsets = torch.tensor([0, *torch.tensor(self.rows).cumsum(0).tolist()], dtype=self.offsets_dtype,
                                         device=device)
        psw = None
        if self.per_sample_weights:
            psw = torch.rand(self.N, generator=g, dtype=torch.float64).to(device, torch.float32)
        return dict(weight=weight, momentum=momentum, indices=indices, offsets=offsets, grad_output=grad_output,
                    table_offsets=table_offsets, per_sample_weights=psw)


@st.composite
def fused_bag_cases(draw, max_tables: int = 3, max_batch: int = 4, max_rows: int = 12, max_dim: int = 24,
                    max_len: int = 5, dtypes=WEIGHT_DTYPES) -> FusedBagCase:
    """T from 1, B from 0, empty bags, bags of length at most 1, heavy duplication, sum/mean pooling and
    per-sample weights, int32/int64 indices and offsets, every weight-decay mode and weight dtype."""
    T = draw(st.integers(1, max_tables))
    B = draw(st.integers(0, max_batch))
    cap = draw(st.sampled_from([1, max_len]))  # max bag length 1, or longer bags
    lengths = tuple(draw(st.lists(st.integers(0, cap), min_size=T * B, max_size=T * B)))
    pooling = draw(st.sampled_from(["sum", "mean"]))
    return FusedBagCase(
        rows=tuple(draw(st.lists(st.integers(1, max_rows), min_size=T, max_size=T))),
        B=B,
        D=draw(st.one_of(st.integers(1, max_dim), st.sampled_from([4, 8]))),
        lengths=lengths,
        pattern=draw(st.sampled_from(PATTERNS)),
        pooling=pooling,
        per_sample_weights=pooling == "sum" and draw(st.booleans()),
        pass_table_offsets=T > 1 or draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        grad_in_float32=draw(st.booleans()),
        index_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        offsets_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        weight_decay_mode=draw(st.sampled_from(WEIGHT_DECAY_MODES)),
        lr=draw(st.sampled_from([0.01, 0.3])),
        weight_decay=draw(st.sampled_from([0.0, 0.1])),
        momentum_init=draw(st.sampled_from(["zero", "random"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# ------------------------------------------------------------------------------------------- comparison

_MIN_SPACING = {torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133, torch.float32: 2.0**-149, torch.float64: 2.0**-1074}


def spacing(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The gap between adjacent ``dtype`` values around each element of x (float64)."""
    x = x.detach().to("cpu", torch.float64)
    _, exponent = torch.frexp(x)
    gap = torch.finfo(dtype).eps * torch.pow(2.0, exponent.to(torch.float64) - 1)
    return torch.clamp(gap, min=_MIN_SPACING[dtype])


def assert_update_close(got: torch.Tensor, exact: torch.Tensor, same: torch.Tensor, before: torch.Tensor,
                        what: str, rtol_delta: float = 1e-5) -> None:
    """An in-place update's result against the float64 reference.

    got: the kernel's tensor after the step; exact: the float64 reference's; same: the reference run in got's
    dtype; before: the tensor before the step. Element-wise, a kernel may be twice as far from float64 as
    the reference in its own dtype, plus one gap of its dtype (the two may round a value lying near a
    rounding boundary to different sides), plus ``rtol_delta`` of the exact change (reduction order).
    Elements the step does not change must come back bit-identical."""
    assert got.shape == exact.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    assert got.dtype == same.dtype, f"{what}: dtype {got.dtype} != {same.dtype}"
    g, e, s, b = (t.detach().to("cpu", torch.float64) for t in (got, exact, same, before))
    untouched = (e == b) & (s == b)
    assert torch.equal(g[untouched], b[untouched]), f"{what}: an element the step leaves alone was written"
    tol = 2 * (s - e).abs() + spacing(e, got.dtype) + rtol_delta * (e - b).abs()
    err = (g - e).abs()
    bad = ~(err <= tol)
    if bad.any():
        k = int(torch.argmax((err - tol).where(bad, torch.full_like(err, -float("inf"))).flatten()))
        flat = lambda t: t.flatten()[k].item()  # noqa: E731
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance; worst at flat "
                             f"index {k}: got {flat(g)}, exact {flat(e)}, reference in {got.dtype} {flat(s)}, "
                             f"before {flat(b)}, tolerance {flat(tol):.3g}")
