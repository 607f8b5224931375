"""What a small pinned host-to-device copy adds in front of a kernel on the same stream, timed like the op
benchmarks (recsys_kernels.benchmarking.time_ms).

    python -m benchmarks.ops.probe_upload_latency          # GPU only

Why: the CUDA hstu_attention forward uploads its work list and offsets (~9 KB at B 128, N 256, H 2) with one
asynchronous copy before its kernel. At that shape the benchmark reads ~39 µs against a ~27 µs kernel (ncu,
RESULTS.md fourteenth session); this probe says how much of the ~12 µs the copy is, against a second kernel
launch in its place.
"""

from __future__ import annotations

import torch

from recsys_kernels.benchmarking import time_ms

UPLOAD_WORDS = 2304  # int32 words: 512 work items of 16 bytes + 129 int64 offsets, as at B 128, N 256, H 2


def median_us(fn) -> float:
    """Median of one call, CUDA events around it, L2 flushed before each (the op benchmarks' timer)."""
    return time_ms(fn, device="cuda", warmup=20, rep=200) * 1e3


def main() -> None:
    dev = torch.device("cuda")
    x = torch.empty(1 << 16, device=dev)
    pinned = torch.empty(UPLOAD_WORDS, dtype=torch.int32).pin_memory()

    def kernel() -> None:
        x.add_(1)

    def upload_then_kernel() -> None:
        pinned.to(dev, non_blocking=True)
        kernel()

    def two_kernels() -> None:
        kernel()
        kernel()

    print(f"device: {torch.cuda.get_device_name(dev)}")
    print(f"one small kernel                  {median_us(kernel):7.2f} us")
    print(f"{UPLOAD_WORDS * 4} B pinned copy, then the kernel {median_us(upload_then_kernel):7.2f} us")
    print(f"two small kernels                 {median_us(two_kernels):7.2f} us")


if __name__ == "__main__":
    main()
