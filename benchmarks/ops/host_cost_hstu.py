"""Host cost of one hstu_attention forward call on the GPU: a tiny shape (B = 4, N = 64, H = 1, d = 32) where the
kernel takes a few microseconds, so back-to-back calls run at the host's pace. Per backend, through
``recsys_kernels.ops.hstu_attention`` and through the registered op, with seq_offsets on the CPU and on the GPU;
then where the Triton op's host time goes (cProfile, top functions by own time).

    python -m benchmarks.ops.host_cost_hstu            # GPU only
"""

from __future__ import annotations

import cProfile
import importlib
import pstats
import time

import torch
import triton

from recsys_kernels import use_backend
from recsys_kernels.ops import hstu_attention

CALLS = 300


def per_call_us(fn) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / CALLS * 1e6


def breakdown(q, k, v, offsets, N, d) -> None:
    """The Triton forward's host cost layer by layer, offsets on the GPU: registered op, the function it wraps
    (no dispatcher), its input checks, and the bare Triton launch with the same arguments."""
    tri = importlib.import_module("recsys_kernels.triton.hstu_attention")
    from recsys_kernels.reference.hstu_attention import check_inputs
    B = offsets.shape[0] - 1
    out = torch.zeros_like(v)
    ptrs, scalars, flags = tri._common(q, k, v, offsets, N, 1.0 / d, True, None, 0, 0, None, None, None, "log")
    bm, bn, warps, stages = tri._tiles("fwd", q.dtype, N, q.shape[2], v.shape[2])

    def bare():
        tri._fwd_kernel[(B * q.shape[1], triton.cdiv(N, bm))](
            q, k, v, out, *ptrs, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), *scalars, **flags, BM=bm, BN=bn, num_warps=warps, num_stages=stages)

    rows = {"registered op": lambda: torch.ops.recsys.hstu_attention_triton.default(q, k, v, offsets, N, 1.0 / d),
            "wrapped function": lambda: tri.hstu_attention_triton._init_fn(q, k, v, offsets, N, 1.0 / d),
            "check_inputs": lambda: check_inputs(q, k, v, offsets, N, None, 0, 0, None, None, None, "log"),
            "torch.zeros": lambda: torch.zeros_like(v),
            "bare launch": bare}
    for name, fn in rows.items():
        print(f"triton fwd breakdown, {name:16s}: {per_call_us(fn):6.1f} us/call", flush=True)


def main() -> None:
    importlib.import_module("recsys_kernels.triton.hstu_attention")  # registers the Triton ops

    B, N, H, d = 4, 64, 1, 32
    q, k, v = (torch.randn(B * N, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    host = torch.arange(0, B * N + 1, N)
    dev = host.cuda()
    ops = {"cuda": torch.ops.recsys.hstu_attention, "triton": torch.ops.recsys.hstu_attention_triton}
    with torch.no_grad():
        for backend, op in ops.items():
            for where, offsets in (("cpu", host), ("cuda", dev)):
                with use_backend(backend):
                    front = per_call_us(lambda: hstu_attention(q, k, v, offsets, max_seq_len=N, alpha=1.0 / d))
                raw = per_call_us(lambda: op(q, k, v, offsets, N, 1.0 / d))
                print(f"{backend:6s} offsets on {where:4s}: ops.hstu_attention {front:6.1f} us/call, "
                      f"registered op {raw:6.1f} us/call", flush=True)
        breakdown(q, k, v, dev, N, d)
        profile = cProfile.Profile()
        profile.runcall(lambda: [ops["triton"](q, k, v, host, N, 1.0 / d) for _ in range(CALLS)])
        torch.cuda.synchronize()
        pstats.Stats(profile).sort_stats("tottime").print_stats(14)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
