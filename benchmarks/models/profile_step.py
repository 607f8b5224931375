"""Where one training step of a thin model spends its time: the speed benchmark's step (same model, shapes and
batches as ``benchmarks.models.speed``) under ``torch.profiler``, fused dispatch and ``use_backend("reference")``.

    python -m benchmarks.models.profile_step --device cuda --model hstu          # H100
    python -m benchmarks.models.profile_step --device cpu --model hstu --quick   # tiny shapes, a CPU check

Prints per backend: wall ms a step, GPU busy ms a step (the sum of kernel and copy times: a step far longer
than that is bound by the host), host syncs a step (``torch.cuda.set_sync_debug_mode``), and the top ops by
device time and by host time.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import recsys_kernels
from benchmarks.models import speed
from recsys_kernels.train import registry


def count_syncs(step, batch, device: torch.device) -> int:
    """Host syncs in one step, as torch's sync debug mode reports them (CUDA only)."""
    if device.type != "cuda":
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)  # after the count: this sync is the tool's, not the step's
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_backend(step, batches, steps: int, device: torch.device, top: int) -> None:
    for i in range(5):  # warm-up: Triton compiles, the allocator's pools
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = (time.perf_counter() - t0) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    # kernels and copies only: an op's own row repeats the time of the kernels it launched
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / steps / 1e3
    print(f"  wall {wall:.3f} ms/step, device busy {busy:.3f} ms/step, host syncs/step "
          f"{count_syncs(step, batches[0], device)}")
    if device.type == "cuda":
        print(events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--model", default="hstu", choices=speed.MODELS)
    p.add_argument("--precision", default="fp32", choices=("fp32", "amp"))
    p.add_argument("--backends", default="fused,reference", help="comma-separated of fused, reference")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=25, help="rows of each op table")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a CPU check)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    registry.load_all()
    bench = (speed.QUICK if args.quick else speed.FULL)[args.model]
    task, cfg, label = speed.make_task(args.model, bench)
    net = task.build_model(cfg).to(device).train()
    optimizers = task.make_optimizers(net, cfg)
    batches = list(itertools.islice(task.train_batches(0, device), speed.ROTATE))
    step = speed.training_step(task, net, optimizers, device, amp=args.precision == "amp")
    for backend in args.backends.split(","):
        print(f"{args.model} {label} {args.precision}, {backend}:")
        with recsys_kernels.use_backend(None if backend == "fused" else backend):
            profile_backend(step, batches, args.steps, device, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
