"""Host time of the small-shape HSTU step on the CUDA backend (B 128, N 256, H 2, d 64, bf16; bias off, or on with
any argument): back-to-back calls of the forward (no grad, grad), the forward + backward, and the two registered
ops called directly; then where the host time goes (torch profiler, cProfile).

    python -m benchmarks.ops.host_step_hstu [bias]     # GPU only

Back to back, a call waits for the GPU only when the GPU is the slower side, so µs/call is max(host, GPU).
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.ops import bench_hstu_attention
from benchmarks.ops.host_cost_hstu import per_call_us
from recsys_kernels import ops, use_backend


def main(bias: bool) -> None:
    shape = dict(B=128, N=256, H=2, d=64, bias=int(bias))
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v, offsets, ts, pos, time_bias = bench_hstu_attention.make_inputs(shape, torch.bfloat16,
                                                                            torch.device("cuda"), gen)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    grad = torch.randn_like(v)
    kw = dict(timestamps=ts, pos_bias=pos, time_bias=time_bias) if bias else {}
    args = (q.detach(), k.detach(), v.detach(), offsets, 256, 1 / 64, True, None, 0, 0, kw.get("timestamps"),
            kw.get("pos_bias"), kw.get("time_bias"), "log")

    def fwd():
        return ops.hstu_attention(q, k, v, offsets, max_seq_len=256, alpha=1 / 64, causal=True, **kw)

    def fwd_no_grad():
        with torch.no_grad():
            fwd()

    def step():
        torch.autograd.grad(fwd(), [q, k, v], grad)

    calls = {"fwd no-grad": fwd_no_grad, "fwd grad": fwd, "fwd+bwd": step,
             "registered fwd op": lambda: torch.ops.recsys.hstu_attention(*args),
             "registered bwd op": lambda: torch.ops.recsys.hstu_attention_backward(grad, *args)}
    with use_backend("cuda"):
        for name, fn in calls.items():
            print(f"{name}: {per_call_us(fn):.1f} us/call", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        stats = cProfile.Profile()
        stats.runcall(lambda: [step() for _ in range(100)])
        torch.cuda.synchronize()
        pstats.Stats(stats).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main(len(sys.argv) > 1)
