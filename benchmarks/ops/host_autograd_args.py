"""What torch.library's autograd layer costs per call for a schema of 14 arguments (hstu_attention's), 10 (the same
with the scalars packed into an int[]) and 4, on do-nothing ops: the host-time floor under a registered op whose
gradient comes through ``register_autograd``, with no kernel in it.

    python -m benchmarks.ops.host_autograd_args                 # the GPU when there is one
    python -m benchmarks.ops.host_autograd_args --device cpu --quick

Back to back, µs a call: the forward without grad, with grad, a forward+backward through ``torch.autograd.grad``,
and ``torch._library.utils.fill_defaults`` on the 14-argument schema (the forward's wrapper calls it; it reads
``schema.arguments``, which pybind rebuilds whole, once per argument).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch._library.utils import fill_defaults

NAMESPACE = "recsys_bench_args"
SCHEMAS = {  # name: (schema, the arguments after q, k, v, seq_offsets)
    "args14": ("(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, float alpha, bool causal=True, "
               "Tensor? num_targets=None, int contextual_seq_len=0, int max_attn_len=0, Tensor? timestamps=None, "
               "Tensor? pos_bias=None, Tensor? time_bias=None, str time_bucket=\"log\") -> Tensor",
               (256, 1 / 64, True, None, 0, 0, None, None, None, "log")),
    "args10": ("(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, Tensor? num_targets, Tensor? timestamps, "
               "Tensor? pos_bias, Tensor? time_bias, float alpha, int[] config) -> Tensor",
               (None, None, None, None, 1 / 64, [256, 1, 0, 0, 0])),
    "args4": ("(Tensor q, Tensor k, Tensor v, Tensor seq_offsets) -> Tensor", ()),
}
_lib = None


def define_ops() -> None:
    """The do-nothing ops (once per process): forward and backward return empty tensors of the right shapes."""
    global _lib
    if _lib is not None:
        return
    _lib = torch.library.Library(NAMESPACE, "DEF")
    _lib.define("backward(Tensor g, Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor, Tensor)")
    _lib.impl("backward", lambda g, q, k, v: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)),
              "CompositeExplicitAutograd")

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])

    for name, (schema, rest) in SCHEMAS.items():
        _lib.define(name + schema)
        _lib.impl(name, lambda q, k, v, *a: torch.empty_like(v), "CompositeExplicitAutograd")

        def backward(ctx, g, n=4 + len(rest)):
            dq, dk, dv = getattr(torch.ops, NAMESPACE).backward(g, *ctx.saved_tensors)
            return (dq, dk, dv) + (None,) * (n - 3)

        torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup_context, lib=_lib)


def per_call_us(fn, device: torch.device, calls: int) -> float:
    for _ in range(max(calls // 10, 2)):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def measure(device: torch.device, calls: int) -> dict[str, dict[str, float]]:
    """{op name: {"fwd no-grad", "fwd grad", "fwd+bwd": µs a call}} and {"fill_defaults": {"args14": µs}}."""
    define_ops()
    q, k, v = (torch.randn(64, 2, 16, device=device, requires_grad=True) for _ in range(3))
    offsets, grad = torch.tensor([0, 64]), torch.randn(64, 2, 16, device=device)
    out: dict[str, dict[str, float]] = {}
    for name, (_, rest) in SCHEMAS.items():
        op = getattr(getattr(torch.ops, NAMESPACE), name)

        def no_grad(op=op, rest=rest):
            with torch.no_grad():
                op(q, k, v, offsets, *rest)

        out[name] = {"fwd no-grad": per_call_us(no_grad, device, calls),
                     "fwd grad": per_call_us(lambda: op(q, k, v, offsets, *rest), device, calls),
                     "fwd+bwd": per_call_us(lambda: torch.autograd.grad(op(q, k, v, offsets, *rest), [q, k, v], grad),
                                            device, calls)}
    schema = getattr(torch.ops, NAMESPACE).args14.default._schema
    out["fill_defaults"] = {"args14": per_call_us(lambda: fill_defaults(schema, (1,) * 14, {}), device, calls)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="few calls (smoke run)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, {device}: µs a call, back to back")
    for name, row in measure(device, 20 if args.quick else 2000).items():
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
