"""How fast can this GPU gather random table rows at all? The ceiling the INT4 lookup is judged against.

    python -m benchmarks.ops.gather_ceiling            # CUDA only

A minimal Triton kernel that does only the memory work of an embedding-bag lookup: B = 65536 bags of L = 32
rows drawn uniformly from a 4M-row table, each row read whole (as 32-bit words) and the words of a bag summed,
one output row per bag. Row sizes 64, 80 (an INT4 row of D = 128: 4 bytes of qparams + 64 of nibbles, padded
to 16) and 128 bytes; rows start at multiples of their size, so an 80-byte row touches three 32-byte sectors
(96 bytes) and two 64-byte DRAM bursts (128 bytes). GB/s counts the row bytes read plus the output written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing


@triton.jit
def _gather_sum_kernel(table_ptr, idx_ptr, out_ptr, WORDS: tl.constexpr, BLOCK_W: tl.constexpr,
                       BAGS: tl.constexpr, L: tl.constexpr):
    bag0 = tl.program_id(0).to(tl.int64) * BAGS
    k = tl.arange(0, BAGS * L)
    rows = tl.load(idx_ptr + bag0 * L + k).to(tl.int64)
    w = tl.arange(0, BLOCK_W)
    x = tl.load(table_ptr + rows[:, None] * WORDS + w[None, :], mask=(w < WORDS)[None, :], other=0)
    s = tl.sum(tl.reshape(x, (BAGS, L, BLOCK_W)), axis=1)
    b = bag0 + tl.arange(0, BAGS)
    tl.store(out_ptr + b[:, None] * WORDS + w[None, :], s, mask=(w < WORDS)[None, :])


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200)


def main() -> None:
    dev = torch.device("cuda")
    E, B, L, BAGS = 4 * 1024 * 1024, 65536, 32, 4
    gen = torch.Generator(device=dev).manual_seed(0)
    idx = torch.randint(0, E, (B * L,), device=dev, generator=gen, dtype=torch.int32)
    src = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / _ms(lambda: dst.copy_(src)) / 1e6
    print(f"device {torch.cuda.get_device_name()}; copy {copy_gbs:.0f} GB/s (read + write of 256 MiB)")
    print(f"B = {B} bags of L = {L} uniform rows from E = {E}")
    print("| row bytes | ms | GB/s (rows + output) | % of copy | rows/s |")
    print("|---|---|---|---|---|")
    for row_bytes in (64, 80, 128):
        words = row_bytes // 4
        table = torch.randint(0, 1 << 20, (E, words), device=dev, dtype=torch.int32, generator=gen)
        out = torch.empty(B, words, device=dev, dtype=torch.int32)
        block_w = triton.next_power_of_2(words)
        launch = lambda: _gather_sum_kernel[(B // BAGS,)](table, idx, out, WORDS=words, BLOCK_W=block_w,
                                                           BAGS=BAGS, L=L, num_warps=4)
        launch()
        want = table[idx[: 2 * L].long()].view(2, L, words).sum(1, dtype=torch.int32)
        assert torch.equal(out[:2], want), "gather kernel gives a wrong sum"
        ms = _ms(launch)
        gbs = (B * L * row_bytes + B * row_bytes) / ms / 1e6
        print(f"| {row_bytes} | {ms:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {B * L / ms / 1e6:.2f}G |")
        del table, out


if __name__ == "__main__":
    main()
