"""run_stage's schedule: the step count, and a time budget that shrinks the plan instead of cutting it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from recsys_kernels.models.llm.trainer import Stage, run_stage


@dataclass
class _Batch:
    x: torch.Tensor

    def to(self, device):
        return _Batch(self.x.to(device))


class _Slow(torch.nn.Module):
    """A regression whose steps take ``pause`` seconds."""

    def __init__(self, pause: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.pause = pause

    def forward(self, batch: _Batch) -> torch.Tensor:
        time.sleep(self.pause)
        return ((batch.x @ self.w) - batch.x.sum(-1)).square().mean()


def _stage(**kw) -> Stage:
    data = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    return Stage("fit", lambda m: [m.w], lambda idx, progress: _Batch(data[torch.from_numpy(idx)]), 64,
                 batch_size=16, lr=0.1, **kw)


def test_steps_follow_epochs_and_max_steps():
    model = _Slow()
    result = run_stage(model, _stage(epochs=3.0), torch.device("cpu"))
    assert result.steps == 12 and not result.stopped_by_budget
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])
    assert not model.w.requires_grad  # frozen again after the stage
    assert run_stage(_Slow(), _stage(epochs=3.0, max_steps=5), torch.device("cpu")).steps == 5


def test_time_budget_shrinks_the_plan():
    result = run_stage(_Slow(pause=0.02), _stage(epochs=100.0), torch.device("cpu"), time_budget_s=0.5)
    assert 8 <= result.steps < 100 and result.seconds < 1.5


class _WarmingUp(_Slow):
    """Slow first steps (warm-up on a GPU), fast after them."""

    def forward(self, batch: _Batch) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        self.pause = 0.05 if self.calls <= 8 else 0.002
        return super().forward(batch)


def test_time_budget_is_refitted_after_slow_first_steps():
    # Fitted once from steps 2..8, the plan would be 8 + 0.6 s / 0.05 s = 20 steps, done in ~0.45 s of the 1 s.
    result = run_stage(_WarmingUp(), _stage(epochs=1000.0), torch.device("cpu"), time_budget_s=1.0)
    assert result.steps > 40 and 0.7 <= result.seconds < 2.0


def test_max_steps_zero_skips_the_stage():
    model = _Slow()
    result = run_stage(model, _stage(max_steps=0), torch.device("cpu"), time_budget_s=1.0)
    assert result.steps == 0 and not result.losses and torch.equal(model.w, torch.zeros(3))
    assert not model.w.requires_grad and not model.training


def test_a_nan_loss_stops_the_stage_with_its_step():
    model = _Slow()
    with torch.no_grad():
        model.w.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"'fit'.*step 1"):
        run_stage(model, _stage(epochs=3.0), torch.device("cpu"))
