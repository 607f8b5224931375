"""Benchmark of ``recsys_kernels.ops.dot_interaction`` (DLRM dot interaction).

    python -m benchmarks.ops.bench_dot_interaction                       # GPU: all shapes, dtypes, modes
    python -m benchmarks.ops.bench_dot_interaction --device cpu --quick  # B=256 smoke run on the CPU

Shapes: B = 65536 with (F=26, D=128) — Criteo DLRM — and (F=100, D=64); ``--quick`` uses B = 256.
Providers: reference (eager), reference-compiled (torch.compile of the reference), triton, cuda, cpu, and
torchrec's ``InteractionArch`` when torchrec is importable (checked against layout="upper", its pair order).
fbgemm_gpu has no standalone dot-interaction op, so it has no row here.

The op is memory-bound (n = F + 1 <= 101 rows per sample: a few flops per byte), so rows report GB/s over
the bytes that must move and their fraction of the measured copy bandwidth:
  fwd: read dense + sparse once, write the output once:   B (F+1) D s + B cols s
  bwd: read dense, sparse, grad_output, write both grads: 2 B (F+1) D s + B cols s
  fwd+bwd: the sum.   (s = element size, cols = D + F (F+1) / 2)
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from benchmarks import harness
from recsys_kernels.ops import dot_interaction
from recsys_kernels.reference import dot_interaction as reference

OP = "dot_interaction"


def make_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """dense (B, D), sparse (B, F, D), standard normal (pair dot products ~ sqrt(D): fine in fp16)."""
    B, F, D = shape["B"], shape["F"], shape["D"]
    dense = torch.randn(B, D, device=device, generator=gen).to(dtype)
    sparse = torch.randn(B, F, D, device=device, generator=gen).to(dtype)
    return dense, sparse


def bytes_moved(case: harness.Case) -> float:
    """Bytes the op must move in ``case.mode`` (see the module docstring)."""
    B, F, D = case.shape["B"], case.shape["F"], case.shape["D"]
    s = torch.finfo(case.dtype).bits // 8
    inputs = B * (F + 1) * D * s
    output = B * reference.output_columns(D, F + 1, False, 1) * s
    fwd, bwd = inputs + output, 2 * inputs + output
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]


def _public(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    return dot_interaction(dense, sparse)


def _torchrec_factory(case: harness.Case, device: torch.device) -> Callable[..., torch.Tensor]:
    from torchrec.models.dlrm import InteractionArch

    return InteractionArch(num_sparse_features=case.shape["F"]).to(device)


def providers() -> list[harness.Provider]:
    return [
        harness.backend_provider(OP, "reference", _public),
        harness.compiled_reference_provider(_public),
        harness.backend_provider(OP, "triton", _public),
        harness.backend_provider(OP, "cuda", _public),
        harness.backend_provider(OP, "cpu", _public),
        harness.Provider("torchrec", _torchrec_factory, harness.module_available("torchrec"),
                         oracle=functools.partial(reference.dot_interaction, layout="upper")),
    ]


BENCH = harness.OpBench(
    name=OP,
    shapes=[{"B": 65536, "F": 26, "D": 128}, {"B": 65536, "F": 100, "D": 64}],
    quick_shapes=[{"B": 256, "F": 26, "D": 128}, {"B": 256, "F": 100, "D": 64}],
    make_inputs=make_inputs,
    reference=reference.dot_interaction,
    providers=providers(),
    differentiable=(0, 1),
    bytes_fn=bytes_moved,
)


def main(argv: Sequence[str] | None = None) -> list[harness.Row]:
    return harness.main(BENCH, argv)


if __name__ == "__main__":
    main()
