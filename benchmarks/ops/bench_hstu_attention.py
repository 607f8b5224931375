"""Benchmark of ``recsys_kernels.ops.hstu_attention`` (jagged HSTU attention, fused relative bias).

    python -m benchmarks.ops.bench_hstu_attention                                  # GPU: issue 3's shapes, bf16
    python -m benchmarks.ops.bench_hstu_attention --device cpu --quick --dtypes fp32  # CPU smoke run

Shapes (issue 3): (B, N, H, d) in {(64, 1024, 4, 128), (32, 2048, 4, 128), (16, 4096, 4, 128), (256, 256, 4, 128),
(64, 1024, 4, 64), (128, 256, 2, 64)}, each with the relative bias off and on. Sequence lengths uniform in
[0.9 N, N] (fixed seed per shape, so the FLOP count matches the inputs), alpha = 1 / d, causal.
Providers: reference (eager), reference-compiled, triton, cuda, cuda-cpasync (the CUDA backend's wgmma kernels loading
by cp.async instead of TMA), cuda-mma (the CUDA backend with its mma.sync forward, dK/dV and dQ kernels instead of the
sm_90a wgmma ones an H100 runs), cpu. The backward modes differentiate q, k, v
(the bias tables, when on, are inputs without gradients; their gradient costs a small reduction).

FLOPs as generative-recommenders counts them (a causal mask halves the work):
  fwd = 2 · H · (Dqk + Dv) / 2 · Σ sᵢ²;   fwd+bwd = (4 Dqk + 3 Dv) / (Dqk + Dv) · fwd;   bwd = fwd+bwd − fwd.
Rows report TFLOP/s and the fraction of the bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

from typing import Sequence

import torch

import recsys_kernels
from benchmarks import harness
from recsys_kernels.ops import hstu_attention
from recsys_kernels.reference import hstu_attention as reference

OP = "hstu_attention"
NUM_BUCKETS = 128
WGMMA_SWITCH = "RECSYS_KERNELS_HSTU_WGMMA"
TMA_SWITCH = "RECSYS_KERNELS_HSTU_TMA"


def lengths(shape: dict[str, int]) -> torch.Tensor:
    """(B,) int64 lengths uniform in [0.9 N, N], the same for a shape every call."""
    g = torch.Generator().manual_seed(shape["B"] * 100003 + shape["N"])
    N = shape["N"]
    return torch.randint(int(0.9 * N), N + 1, (shape["B"],), generator=g)


def make_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """q, k, v (L, H, d), seq_offsets (B + 1,) on the CPU, timestamps (L,), pos_bias (2N - 1,), time_bias (129,)."""
    H, d, N = shape["H"], shape["d"], shape["N"]
    lens = lengths(shape)
    # seq_offsets stay on the CPU, as a training loop has them (recsys_kernels.data's SequenceBatch.host_offsets):
    # every backend validates offsets on the host, which for device offsets is a sync per call that would time
    # the host round trip rather than the kernels (generative-recommenders' kernels do not validate at all).
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    L = int(lens.sum())
    q, k, v = (torch.randn(L, H, d, device=device, generator=gen).to(dtype) for _ in range(3))
    ts = torch.randint(1, 100000, (L,), device=device, generator=gen).cumsum(0)
    pos = (0.02 * torch.randn(2 * N - 1, device=device, generator=gen)).to(dtype)
    time = (0.02 * torch.randn(NUM_BUCKETS + 1, device=device, generator=gen)).to(dtype)
    return q, k, v, offsets, ts, pos, time


def _call(fn, shape: dict[str, int]):
    bias = bool(shape["bias"])

    def run(q, k, v, offsets, ts, pos, time):
        return fn(q, k, v, offsets, max_seq_len=shape["N"], alpha=1.0 / q.shape[2], causal=True,
                  timestamps=ts if bias else None, pos_bias=pos if bias else None, time_bias=time if bias else None)

    return run


def flops(case: harness.Case) -> float:
    s = case.shape
    fwd = 2 * s["H"] * (2 * s["d"]) / 2 * float((lengths(s).double() ** 2).sum())
    total = (4 * s["d"] + 3 * s["d"]) / (2 * s["d"]) * fwd
    return {"fwd": fwd, "bwd": total - fwd, "fwd+bwd": total}[case.mode]


def providers() -> list[harness.Provider]:
    def backend(name: str) -> harness.Provider:
        p = harness.backend_provider(OP, name, hstu_attention)  # for its availability check

        def factory(case: harness.Case, device: torch.device):
            call = _call(hstu_attention, case.shape)

            def run(*inputs):
                with recsys_kernels.use_backend(name):
                    return call(*inputs)
            return run

        p.factory = factory
        return p

    def compiled_reference() -> harness.Provider:
        def factory(case: harness.Case, device: torch.device):
            compiled = torch.compile(_call(hstu_attention, case.shape), fullgraph=True, dynamic=False)

            def run(*inputs):
                with recsys_kernels.use_backend("reference"):
                    return compiled(*inputs)
            return run

        return harness.Provider("reference-compiled", factory, compiles=True)

    def cuda_switched(name: str, switch: str) -> harness.Provider:
        """The CUDA backend with `switch`=0 held through every call (cuda-mma: the mma.sync kernels on an H100 too;
        cuda-cpasync: the wgmma kernels load their tiles by cp.async instead of TMA)."""
        p = backend("cuda")
        return harness.Provider(name, p.factory, p.unavailable, env={switch: "0"})

    return [backend("reference"), compiled_reference(), backend("triton"), backend("cuda"),
            cuda_switched("cuda-cpasync", TMA_SWITCH), cuda_switched("cuda-mma", WGMMA_SWITCH), backend("cpu")]


SHAPES = [dict(B=B, N=N, H=H, d=d, bias=bias) for (B, N, H, d) in
          [(64, 1024, 4, 128), (32, 2048, 4, 128), (16, 4096, 4, 128), (256, 256, 4, 128), (64, 1024, 4, 64),
           (128, 256, 2, 64)] for bias in (0, 1)]
QUICK_SHAPES = [dict(B=4, N=64, H=2, d=32, bias=0), dict(B=4, N=64, H=2, d=32, bias=1)]


class _Oracle:
    """The reference run with the bias on or off as the case says; ``bench`` sets ``shape`` per case."""

    shape: dict[str, int] = QUICK_SHAPES[0]

    def __call__(self, q, k, v, offsets, ts, pos, time):
        s = self.shape
        bias = bool(s["bias"])
        return reference.hstu_attention(q, k, v, offsets, s["N"], 1.0 / q.shape[2], True, None, 0, 0,
                                        ts if bias else None, pos if bias else None, time if bias else None, "log")


ORACLE = _Oracle()


def _tracking_make_inputs(shape, dtype, device, gen):
    ORACLE.shape = shape  # the harness builds a case's inputs before it checks or times that case
    return make_inputs(shape, dtype, device, gen)


BENCH = harness.OpBench(
    name=OP,
    shapes=SHAPES,
    quick_shapes=QUICK_SHAPES,
    make_inputs=_tracking_make_inputs,
    reference=ORACLE,
    providers=providers(),
    differentiable=(0, 1, 2),
    dtypes=("bf16",),
    flops_fn=flops,
)


def main(argv: Sequence[str] | None = None) -> list[harness.Row]:
    return harness.main(BENCH, argv)


if __name__ == "__main__":
    main()
