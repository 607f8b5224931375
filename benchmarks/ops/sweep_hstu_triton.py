"""Tile sweep of the Triton HSTU attention kernels (forward, dK/dV, dQ) against the CUDA kernels, bf16, on issue 3's
shapes (bias off) and the HSTU model's ML-1M attention (B = 128, N = 200, one head, d = 50, bias on). Picks what
``recsys_kernels.triton.hstu_attention._tiles`` should return.

    python -m benchmarks.ops.sweep_hstu_triton            # GPU only
    python -m benchmarks.ops.sweep_hstu_triton --quick    # the first candidate of each kernel, two shapes
    python -m benchmarks.ops.sweep_hstu_triton --kernels "" --bias   # defaults only, CUDA vs Triton, bias on/off

Each candidate (BM, BN, num_warps, num_stages) is set through ``TILE_OVERRIDE`` for one kernel while the other
kernels keep their defaults; its output is compared with the default tiles' (same sums in another order, so
bf16 rounding apart). The backward is timed as the whole backward op, so a dK/dV candidate's time includes the
default dQ kernel and the reverse.
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton.testing

from benchmarks.ops import bench_hstu_attention as bench
from recsys_kernels.triton import hstu_attention as tri

CANDIDATES = {
    "fwd": [(64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (128, 128, 8, 2)],
    "dkdv": [(64, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3)],
    "dq": [(64, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (128, 32, 8, 3)],
}
MODEL_SHAPE = dict(B=128, N=200, H=1, d=50, bias=1)


def _args(shape, inputs):
    q, k, v, offsets, ts, pos, time = inputs
    bias = bool(shape["bias"])
    return (q, k, v, offsets, shape["N"], 1.0 / q.shape[2], True, None, 0, 0, ts if bias else None,
            pos if bias else None, time if bias else None, "log")


def _fwd(backend: str, args):
    op = torch.ops.recsys.hstu_attention_triton if backend == "triton" else torch.ops.recsys.hstu_attention
    return lambda: op(*args)


def _bwd(backend: str, grad, args):
    op = (torch.ops.recsys.hstu_attention_triton_backward if backend == "triton"
          else torch.ops.recsys.hstu_attention_backward)
    return lambda: op(grad, *args)


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60)


def _max_diff(got, want) -> float:
    got, want = (got,) if isinstance(got, torch.Tensor) else got, (want,) if isinstance(want, torch.Tensor) else want
    return max(((g.float() - w.float()).abs().max().item() if g.numel() else 0.0) for g, w in zip(got, want))


def sweep_shape(shape: dict[str, int], kernels: dict[str, list[tuple[int, int, int, int]]]) -> None:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = bench.make_inputs(shape, torch.bfloat16, device, gen)
    args = _args(shape, inputs)
    grad = torch.randn_like(inputs[2])
    case = bench.harness.Case(dict(shape), torch.bfloat16, "fwd")
    fwd_flops = bench.flops(case)
    bwd_flops = bench.flops(bench.harness.Case(dict(shape), torch.bfloat16, "bwd"))
    print(f"\n{shape}", flush=True)
    base = {}
    for mode, flops_ in (("fwd", fwd_flops), ("bwd", bwd_flops)):
        for backend in ("cuda", "triton"):
            fn = _fwd(backend, args) if mode == "fwd" else _bwd(backend, grad, args)
            try:
                out = fn()
                ms = _time(fn)
                base[(mode, backend)] = out
                print(f"  {mode} {backend:6s} default: {ms:.4f} ms  {flops_ / ms / 1e9:6.1f} TFLOP/s", flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  {mode} {backend:6s} default: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
    for kernel, cands in kernels.items():
        mode = "fwd" if kernel == "fwd" else "bwd"
        flops_ = fwd_flops if mode == "fwd" else bwd_flops
        want = base.get((mode, "triton"))
        best = None
        for cand in cands:
            tri.TILE_OVERRIDE = {kernel: cand}
            fn = _fwd("triton", args) if mode == "fwd" else _bwd("triton", grad, args)
            try:
                got = fn()
                ms = _time(fn)
                err = _max_diff(got, want) if want is not None else float("nan")
                print(f"  {kernel:4s} {cand}: {ms:.4f} ms  {flops_ / ms / 1e9:6.1f} TFLOP/s  (max |diff| {err:.2e})",
                      flush=True)
                if best is None or ms < best[1]:
                    best = (cand, ms)
            except Exception as exc:  # noqa: BLE001 - a tile that does not compile must not cost the others
                print(f"  {kernel:4s} {cand}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            finally:
                tri.TILE_OVERRIDE = {}
        if best is not None:
            print(f"  BEST {kernel} {best[0]} {best[1]:.4f} ms", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kernels", default="fwd,dkdv,dq",
                        help="comma-separated subset of fwd, dkdv, dq; empty: only the default tiles, both backends")
    parser.add_argument("--bias", action="store_true", help="issue 3's shapes with the relative bias on, too")
    args = parser.parse_args(argv)
    shapes = [s for s in bench.SHAPES if args.bias or not s["bias"]] + [MODEL_SHAPE, dict(MODEL_SHAPE, bias=0)]
    kernels = {k: CANDIDATES[k] for k in args.kernels.split(",") if k}
    if args.quick:
        shapes = [shapes[0], MODEL_SHAPE]
        kernels = {k: v[:1] for k, v in CANDIDATES.items()}
    for shape in shapes:
        sweep_shape(shape, kernels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
