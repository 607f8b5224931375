"""Hypothesis strategies shared by the op tests. Every value a strategy draws is used by the test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DotInteractionCase:
    B: int
    F: int
    D: int
    dtype: torch.dtype
    self_interaction: bool
    layout: str
    pad_to_multiple: int
    seed: int

    def inputs(self, device: str, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """dense (B, D), sparse (B, F, D) drawn from N(0, 1) with this case's seed."""
        g = torch.Generator().manual_seed(self.seed)
        dense = torch.randn(self.B, self.D, generator=g, dtype=torch.float64)
        sparse = torch.randn(self.B, self.F, self.D, generator=g, dtype=torch.float64)
        dt = dtype or self.dtype
        return dense.to(device, dt), sparse.to(device, dt)


@st.composite
def dot_interaction_cases(draw, max_batch: int = 6, max_features: int = 40, max_dim: int = 72,
                          dtypes=FLOAT_DTYPES) -> DotInteractionCase:
    """Batches from 0, F from 1 (also just past multiples of 16), D from 1 (odd and non-power-of-two)."""
    edge_f = [f for f in (15, 16, 17, 31, 32, 33) if f <= max_features] or [max_features]
    edge_d = [d for d in (8, 16, 50, 64) if d <= max_dim] or [max_dim]
    F = draw(st.one_of(st.integers(1, max_features), st.sampled_from(edge_f)))
    D = draw(st.one_of(st.integers(1, max_dim), st.sampled_from(edge_d)))
    return DotInteractionCase(
        B=draw(st.integers(0, max_batch)), F=F, D=D, dtype=draw(st.sampled_from(dtypes)),
        self_interaction=draw(st.booleans()), layout=draw(st.sampled_from(["lower", "upper"])),
        pad_to_multiple=draw(st.sampled_from([1, 2, 8])), seed=draw(st.integers(0, 2**31 - 1)))
