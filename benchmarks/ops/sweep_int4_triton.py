"""Tile sweep of the Triton INT4 lookup: rows a step (BLOCK_L) x warps a program, against the CUDA kernel, on the
issue's three shapes (fp32 output, bounds_check="ignore"). Picks what ``bag_config`` should return.

    python -m benchmarks.ops.sweep_int4_triton            # GPU only, a few minutes

Each candidate replaces ``recsys_kernels.triton.int4_embedding_bag.bag_config`` for its run; a candidate that
fails (compile error, out of resources) is reported and skipped. Outputs are compared with the CUDA kernel's
(float32 sums; in the same order only when BLOCK_L = 1, but on these tables every partial sum is exact, so
max |diff| should be 0, as in the earlier sweeps).
"""

from __future__ import annotations

import sys

import torch
import triton.testing

from benchmarks.ops import bench_int4_embedding_bag as bench
from recsys_kernels import ops, use_backend
from recsys_kernels.triton import int4_embedding_bag as tri

# (BLOCK_L, num_warps) by bag length L. A lane holds BLOCK_L 16-byte row chunks in flight; registers a lane on
# sm_90 (ptxas, Triton 3.8): 80 (1 row), 96 (2), 136 (4, one warp; 128 with 2 or 4), 236 (8); none spill.
CANDIDATES = {1: [(1, 1), (1, 2), (1, 4), (1, 8)],
              32: [(4, 1), (2, 1), (8, 1), (1, 1), (4, 2), (4, 4), (2, 4), (8, 4)]}


def run(packed, indices, offsets, starts, D, T) -> torch.Tensor:
    return ops.int4_embedding_bag(packed, indices, offsets, D=[D] * T, table_offsets=starts, bounds_check="ignore")


def main() -> int:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    original = tri.bag_config
    for shape in bench.BENCH.shapes:
        packed, indices, offsets, starts, _ = bench.make_inputs(shape, torch.float32, device, gen)
        args = (packed, indices, offsets, starts, shape["D"], shape["T"])
        with use_backend("cuda"):
            want = run(*args)
            cuda_ms = triton.testing.do_bench(lambda: run(*args), warmup=25, rep=200)
        print(f"{shape}: cuda {cuda_ms:.4f} ms", flush=True)
        words = original(80, shape["L"])[1]
        best = None
        for block_l, warps in CANDIDATES[shape["L"]]:
            name = f"BLOCK_L={block_l:2d} warps={warps}"
            tri.bag_config = lambda *_, b=block_l, w=warps: (b, words, w)
            try:
                with use_backend("triton"):
                    got = run(*args)
                    ms = triton.testing.do_bench(lambda: run(*args), warmup=25, rep=200)
            except Exception as exc:  # a tile that does not compile must not cost the others
                print(f"  triton {name}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            finally:
                tri.bag_config = original
            err = (got - want).abs().max().item()
            print(f"  triton {name}: {ms:.4f} ms = {ms / cuda_ms:.2f}x cuda (max |diff| {err:.2e})", flush=True)
            if best is None or ms < best[0]:
                best = (ms, name)
        if best:
            print(f"  best: {best[1]}, {best[0]:.4f} ms = {best[0] / cuda_ms:.2f}x cuda", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
