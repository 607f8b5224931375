"""The ``recsys-kernels`` command (also ``python -m recsys_kernels``).

    recsys-kernels            what is live on this machine, and a quick timing of every op's backends
    recsys-kernels info       the same
"""

from __future__ import annotations

import argparse
import sys

import torch

import recsys_kernels as rk
from recsys_kernels import benchmarking


def _quick_dot_interaction(device: torch.device) -> list[tuple[str, str, float, float]]:
    """(op, backend, forward ms, forward+backward ms) for every backend live on ``device``."""
    B = 65536 if device.type == "cuda" else 2048
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    dense = torch.randn(B, 128, device=device, dtype=dtype, requires_grad=True)
    sparse = torch.randn(B, 26, 128, device=device, dtype=dtype, requires_grad=True)
    rows = []
    for backend in rk._backend.live_backends("dot_interaction", device.type):
        with rk.use_backend(backend):
            def forward():
                with torch.no_grad():
                    rk.ops.dot_interaction(dense, sparse)

            def forward_backward():
                rk.ops.dot_interaction(dense, sparse).sum().backward()

            rows.append((f"dot_interaction B={B} F=26 D=128 {str(dtype)[6:]}", backend,
                         benchmarking.time_ms(forward, device=device, warmup=2, rep=10),
                         benchmarking.time_ms(forward_backward, device=device, warmup=2, rep=10)))
    return rows


def info(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"recsys_kernels {rk.__version__}, torch {torch.__version__}, device {benchmarking.device_name(device)}")
    print("\nbackends live per op:")
    for op, live in rk.capabilities().items():
        print(f"  {op:24s} " + "  ".join(f"{b}={'yes' if ok else 'no'}" for b, ok in live.items()))
    print(f"\nquick timings on {device.type} (median ms):")
    print(f"  {'op':44s} {'backend':10s} {'fwd':>9s} {'fwd+bwd':>9s}")
    for op, backend, fwd, fwd_bwd in _quick_dot_interaction(device):
        print(f"  {op:44s} {backend:10s} {fwd:9.3f} {fwd_bwd:9.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p_info = sub.add_parser("info", help="live backends and quick op timings")
    for p in (parser, p_info):
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    return info(args)


if __name__ == "__main__":
    sys.exit(main())
