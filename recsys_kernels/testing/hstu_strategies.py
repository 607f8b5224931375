"""Hypothesis strategies for the jagged helpers and HSTU attention. Every value a strategy draws is used by
the case it builds; ``inputs(device)`` materialises the same tensors every call (from the case's seed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 25, 32, 50, 64, 128)


def _lengths(draw, B: int, max_len: int) -> tuple[int, ...]:
    kind = draw(st.sampled_from(["random", "empty", "full"]))
    if kind == "empty":
        return (0,) * B
    if kind == "full":
        return (max_len,) * B
    return tuple(draw(st.lists(st.integers(0, max_len), min_size=B, max_size=B)))


def offsets_of(lengths: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=dtype, device=device)


@dataclass(frozen=True)
class JaggedCase:
    """B sequences of ``lengths`` (some may exceed max_len: truncated), D features, ``extra`` unused rows past
    the last sequence."""

    lengths: tuple[int, ...]
    max_len: int
    D: int
    extra: int
    dtype: torch.dtype
    offsets_dtype: torch.dtype
    padding_value: float
    seed: int

    @property
    def B(self) -> int:
        return len(self.lengths)

    @property
    def L(self) -> int:
        return sum(self.lengths) + self.extra

    def inputs(self, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """values (L, D), offsets (B + 1,), dense (B, max_len, D)."""
        g = torch.Generator().manual_seed(self.seed)
        values = torch.randn(self.L, self.D, generator=g, dtype=torch.float64)
        dense = torch.randn(self.B, self.max_len, self.D, generator=g, dtype=torch.float64)
        if not self.dtype.is_floating_point:
            values, dense = (100 * values).round(), (100 * dense).round()
        return (values.to(device, self.dtype), offsets_of(self.lengths, self.offsets_dtype, device),
                dense.to(device, self.dtype))


@st.composite
def jagged_cases(draw, max_batch: int = 6, max_len: int = 9, dtypes=VALUE_DTYPES + (torch.int64,)) -> JaggedCase:
    """B from 0, lengths 0..max_len + 2 (all empty, all full, some past max_len), D from 1, unused trailing
    rows, int32/int64 offsets."""
    B = draw(st.integers(0, max_batch))
    return JaggedCase(
        lengths=_lengths(draw, B, max_len + 2),
        max_len=draw(st.integers(0, max_len)),
        D=draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 25]))),
        extra=draw(st.sampled_from([0, 0, 3])),
        dtype=draw(st.sampled_from(dtypes)),
        offsets_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        padding_value=draw(st.sampled_from([0.0, -1.0, 7.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class HSTUCase:
    """One hstu_attention call: B sequences of ``lengths`` (<= max_seq_len), H heads, head dims Dqk / Dv."""

    lengths: tuple[int, ...]
    max_seq_len: int
    H: int
    Dqk: int
    Dv: int
    causal: bool
    targets: bool
    contextual_seq_len: int
    max_attn_len: int
    pos_bias: bool
    time_bias: bool
    num_buckets: int
    time_bucket: str
    offsets_dtype: torch.dtype
    dtype: torch.dtype
    seed: int

    @property
    def B(self) -> int:
        return len(self.lengths)

    @property
    def L(self) -> int:
        return sum(self.lengths)

    @property
    def alpha(self) -> float:
        return 1.0 / self.Dqk

    def inputs(self, device: str, dtype: torch.dtype | None = None) -> dict:
        """q, k, v, seq_offsets and the keyword arguments of hstu_attention (tensors on ``device``)."""
        dt = dtype or self.dtype
        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(self.L, self.H, self.Dqk, generator=g, dtype=torch.float64)
        k = torch.randn(self.L, self.H, self.Dqk, generator=g, dtype=torch.float64)
        v = torch.randn(self.L, self.H, self.Dv, generator=g, dtype=torch.float64)
        nt = torch.tensor([torch.randint(0, n + 1, (1,), generator=g).item() for n in self.lengths],
                          dtype=self.offsets_dtype)
        # Timestamps increase within a sequence, with gaps spanning many buckets (seconds to months).
        gaps = torch.pow(10.0, torch.empty(self.L, dtype=torch.float64).uniform_(0, 7, generator=g)).to(torch.int64)
        ts = torch.cumsum(gaps, 0)
        pos = 0.3 * torch.randn(2 * self.max_seq_len - 1, generator=g, dtype=torch.float64)
        tb = 0.3 * torch.randn(self.num_buckets + 1, generator=g, dtype=torch.float64)
        return dict(
            q=q.to(device, dt), k=k.to(device, dt), v=v.to(device, dt),
            seq_offsets=offsets_of(self.lengths, self.offsets_dtype, device),
            max_seq_len=self.max_seq_len, alpha=self.alpha, causal=self.causal,
            num_targets=nt.to(device) if self.targets else None,
            contextual_seq_len=self.contextual_seq_len, max_attn_len=self.max_attn_len,
            timestamps=ts.to(device) if self.time_bias else None,
            pos_bias=pos.to(device, dt) if self.pos_bias else None,
            time_bias=tb.to(device, dt) if self.time_bias else None,
            time_bucket=self.time_bucket,
        )


@st.composite
def hstu_cases(draw, max_batch: int = 8, max_seq_len: int = 24, max_heads: int = 4, head_dims=HEAD_DIMS,
               dtypes=VALUE_DTYPES) -> HSTUCase:
    """Batch 0..max_batch, lengths 0..N (all empty, all full), heads 1..max_heads, head dims from
    ``head_dims`` (Dqk != Dv too), targets, contextual prefix, local window, bias on/off, both bucket
    functions, int32/int64 offsets, every dtype."""
    N = draw(st.integers(1, max_seq_len))
    B = draw(st.integers(0, max_batch))
    return HSTUCase(
        lengths=_lengths(draw, B, N),
        max_seq_len=N,
        H=draw(st.integers(1, max_heads)),
        Dqk=draw(st.sampled_from(head_dims)),
        Dv=draw(st.sampled_from(head_dims)),
        causal=draw(st.booleans()),
        targets=draw(st.booleans()),
        contextual_seq_len=draw(st.sampled_from([0, 0, 1, 3])),
        max_attn_len=draw(st.sampled_from([0, 0, 2, 5])),
        pos_bias=draw(st.booleans()),
        time_bias=draw(st.booleans()),
        num_buckets=draw(st.sampled_from([0, 7, 32])),
        time_bucket=draw(st.sampled_from(["log", "sqrt"])),
        offsets_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
