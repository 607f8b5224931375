"""Device time of each kernel in one HSTU forward+backward step, next to the step's wall time, at issue 3's shapes:
says which rows of the benchmark are host-bound (wall well above the kernels' sum) and where the GPU time goes.

    python -m benchmarks.ops.kernel_time_hstu                       # GPU: the bias-free shapes, bf16, cuda backend
    python -m benchmarks.ops.kernel_time_hstu --bias --backend triton
    python -m benchmarks.ops.kernel_time_hstu --device cpu --quick  # smoke run (the cpu backend's op times)

Wall: recsys_kernels.benchmarking.time_ms of the step (L2 flushed before each, as the op benchmark). Kernels: torch
profiler over `steps` steps after a warm-up, per kernel name (CUDA), or per recsys op (CPU), ms a step.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.ops import bench_hstu_attention
from recsys_kernels import benchmarking, ops, use_backend

QUICK_SHAPES = bench_hstu_attention.QUICK_SHAPES[:1]


def short_name(name: str) -> str:
    """A kernel's name without its namespace, template arguments and parameters."""
    # "(anonymous namespace)" would otherwise end every name at its "(" and merge all kernels into one.
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ")
    return name.split("(")[0].split("<")[0].split("::")[-1]


def step_fn(shape: dict[str, int], device: torch.device, backend: str, bias: bool):
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v, offsets, ts, pos, time_bias = bench_hstu_attention.make_inputs(shape, dtype, device, gen)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    grad = torch.randn(v.shape, dtype=dtype, device=device, generator=gen)
    kw = dict(timestamps=ts, pos_bias=pos, time_bias=time_bias) if bias else {}

    def step():
        with use_backend(backend):
            out = ops.hstu_attention(q, k, v, offsets, max_seq_len=shape["N"], alpha=1.0 / shape["d"], **kw)
        torch.autograd.grad(out, [q, k, v], grad)

    return step


def kernel_ms(step, device: torch.device, steps: int) -> dict[str, float]:
    """ms a step per kernel (CUDA) or per recsys op (CPU), from the profiler."""
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
            totals[short_name(e.name)] += e.device_time / 1e3 / steps
        elif not cuda and e.name.startswith("recsys::"):
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith("recsys::"):
                parent = parent.cpu_parent
            if parent is None:  # outermost recsys op only (its redispatch nests inside it)
                totals[e.name] += e.cpu_time / 1e3 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default=None, help="default: cuda on a GPU, cpu on the CPU")
    ap.add_argument("--bias", action="store_true", help="relative bias on")
    ap.add_argument("--quick", action="store_true", help="one small shape, few steps")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backend = args.backend or ("cuda" if device.type == "cuda" else "cpu")
    shapes = QUICK_SHAPES if args.quick else [s for s in bench_hstu_attention.SHAPES if s["bias"] == 0]
    steps = 2 if args.quick else args.steps
    print(f"# {benchmarking.device_name(device)}, backend {backend}, bias {'on' if args.bias else 'off'}")
    for shape in shapes:
        step = step_fn(shape, device, backend, args.bias)
        wall = benchmarking.time_ms(lambda: step(), device=device, warmup=2 if args.quick else 10,
                                    rep=3 if args.quick else 30)
        kernels = kernel_ms(step, device, steps)
        label = ", ".join(f"{k} {shape[k]}" for k in ("B", "N", "H", "d"))
        parts = " + ".join(f"{name} {ms:.4f}" for name, ms in kernels.items())
        print(f"{label}: wall {wall:.4f} ms; kernels {sum(kernels.values()):.4f} ms = {parts}", flush=True)


if __name__ == "__main__":
    main()
