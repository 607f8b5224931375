"""Tile sweep of the Triton INT4 lookup: rows a step (BLOCK_L) x num_warps, against the CUDA kernel, on the
issue's three shapes (fp32 output, bounds_check="ignore"). Picks what ``bag_config`` should return.

    python -m benchmarks.ops.sweep_int4_triton            # GPU only

Each candidate replaces ``recsys_kernels.triton.int4_embedding_bag.bag_config`` for its run; its output is
compared with the CUDA kernel's (same float32 sums in the same row order, so to rounding).
"""

from __future__ import annotations

import sys

import torch
import triton.testing

from benchmarks.ops import bench_int4_embedding_bag as bench
from recsys_kernels import ops, use_backend
from recsys_kernels.triton import int4_embedding_bag as tri

# (BLOCK_L, num_warps). The sweeps of 2026-12-06: (8, 4) was best of (8|16|32) x (4|8|16); below that, one warp
# with 4 or 8 rows a step won (bag_config now picks (4, 1); (1, 1) when bags hold one row).
CANDIDATES = {1: [(1, 1), (1, 2)], 32: [(8, 4), (4, 1), (8, 1), (16, 1), (8, 2), (16, 2), (32, 2)]}


def run(packed, indices, offsets, starts, D, T) -> torch.Tensor:
    return ops.int4_embedding_bag(packed, indices, offsets, D=[D] * T, table_offsets=starts, bounds_check="ignore")


def main() -> int:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    original = tri.bag_config
    for shape in bench.BENCH.shapes:
        packed, indices, offsets, starts, carrier = bench.make_inputs(shape, torch.float32, device, gen)
        D, T = shape["D"], shape["T"]
        args = (packed, indices, offsets, starts, D, T)
        with use_backend("cuda"):
            want = run(*args)
            cuda_ms = triton.testing.do_bench(lambda: run(*args), warmup=25, rep=200)
        print(f"{shape}: cuda {cuda_ms:.4f} ms", flush=True)
        for block_l, warps in CANDIDATES[shape["L"]]:
            words = original(80, shape["L"])[1]
            tri.bag_config = lambda *_, b=block_l, w=warps, n=words: (b, n, w)
            try:
                with use_backend("triton"):
                    got = run(*args)
                    ms = triton.testing.do_bench(lambda: run(*args), warmup=25, rep=200)
                err = (got - want).abs().max().item()
                print(f"  triton BLOCK_L={block_l:2d} warps={warps:2d}: {ms:.4f} ms = {ms / cuda_ms:.2f}x cuda "
                      f"(max |diff| {err:.2e})", flush=True)
            except Exception as exc:  # a tile that does not compile must not cost the others
                print(f"  triton BLOCK_L={block_l:2d} warps={warps:2d}: {type(exc).__name__}: {str(exc)[:120]}")
            finally:
                tri.bag_config = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
