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
        profile = cProfile.Profile()
        profile.runcall(lambda: [ops["triton"](q, k, v, host, N, 1.0 / d) for _ in range(CALLS)])
        torch.cuda.synchronize()
        pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
