"""Run one benchmark case a few times, for a kernel profiler (Nsight Compute) to attach to.

    ncu --clock-control none --kernel-name regex:hstu_fwd --launch-skip 3 --launch-count 1 \
        python -m benchmarks.ops.profile_case hstu-small fwd cuda
    python -m benchmarks.ops.profile_case hstu-small-bias fwd+bwd cpu cpu     # smoke run on the CPU

Cases reuse the benchmarks' input makers, so a profile is of exactly the timed inputs:
  hstu-small   B 128, N 256, H 2, d 64, bf16, bias off (issue 3's research shape); hstu-small-bias: bias on
  hstu-256     B 256, N 256, H 4, d 128
  hstu-1024    B 64, N 1024, H 4, d 64
  hstu-1024-128 / hstu-1024-128-bias   B 64, N 1024, H 4, d 128, bias off / on (where the bias's backward cost sits)
  int4-one     one table E = 4M, D = 128, B = 65536, L = 32, fp32 output
  int4-criteo  26 Criteo tables, D = 128, B = 65536, L = 1, fp32 output
Modes: fwd, fwd+bwd (hstu only). Backends: cuda, triton (cpu, reference for smoke runs). Device: cuda (default), cpu.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.ops import bench_hstu_attention, bench_int4_embedding_bag
from recsys_kernels import ops, use_backend

HSTU = {"hstu-small": dict(B=128, N=256, H=2, d=64, bias=0), "hstu-small-bias": dict(B=128, N=256, H=2, d=64, bias=1),
        "hstu-256": dict(B=256, N=256, H=4, d=128, bias=0), "hstu-1024": dict(B=64, N=1024, H=4, d=64, bias=0),
        "hstu-1024-128": dict(B=64, N=1024, H=4, d=128, bias=0),
        "hstu-1024-128-bias": dict(B=64, N=1024, H=4, d=128, bias=1)}
INT4 = {"int4-one": dict(T=1, E=4_000_000, D=128, B=65536, L=32),
        "int4-criteo": dict(T=26, E=0, D=128, B=65536, L=1)}
CALLS = 5


def hstu_step(shape: dict[str, int], mode: str, dev: torch.device):
    gen = torch.Generator(dev).manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    q, k, v, offsets, ts, pos, time = bench_hstu_attention.make_inputs(shape, dtype, dev, gen)
    q, k, v = (x.requires_grad_(mode != "fwd") for x in (q, k, v))
    grad = torch.randn_like(v)
    bias = dict(timestamps=ts, pos_bias=pos, time_bias=time) if shape["bias"] else {}

    def step():
        out = ops.hstu_attention(q, k, v, offsets, max_seq_len=shape["N"], alpha=1.0 / shape["d"], causal=True,
                                 **bias)
        if mode != "fwd":
            out.backward(grad)
    return step


def int4_step(shape: dict[str, int], dev: torch.device):
    gen = torch.Generator(dev).manual_seed(0)
    packed, indices, offsets, to, carrier = bench_int4_embedding_bag.make_inputs(shape, torch.float32, dev, gen)
    return lambda: ops.int4_embedding_bag(packed, indices, offsets, D=shape["D"], table_offsets=to,
                                          bounds_check="ignore")


def main(argv: list[str]) -> None:
    case, mode, backend, *device = argv
    dev = torch.device(device[0] if device else "cuda")
    step = hstu_step(HSTU[case], mode, dev) if case in HSTU else int4_step(INT4[case], dev)
    with use_backend(backend):
        for _ in range(CALLS):
            step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{case} {mode} {backend} on {dev}: {CALLS} calls done")


if __name__ == "__main__":
    main(sys.argv[1:])
