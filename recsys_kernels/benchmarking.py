"""Timing and machine ceilings shared by ``benchmarks/`` and ``python -m recsys_kernels``.

    time_ms(fn, device="cuda", rotate=4)  # median ms; fn(i) gets the index of the input set to use
                                          # (setup=... prepares each call untimed, e.g. a forward graph)
    copy_bandwidth_gbs("cuda")            # device-to-device copy, bytes read + bytes written
    matmul_tflops("cuda")                 # 8192^3 bf16 GEMM

CUDA timing brackets every repetition with CUDA events and flushes the L2 before each one (as
``triton.testing.do_bench`` does); it is written here rather than delegated to Triton so that warmup and
rep mean the same (counts, not milliseconds) on every device and with or without Triton installed.
Nothing here touches ``torch.cuda`` at import time.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import torch

# Larger than any current GPU's L2 (H100: 50 MB, B200: 126 MB), so zeroing it evicts the last call's data.
_L2_FLUSH_BYTES = 256 * 2**20
_WARMUP_S = 0.2


def _sync(device: torch.device) -> None:
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "synchronize"):
        module.synchronize()


def time_ms(fn: Callable[..., Any], *, device: torch.device | str, warmup: int = 10, rep: int = 50,
            rotate: int | None = None, setup: Callable[..., Any] | None = None) -> float:
    """Median wall time of one call of ``fn`` in milliseconds, after at least ``warmup`` calls and 0.2 s of them.

    ``rotate=k`` calls ``fn(i % k)`` with a growing i, so a benchmark can cycle through k input sets whose
    total size exceeds the caches; ``rotate=None`` calls ``fn()``. ``setup``, when given, is called first
    with those arguments, untimed, and ``fn`` gets its result instead (e.g. a fresh forward graph whose
    backward alone is timed). CUDA: one pair of CUDA events per call, L2 flushed after setup and before
    each call (outside the events). Other devices: ``time.perf_counter`` around each call, synchronising
    the device (if it has a ``synchronize``) before and after.
    """
    device = torch.device(device)
    if rep < 1:
        raise ValueError(f"rep must be >= 1, got {rep}")

    def args(i: int) -> tuple[Any, ...]:
        a = (i % rotate,) if rotate else ()
        return (setup(*a),) if setup is not None else a

    # At least `warmup` calls and _WARMUP_S of them: after a heavy case an H100 ran the next ~60 calls of a
    # 0.1 ms kernel at ~1 ms each (whichever kernel came first), which ten calls did not cover.
    i, t0 = 0, time.perf_counter()
    while i < warmup or (warmup > 0 and time.perf_counter() - t0 < _WARMUP_S):
        fn(*args(i))
        i += 1
        if i >= warmup:
            _sync(device)
    warmup = i
    if device.type == "cuda":
        with torch.cuda.device(device):
            flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
            torch.cuda.synchronize()
            for i in range(rep):
                a = args(warmup + i)
                flush.zero_()
                starts[i].record()
                fn(*a)
                ends[i].record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times = []
        for i in range(rep):
            a = args(warmup + i)
            _sync(device)
            t0 = time.perf_counter()
            fn(*a)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device | str, nbytes: int | None = None) -> float:
    """Measured device-memory bandwidth in GB/s (1e9 B/s) of ``dst.copy_(src)``, counting read + write.

    Default size: 1 GiB on CUDA (far past L2), 128 MiB elsewhere (past a small CPU's last-level cache,
    and quick on two cores).
    """
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 128 * 2**20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device=device, warmup=3, rep=20 if device.type == "cuda" else 10)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int | None = None) -> float:
    """Measured dense GEMM rate in TFLOP/s (2n^3 flops) for n x n ``dtype`` matrices.

    Default n: 8192 on CUDA (large enough to saturate tensor cores), 1024 elsewhere. Random data, not
    zeros: GPUs draw less power, and so clock higher, on zeros.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    c = torch.empty(n, n, dtype=dtype, device=device)
    ms = time_ms(lambda: torch.matmul(a, b, out=c), device=device, warmup=5, rep=20 if device.type == "cuda" else 5)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device`` ("NVIDIA H100 80GB HBM3", "x86_64 CPU, 2 threads: <model>")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
        except OSError:  # not Linux: keep platform's answer
            pass
        return f"{model} ({torch.get_num_threads()} torch threads)"
    return str(device)
