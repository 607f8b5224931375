"""Benchmark of ``recsys_kernels.ops.rowwise_adagrad_update_`` and of the fused
``embedding_bag_backward_rowwise_adagrad_`` (row-wise Adagrad fused into the embedding-bag backward).

    python -m benchmarks.ops.bench_rowwise_adagrad                          # GPU: both ops, fp32 weights
    python -m benchmarks.ops.bench_rowwise_adagrad --op update --dtypes fp32,bf16
    python -m benchmarks.ops.bench_rowwise_adagrad --device cpu --quick     # small shapes, CPU smoke run

update: E = 4M rows, D = 128, N = 65536 x 32 lookups with a heavy head (row = floor(E u³), u uniform;
about 1.2M distinct rows), gradient rows (N, D). Providers: reference (eager), reference-compiled, triton,
cuda, cpu, and FBGEMM's TBE (N bags of one lookup, so its pooled gradient is the gradient rows) when a CUDA
build of fbgemm_gpu is installed.
fused: the same table, B = 65536 bags of L = 32 lookups, pooled gradient (B, D). Providers: the fused op per
backend, "two-step-<backend>" = the pooled backward materialised as (N, D) gradient rows (as a sparse
nn.EmbeddingBag backward does) followed by rowwise_adagrad_update_ on that backend, and FBGEMM's TBE.
The FBGEMM rows time TBE's forward (the pooled lookup) plus its backward, which is where its update runs;
they are an upper bound of its update's time.

GB/s counts the minimum bytes (memory-bound): gradient rows (update) or pooled gradients (fused) read once,
each touched weight row and accumulator read and written once, indices read once; the distinct-row count U is
taken from the first input set.

The ops update their inputs in place, while the harness checks each provider on input set 0 against the
float64 reference. So the oracle works on copies, and each provider's first call (its check) first restores
set 0 to the values it was created with; the timed calls then keep updating the same tables, which is the
work of a training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from typing import Any, Callable, Sequence

import torch

from benchmarks import harness
from recsys_kernels import ops
from recsys_kernels.reference import rowwise_adagrad as reference

UPDATE_OP = "rowwise_adagrad_update_"
FUSED_OP = "embedding_bag_backward_rowwise_adagrad_"
HYPER = dict(lr=0.01, eps=1e-8)

_pristine: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, momentum) as created
_distinct: dict[tuple, int] = {}  # (op, shape, dtype) -> distinct rows of input set 0


def _heavy_head(E: int, n: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, device=device, generator=gen, dtype=torch.float64)
    return (E * u**3).long().clamp_(max=E - 1)


def _table(shape: dict[str, int], dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    weight = (0.1 * torch.randn(shape["E"], shape["D"], device=device, generator=gen)).to(dtype)
    momentum = torch.rand(shape["E"], device=device, generator=gen)
    _pristine[id(weight)] = (weight.clone(), momentum.clone())
    return weight, momentum


def _key(op: str, shape: dict[str, int], dtype: torch.dtype) -> tuple:
    return (op, tuple(sorted(shape.items())), dtype)


def make_update_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    """weight (E, D), momentum (E,) float32, indices (N,) int64 with a heavy head, grad_rows (N, D)."""
    weight, momentum = _table(shape, dtype, device, gen)
    indices = _heavy_head(shape["E"], shape["N"], device, gen)
    grad_rows = torch.randn(shape["N"], shape["D"], device=device, generator=gen).to(dtype)
    _distinct.setdefault(_key("update", shape, dtype), int(torch.unique(indices).numel()))
    return weight, momentum, indices, grad_rows


def make_fused_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    """weight, momentum, indices (B*L,) int64, offsets (B + 1,) int64 (bags of L), grad_output (B, D)."""
    weight, momentum = _table(shape, dtype, device, gen)
    B, L = shape["B"], shape["L"]
    indices = _heavy_head(shape["E"], B * L, device, gen)
    offsets = torch.arange(0, B * L + 1, L, device=device, dtype=torch.int64)
    grad_output = torch.randn(B, shape["D"], device=device, generator=gen).to(dtype)
    _distinct.setdefault(_key("fused", shape, dtype), int(torch.unique(indices).numel()))
    return weight, momentum, indices, offsets, grad_output


def update_bytes(case: harness.Case) -> float:
    s = torch.finfo(case.dtype).bits // 8
    N, D = case.shape["N"], case.shape["D"]
    U = _distinct[_key("update", case.shape, case.dtype)]
    return N * D * s + U * (2 * D * s + 2 * 4) + N * 8


def fused_bytes(case: harness.Case) -> float:
    s = torch.finfo(case.dtype).bits // 8
    B, L, D = case.shape["B"], case.shape["L"], case.shape["D"]
    U = _distinct[_key("fused", case.shape, case.dtype)]
    return B * D * s + U * (2 * D * s + 2 * 4) + B * L * 8 + (B + 1) * 8


# ------------------------------------------------------------------------------------------ callables

def _update(weight, momentum, indices, grad_rows):
    ops.rowwise_adagrad_update_(weight, momentum, indices, grad_rows, **HYPER)
    return weight, momentum


def _fused(weight, momentum, indices, offsets, grad_output):
    ops.embedding_bag_backward_rowwise_adagrad_(weight, momentum, indices, offsets, grad_output, **HYPER)
    return weight, momentum


def _two_step(weight, momentum, indices, offsets, grad_output):
    _, grad_rows = reference.embedding_bag_grad_rows(indices, offsets, grad_output, dtype=grad_output.dtype)
    ops.rowwise_adagrad_update_(weight, momentum, indices, grad_rows, **HYPER)
    return weight, momentum


def _oracle(step: Callable[..., Any]) -> Callable[..., Any]:
    """The float64-capable reference of ``step``, on copies (the harness calls it on input set 0)."""
    def run(weight, momentum, *rest):
        w, m = weight.clone(), momentum.clone()
        from recsys_kernels import use_backend

        with use_backend("reference"):
            step(w, m, *rest)
        return w, m
    return run


def _restoring(p: harness.Provider) -> harness.Provider:
    """``p`` whose first call (the harness's correctness check on set 0) restores the set's tables first."""
    def factory(case: harness.Case, device: torch.device) -> Callable[..., Any]:
        fn = p.factory(case, device)
        first = [True]

        def run(weight, momentum, *rest):
            if first[0]:
                first[0] = False
                w0, m0 = _pristine[id(weight)]
                weight.copy_(w0)
                momentum.copy_(m0)
            return fn(weight, momentum, *rest)
        return run
    return dataclasses.replace(p, factory=factory)


def _compiled_reference(fn: Callable[..., Any]) -> harness.Provider:
    p = harness.compiled_reference_provider(fn)
    return _restoring(p)


# --------------------------------------------------------------------------------------------- FBGEMM

def _fbgemm_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return "fbgemm_gpu not installed"
    if device.type != "cuda":
        return "the FBGEMM TBE provider runs on CUDA"
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    if not torch._C._dispatch_has_kernel_for_dispatch_key("fbgemm::split_embedding_codegen_forward_unweighted_cuda",
                                                          "CUDA"):
        return "fbgemm_gpu has no CUDA kernels here (fbgemm-gpu-cpu is installed)"
    return None


def _fbgemm_factory(bags_of_one: bool) -> Callable[[harness.Case, torch.device], Callable[..., Any]]:
    """TBE forward + backward with EXACT_ROWWISE_ADAGRAD; one TBE per input set, created from its table."""
    def factory(case: harness.Case, device: torch.device) -> Callable[..., Any]:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            EmbeddingLocation,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
        precision = {torch.float32: SparseType.FP32, torch.float16: SparseType.FP16,
                     torch.bfloat16: SparseType.BF16}[case.dtype]
        tbes: dict[int, Any] = {}

        def run(weight, momentum, indices, *rest):
            tbe = tbes.get(id(weight))
            if tbe is None:
                tbe = SplitTableBatchedEmbeddingBagsCodegen(
                    embedding_specs=[(weight.shape[0], weight.shape[1], EmbeddingLocation.DEVICE, ComputeDevice.CUDA)],
                    optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=HYPER["lr"], eps=HYPER["eps"],
                    weights_precision=precision, output_dtype=precision, stochastic_rounding=False, device=device)
                w0, m0 = _pristine[id(weight)]
                with torch.no_grad():
                    tbe.split_embedding_weights()[0].copy_(w0)
                    tbe.split_optimizer_states()[0][0].copy_(m0)
                tbes[id(weight)] = tbe
            if bags_of_one:
                grad = rest[0]
                offsets = torch.arange(indices.shape[0] + 1, device=device, dtype=torch.int64)
            else:
                offsets, grad = rest
            out = tbe(indices, offsets)
            out.backward(grad)
            return tbe.split_embedding_weights()[0], tbe.split_optimizer_states()[0][0]
        return run
    return factory


# -------------------------------------------------------------------------------------------- benches

def update_providers() -> list[harness.Provider]:
    backend = [_restoring(harness.backend_provider(UPDATE_OP, b, _update)) for b in ("reference",)]
    return backend + [
        _compiled_reference(_update),
        *[_restoring(harness.backend_provider(UPDATE_OP, b, _update)) for b in ("triton", "cuda", "cpu")],
        harness.Provider("fbgemm-tbe", _fbgemm_factory(True), _fbgemm_unavailable),
    ]


def fused_providers() -> list[harness.Provider]:
    out = [_restoring(harness.backend_provider(FUSED_OP, "reference", _fused)), _compiled_reference(_fused)]
    for b in ("triton", "cuda", "cpu"):
        out.append(_restoring(harness.backend_provider(FUSED_OP, b, _fused)))
        out.append(_restoring(harness.backend_provider(UPDATE_OP, b, _two_step, name=f"two-step-{b}")))
    out.append(harness.Provider("fbgemm-tbe", _fbgemm_factory(False), _fbgemm_unavailable))
    return out


UPDATE_BENCH = harness.OpBench(
    name=UPDATE_OP.rstrip("_"),
    shapes=[{"E": 4 * 2**20, "D": 128, "N": 65536 * 32}],
    quick_shapes=[{"E": 65536, "D": 64, "N": 16384}],
    make_inputs=make_update_inputs,
    reference=_oracle(_update),
    providers=update_providers(),
    modes=("fwd",),
    dtypes=("fp32",),
    bytes_fn=update_bytes,
)

FUSED_BENCH = harness.OpBench(
    name=FUSED_OP.rstrip("_"),
    shapes=[{"E": 4 * 2**20, "D": 128, "B": 65536, "L": 32}],
    quick_shapes=[{"E": 65536, "D": 64, "B": 512, "L": 8}],
    make_inputs=make_fused_inputs,
    reference=_oracle(_fused),
    providers=fused_providers(),
    modes=("fwd",),
    dtypes=("fp32",),
    bytes_fn=fused_bytes,
)


def main(argv: Sequence[str] | None = None) -> list[harness.Row]:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--op", choices=("update", "fused", "both"), default="both")
    args, rest = ap.parse_known_args(argv)
    rows: list[harness.Row] = []
    if args.op in ("update", "both"):
        rows += harness.main(UPDATE_BENCH, rest)
    if args.op in ("fused", "both"):
        rows += harness.main(FUSED_BENCH, rest)
    return rows


if __name__ == "__main__":
    main()
