"""The benchmark harness: a provider's environment holds through its backward, and a wrong provider is not timed."""

from __future__ import annotations

import os

import torch

from benchmarks import harness

SWITCH = "RECSYS_KERNELS_TEST_HARNESS_SWITCH"


class _ScaleBySwitch(torch.autograd.Function):
    """y = 2 x; its backward is right only while SWITCH is "1" (as a C++ launcher reading a kernel switch)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return g * (2 if os.environ.get(SWITCH) == "1" else 3)


def _rows(env: dict[str, str]) -> list[harness.Row]:
    bench = harness.OpBench(
        name="double", shapes=[], quick_shapes=[],
        make_inputs=lambda shape, dtype, device, gen: (torch.randn(shape["n"], dtype=dtype, generator=gen),),
        reference=lambda x: 2 * x, differentiable=(0,),
        providers=[harness.Provider("switched", lambda case, device: _ScaleBySwitch.apply, env=env)])
    runner = harness._Runner(bench, torch.device("cpu"), quick=True, ceilings={})
    return runner.run([{"n": 64}], [torch.float32], ["fwd", "bwd"], bench.providers)


def test_provider_environment_reaches_the_backward_and_is_restored():
    rows = _rows({SWITCH: "1"})
    assert [(r.case.mode, r.status, r.ms is not None) for r in rows] == [("fwd", "ok", True), ("bwd", "ok", True)]
    assert SWITCH not in os.environ


def test_wrong_gradient_is_reported_not_timed():
    fwd, bwd = _rows({})
    assert fwd.status == "ok" and bwd.status == "wrong" and bwd.ms is None, (fwd, bwd)
