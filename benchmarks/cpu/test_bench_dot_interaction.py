"""CPU microbenchmark (pytest-benchmark): the C++ CPU dot_interaction kernel against the reference.

    pytest benchmarks --benchmark-only                      # from the repo root
    pytest benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,ops

Shape B=2048, F=26, D=128 float32 (the Criteo DLRM interaction at a CPU-sized batch), forward and
forward+backward. Target: the C++ kernel >= 3x faster than the reference on a 2-core CPU — compare the
medians within a group; this is a benchmark, not an assertion. Not collected by the default test run
(pyproject's testpaths = ["tests"]).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import recsys_kernels
from recsys_kernels import _backend
from recsys_kernels.ops import dot_interaction
from recsys_kernels.reference import dot_interaction as reference

pytest.importorskip("pytest_benchmark")

B, F, D = 2048, 26, 128
N_SETS = 4  # 4 x 28 MiB of inputs: more than a small CPU's last-level cache, so calls do not find them cached


def _input_sets(requires_grad: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(N_SETS):
        dense = torch.randn(B, D, generator=gen).requires_grad_(requires_grad)
        sparse = torch.randn(B, F, D, generator=gen).requires_grad_(requires_grad)
        grad_out = torch.randn(B, reference.output_columns(D, F + 1, False, 1), generator=gen)
        sets.append((dense, sparse, grad_out))
    return sets


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_dot_interaction_cpu(benchmark, backend: str, mode: str) -> None:
    if backend not in _backend.live_backends("dot_interaction", "cpu"):
        pytest.skip("recsys_kernels._C has no CPU kernel (not built)")
    benchmark.group = f"dot_interaction B={B} F={F} D={D} fp32 {mode}"
    sets = _input_sets(requires_grad=mode != "fwd")

    def fwd(dense: torch.Tensor, sparse: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), recsys_kernels.use_backend(backend):
            return dot_interaction(dense, sparse)

    def fwd_bwd(dense: torch.Tensor, sparse: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with recsys_kernels.use_backend(backend):
            out = dot_interaction(dense, sparse)
        return torch.autograd.grad(out, (dense, sparse), grad_out)

    step = fwd if mode == "fwd" else fwd_bwd
    # A wrong kernel must not produce a number: check once against the reference before timing.
    dense, sparse, grad_out = sets[0]
    expected = reference.dot_interaction(dense.detach(), sparse.detach())
    torch.testing.assert_close(fwd(dense, sparse, grad_out), expected, rtol=1e-5, atol=1e-4)
    if mode != "fwd":
        ref_grads = reference.dot_interaction_backward(grad_out, dense.detach(), sparse.detach(), False, "lower")
        for got, want in zip(step(*sets[0]), ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

    cycle = itertools.cycle(sets)
    benchmark(lambda: step(*next(cycle)))
