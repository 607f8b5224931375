"""How fast can this GPU gather random table rows at all? The ceiling the INT4 lookup is judged against.

    python -m benchmarks.ops.gather_ceiling            # CUDA only

`torch.index_select` of N = 2M random rows from a 4M-row table, for row sizes of 64, 80 (an INT4 row of
D = 128: 4 bytes of qparams + 64 of nibbles, padded to 16) and 128 bytes, and the same rows read in table
order. index_select also writes every gathered row out (sequentially), so the table gives both the raw time
and the read rate once the write is charged at copy bandwidth. Rows start at multiples of their size, so an
80-byte row touches three 32-byte sectors (96 bytes) and two 64-byte DRAM bursts (128 bytes).
"""

from __future__ import annotations

import torch
import triton.testing


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200)


def main() -> None:
    dev = torch.device("cuda")
    E, N = 4 * 1024 * 1024, 2 * 1024 * 1024
    gen = torch.Generator(device=dev).manual_seed(0)
    idx = torch.randint(0, E, (N,), device=dev, generator=gen)
    src = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = _ms(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    print(f"device {torch.cuda.get_device_name()}; copy {copy_gbs:.0f} GB/s (read + write of 256 MiB)")
    print("| row bytes | order | index_select ms | read GB/s (write charged at copy) | read % of copy |")
    print("|---|---|---|---|---|")
    for row_bytes in (64, 80, 128):
        table = torch.zeros(E, row_bytes // 4, dtype=torch.int32, device=dev)
        for order, rows in (("random", idx), ("sequential", torch.arange(N, device=dev))):
            ms = _ms(lambda: torch.index_select(table, 0, rows))
            write_ms = N * row_bytes / copy_gbs / 1e6
            read_gbs = N * row_bytes / max(ms - write_ms, 1e-6) / 1e6
            print(f"| {row_bytes} | {order} | {ms:.3f} | {read_gbs:.0f} | {100 * read_gbs / copy_gbs:.0f}% |")
        del table


if __name__ == "__main__":
    main()
