"""rowwise_adagrad_update_ and embedding_bag_backward_rowwise_adagrad_: every backend against the float64
reference, the reference against a per-row loop, fused == pooled backward + update, bit-identical reruns,
stochastic rounding, opcheck, torch.compile, export of the reference, bad input; the RowWiseAdagrad optimizer
and the FusedEmbeddingBagCollection module. The FBGEMM cross-check is tests/test_fbgemm_rowwise_adagrad.py."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import given

import recsys_kernels as rk
from recsys_kernels.nn import EmbeddingBagConfig, FusedEmbeddingBagCollection
from recsys_kernels.optim import RowWiseAdagrad, RowWiseAdagradConfig
from recsys_kernels.reference import rowwise_adagrad as ref
from recsys_kernels.testing.export_check import data_dependent_ops
from recsys_kernels.testing.embedding_strategies import (
    FusedBagCase,
    RowwiseAdagradCase,
    assert_update_close,
    fused_bag_cases,
    rowwise_adagrad_cases,
)
from tests.conftest import backend_params, require_backend

UPDATE = "rowwise_adagrad_update_"
FUSED = "embedding_bag_backward_rowwise_adagrad_"


def update(backend: str, *args, **kwargs) -> None:
    with rk.use_backend(backend):
        rk.ops.rowwise_adagrad_update_(*args, **kwargs)


def fused(backend: str, *args, **kwargs) -> None:
    with rk.use_backend(backend):
        rk.ops.embedding_bag_backward_rowwise_adagrad_(*args, **kwargs)


def clone_all(tensors):
    return [t.clone() if isinstance(t, torch.Tensor) else t for t in tensors]


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or not t.is_floating_point() else t.detach().to("cpu", torch.float64)


def naive_update(weight, momentum, indices, grad_rows, lr, eps, weight_decay, weight_decay_mode):
    """The definition, row by row with Python loops, in float64: the reference's own oracle."""
    weight, momentum = weight.clone().double(), momentum.clone().double()
    grads: dict[int, torch.Tensor] = {}
    for p, r in enumerate(indices.tolist()):
        grads[r] = grads.get(r, 0) + grad_rows[p].double()
    for r, g in grads.items():
        w = weight[r]
        g2 = g + weight_decay * w if weight_decay_mode == "l2" else g
        momentum[r] += (g2 * g2).mean()
        mult = lr / (momentum[r].sqrt() + eps)
        corr = {"none": 1.0, "l2": 1 - mult * weight_decay, "decoupled": 1 - lr * weight_decay}[weight_decay_mode]
        weight[r] = corr * w - mult * g
    return weight, momentum


# ----------------------------------------------------------------------------------- reference vs definition

@given(case=rowwise_adagrad_cases(dtypes=(torch.float32,)))
def test_reference_matches_definition(case: RowwiseAdagradCase):
    weight, momentum, indices, grad = case.inputs("cpu")
    w, m = weight.double(), momentum.double()
    ref.rowwise_adagrad_update_(w, m, indices, grad.double(), **case.hyper)
    w_naive, m_naive = naive_update(weight, momentum, indices, grad, **case.hyper)
    torch.testing.assert_close(w, w_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, m_naive, rtol=1e-12, atol=1e-12)


@given(case=fused_bag_cases(dtypes=(torch.float32,)))
def test_reference_fused_is_pooled_backward_then_update(case: FusedBagCase):
    x = case.inputs("cpu")
    go = x["grad_output"].double()
    rows, grad_rows = [], []
    D, B = case.D, case.B
    offs = x["offsets"].tolist()
    base = [0, *torch.tensor(case.rows).cumsum(0).tolist()]
    for k in range(case.T * B):  # the embedding-bag backward written out, bag by bag
        t, b = divmod(k, B)
        for p in range(offs[k], offs[k + 1]):
            scale = 1.0 / (offs[k + 1] - offs[k]) if case.pooling == "mean" else 1.0
            if x["per_sample_weights"] is not None:
                scale = float(x["per_sample_weights"][p])
            rows.append(base[t] + int(x["indices"][p]))
            grad_rows.append(go[b, t * D:(t + 1) * D] * scale)
    w_naive, m_naive = naive_update(x["weight"], x["momentum"], torch.tensor(rows, dtype=torch.int64),
                                    torch.stack(grad_rows) if grad_rows else torch.zeros(0, D, dtype=torch.float64),
                                    **case.hyper)
    w, m = x["weight"].double(), x["momentum"].double()
    ref.embedding_bag_backward_rowwise_adagrad_(w, m, x["indices"], x["offsets"], go,
                                                table_offsets=x["table_offsets"], pooling=case.pooling,
                                                per_sample_weights=f64(x["per_sample_weights"]), **case.hyper)
    torch.testing.assert_close(w, w_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, m_naive, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ every backend vs float64

def _check_update_case(device: str, backend: str, case: RowwiseAdagradCase) -> None:
    weight, momentum, indices, grad = case.inputs(device)
    w0, m0 = weight.clone(), momentum.clone()
    update(backend, weight, momentum, indices, grad, **case.hyper)
    we, me = w0.double().cpu(), m0.double().cpu()
    ref.rowwise_adagrad_update_(we, me, indices.cpu(), grad.double().cpu(), **case.hyper)
    ws, ms = w0.cpu().clone(), m0.cpu().clone()
    ref.rowwise_adagrad_update_(ws, ms, indices.cpu(), grad.cpu(), **case.hyper)
    assert weight.device.type == device
    assert_update_close(weight, we, ws, w0, "weight")
    assert_update_close(momentum, me, ms, m0, "momentum")


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=rowwise_adagrad_cases())
def test_update_matches_float64(device, backend, case):
    require_backend(UPDATE, device, backend)
    _check_update_case(device, backend, case)


def _fused_args(x: dict, device_type: str | None = None, dtype: torch.dtype | None = None):
    def mv(t):
        if t is None:
            return None
        t = t.cpu() if device_type == "cpu" else t
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return mv(x["indices"]), mv(x["offsets"]), mv(x["grad_output"]), dict(
        table_offsets=mv(x["table_offsets"]), per_sample_weights=mv(x["per_sample_weights"]))


def _check_fused_case(device: str, backend: str, case: FusedBagCase) -> None:
    x = case.inputs(device)
    weight, momentum = x["weight"], x["momentum"]
    w0, m0 = weight.clone(), momentum.clone()
    idx, off, go, kw = _fused_args(x)
    fused(backend, weight, momentum, idx, off, go, pooling=case.pooling, **kw, **case.hyper)
    we, me = w0.double().cpu(), m0.double().cpu()
    idx, off, go, kw = _fused_args(x, "cpu", torch.float64)
    ref.embedding_bag_backward_rowwise_adagrad_(we, me, idx, off, go, pooling=case.pooling, **kw, **case.hyper)
    ws, ms = w0.cpu().clone(), m0.cpu().clone()
    idx, off, go, kw = _fused_args(x, "cpu")
    ref.embedding_bag_backward_rowwise_adagrad_(ws, ms, idx, off, go, pooling=case.pooling, **kw, **case.hyper)
    assert_update_close(weight, we, ws, w0, "weight")
    assert_update_close(momentum, me, ms, m0, "momentum")


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=fused_bag_cases())
def test_fused_matches_float64(device, backend, case):
    require_backend(FUSED, device, backend)
    _check_fused_case(device, backend, case)


LONG_RUNS = [  # (E, D, N, pattern): runs crossing many 32-position chunks, vector and scalar row paths
    (50, 128, 300, "half_on_one"),
    (7, 130, 200, "uniform"),
    (3, 1000, 100, "all_equal"),
    (1000, 4, 257, "uniform"),
]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("E,D,N,pattern", LONG_RUNS)
def test_long_runs_and_wide_rows(device, backend, E, D, N, pattern):
    require_backend(UPDATE, device, backend)
    for dtype, mode in [(torch.float32, "l2"), (torch.bfloat16, "decoupled")]:
        case = RowwiseAdagradCase(E, D, N, pattern, dtype, False, torch.int64, mode, 0.1, 1e-8, 0.1, "random",
                                  seed=E + D + N)
        _check_update_case(device, backend, case)


@pytest.mark.parametrize("device,backend", backend_params())
def test_fused_equals_pooled_backward_then_update(device, backend):
    require_backend(FUSED, device, backend)
    case = FusedBagCase(rows=(9, 5, 40), B=6, D=16, lengths=tuple((k * 7) % 6 for k in range(18)),
                        pattern="half_on_one", pooling="mean", per_sample_weights=False, pass_table_offsets=True,
                        dtype=torch.float32, grad_in_float32=False, index_dtype=torch.int64,
                        offsets_dtype=torch.int32, weight_decay_mode="l2", lr=0.1, weight_decay=0.05,
                        momentum_init="random", seed=3)
    for pooling, psw in [("mean", False), ("sum", True)]:
        case = dataclasses.replace(case, pooling=pooling, per_sample_weights=psw)
        x = case.inputs(device)
        idx, off, go, kw = _fused_args(x)
        w1, m1 = x["weight"].clone(), x["momentum"].clone()
        fused(backend, w1, m1, idx, off, go, pooling=pooling, **kw, **case.hyper)
        rows, grad_rows = ref.embedding_bag_grad_rows(idx, off, go, kw["table_offsets"], pooling,
                                                      kw["per_sample_weights"])
        w2, m2 = x["weight"].clone(), x["momentum"].clone()
        update(backend, w2, m2, rows, grad_rows, **case.hyper)
        torch.testing.assert_close(w1, w2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m1, m2, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("device,backend", backend_params())
def test_two_runs_are_bit_identical(device, backend):
    require_backend(UPDATE, device, backend)
    case = RowwiseAdagradCase(20, 24, 2000, "half_on_one", torch.float32, False, torch.int64, "l2", 0.1, 1e-8,
                              0.01, "random", seed=11)
    fcase = FusedBagCase(rows=(30, 3), B=64, D=12, lengths=tuple((k * 5) % 9 for k in range(128)),
                         pattern="half_on_one", pooling="sum", per_sample_weights=True, pass_table_offsets=True,
                         dtype=torch.float32, grad_in_float32=False, index_dtype=torch.int32,
                         offsets_dtype=torch.int64, weight_decay_mode="none", lr=0.1, weight_decay=0.0,
                         momentum_init="zero", seed=5)
    results = []
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    for run in range(2):
        if device == "cpu":  # the CPU kernel's result must not depend on the thread count either
            torch.set_num_threads(1 if run == 0 else threads)
        try:
            # The reference sums duplicates with index_add_, deterministic on CUDA only in deterministic mode.
            torch.use_deterministic_algorithms(device == "cuda" and backend == "reference")
            weight, momentum, indices, grad = case.inputs(device)
            update(backend, weight, momentum, indices, grad, **case.hyper)
            x = fcase.inputs(device)
            idx, off, go, kw = _fused_args(x)
            fused(backend, x["weight"], x["momentum"], idx, off, go, pooling="sum", **kw, **fcase.hyper)
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
        results.append((weight, momentum, x["weight"], x["momentum"]))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- stochastic rounding

@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stochastic_rounding(device, backend, dtype):
    require_backend(UPDATE, device, backend)
    case = RowwiseAdagradCase(6, 64, 40, "uniform", dtype, True, torch.int64, "none", 0.05, 1e-8, 0.0, "random",
                              seed=7)
    weight, momentum, indices, grad = case.inputs(device)
    runs = {}
    for seed in (1, 1, 2):
        w, m = weight.clone(), momentum.clone()
        update(backend, w, m, indices, grad, **case.hyper, stochastic_rounding_seed=seed)
        runs.setdefault(seed, []).append(w)
    assert torch.equal(runs[1][0], runs[1][1]), "the same seed must give the same weights"
    assert not torch.equal(runs[1][0], runs[2][0]), "another seed should round some elements differently"
    # Each result is one of the two neighbours of the float32 value: compare with the float32 reference.
    w32, m32 = weight.float().cpu(), momentum.cpu().clone()
    ref.rowwise_adagrad_update_(w32, m32, indices.cpu(), grad.cpu(), **case.hyper)
    got = runs[1][0].cpu().float()
    lo, hi = torch.minimum(w32.to(dtype).float(), got), torch.maximum(w32.to(dtype).float(), got)
    gap = (hi - lo)
    ulp = torch.finfo(dtype).eps * w32.abs().clamp(min=1e-3) * 2
    assert bool((gap <= ulp).all()), "stochastic rounding moved a value by more than one step"
    # The same hash in every backend: the reference's stochastic rounding agrees almost everywhere.
    wr, mr = weight.cpu().clone(), momentum.cpu().clone()
    ref.rowwise_adagrad_update_(wr, mr, indices.cpu(), grad.cpu(), **case.hyper, stochastic_rounding_seed=1)
    assert (got == wr.float()).float().mean() > 0.97
    # Values the step does not move stay put (stochastic rounding of a representable value is exact).
    w, m = weight.clone(), momentum.clone()
    update(backend, w, m, indices, grad, lr=0.0, stochastic_rounding_seed=3)
    assert torch.equal(w, weight)


def test_stochastic_rounding_is_unbiased():
    x = torch.full((4, 4096), 1.0 + 2.0**-9, dtype=torch.float32)  # a quarter of a bf16 step above 1
    rows = torch.arange(4)
    out = ref.stochastic_round(x, rows, ref.sr_key(123), torch.bfloat16).float()
    assert set(out.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    frac_up = (out > 1).float().mean().item()
    assert abs(frac_up - 0.25) < 0.02


# -------------------------------------------------------------------------------- opcheck and compile

def _small_inputs(device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 8, generator=g).to(device, dtype)
    momentum = torch.rand(10, generator=g).to(device)
    indices = torch.tensor([1, 3, 1, 5, 0, 3, 3], device=device)
    offsets = torch.tensor([0, 2, 2, 5, 7], device=device)  # T = 2, B = 2
    table_offsets = torch.tensor([0, 4, 10], device=device)
    grad_rows = torch.randn(7, 8, generator=g).to(device, dtype)
    grad_output = torch.randn(2, 16, generator=g).to(device, dtype)
    return weight, momentum, indices, offsets, table_offsets, grad_rows, grad_output


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"])
def test_opcheck(device, backend):
    require_backend(UPDATE, device, backend)
    weight, momentum, indices, offsets, table_offsets, grad_rows, grad_output = _small_inputs(device)
    if backend == "triton":
        up, fu = torch.ops.recsys.rowwise_adagrad_update_triton_, torch.ops.recsys.embedding_bag_backward_rowwise_adagrad_triton_
    else:
        up, fu = torch.ops.recsys.rowwise_adagrad_update_, torch.ops.recsys.embedding_bag_backward_rowwise_adagrad_
    torch.library.opcheck(up.default, (weight, momentum, indices, grad_rows),
                          dict(lr=0.1, weight_decay=0.01, weight_decay_mode="l2"))
    torch.library.opcheck(fu.default, (weight, momentum, indices, offsets, grad_output),
                          dict(table_offsets=table_offsets, pooling="mean", lr=0.1))


def test_opcheck_embedding_bag_forward():
    weight, momentum, indices, offsets, table_offsets, *_ = _small_inputs("cpu")
    torch.library.opcheck(torch.ops.recsys.embedding_bag_rowwise_adagrad.default,
                          (weight, momentum, indices, offsets, table_offsets, None, "sum", 0.1, 1e-8, 0.0, "none", -1))


@pytest.mark.parametrize("device,backend", backend_params())
def test_compile_fullgraph(device, backend):
    require_backend(UPDATE, device, backend)
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    weight, momentum, indices, offsets, table_offsets, grad_rows, grad_output = _small_inputs(device)

    def step(w, m, i, g, o, to, go):
        rk.ops.rowwise_adagrad_update_(w, m, i, g, lr=0.1, weight_decay=0.01, weight_decay_mode="decoupled")
        rk.ops.embedding_bag_backward_rowwise_adagrad_(w, m, i, o, go, table_offsets=to, lr=0.1)

    w_eager, m_eager = weight.clone(), momentum.clone()
    with rk.use_backend(backend):
        step(w_eager, m_eager, indices, grad_rows, offsets, table_offsets, grad_output)
        compiled = torch.compile(step, fullgraph=True, backend=compiler)
        compiled(weight, momentum, indices, grad_rows, offsets, table_offsets, grad_output)
    torch.testing.assert_close(weight, w_eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(momentum, m_eager, rtol=1e-6, atol=1e-6)


def test_reference_exports_with_static_shapes():
    class Update(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.randn(50, 16))
            self.register_buffer("momentum", torch.zeros(50))

        def forward(self, indices, grad_rows, offsets, table_offsets, grad_output):
            ref.rowwise_adagrad_update_(self.weight, self.momentum, indices, grad_rows, lr=0.1,
                                        weight_decay=0.1, weight_decay_mode="l2")
            ref.embedding_bag_backward_rowwise_adagrad_(self.weight, self.momentum, indices, offsets, grad_output,
                                                        table_offsets=table_offsets, pooling="mean", lr=0.1)
            return self.weight.sum()

    indices = torch.tensor([1, 7, 1, 20, 3, 3])
    offsets = torch.tensor([0, 2, 2, 4, 6])
    args = (indices, torch.randn(6, 16), offsets, torch.tensor([0, 25, 50]), torch.randn(2, 32))
    graph = torch.export.export(Update(), args).graph
    assert not data_dependent_ops(graph), data_dependent_ops(graph)
    targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    assert any("sort" in t for t in targets) and any("index_put" in t for t in targets), targets


# --------------------------------------------------------------------------------------------- bad input

def _bad_update_cases():
    def case(needle, **changes):
        return pytest.param(needle, changes, id=needle + ":" + ",".join(changes))
    return [
        case("out of range", indices=lambda t: t.index_fill(0, torch.tensor([2], device=t.device), 10)),
        case("out of range", indices=lambda t: t.index_fill(0, torch.tensor([0], device=t.device), -1)),
        case("grad_rows", grad_rows=lambda t: t[:, :5]),
        case("grad_rows", grad_rows=lambda t: t[:4]),
        case("momentum must be float32", momentum=lambda t: t.half()),
        case("momentum", momentum=lambda t: t[:5]),
        case("indices must be int32 or int64", indices=lambda t: t.float()),
        case("weight must have shape", weight=lambda t: t[0]),
        case("weight must be contiguous", weight=lambda t: t.t().contiguous().t()),
        case("grad_rows must have weight's dtype", grad_rows=lambda t: t.double()),
        case("lr", lr=-0.1),
        case("eps", eps=-1.0),
        case("weight_decay_mode", weight_decay_mode="adamw"),
    ]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,changes", _bad_update_cases())
def test_update_bad_input_raises_naming_the_argument(device, backend, needle, changes):
    require_backend(UPDATE, device, backend)
    weight, momentum, indices, _, _, grad_rows, _ = _small_inputs(device)
    args = dict(weight=weight, momentum=momentum, indices=indices, grad_rows=grad_rows)
    kwargs = dict(lr=0.1)
    for k, v in changes.items():
        if k in args:
            args[k] = v(args[k])
        else:
            kwargs[k] = v
    w0, m0 = weight.clone(), momentum.clone()
    with pytest.raises((ValueError, RuntimeError), match=needle):
        update(backend, *args.values(), **kwargs)
    assert torch.equal(weight, w0) and torch.equal(momentum, m0), "nothing may be written before the error"


def _bad_fused_cases():
    def case(needle, **changes):
        return pytest.param(needle, changes, id=needle + ":" + ",".join(changes))
    dev = lambda t, v: torch.tensor(v, device=t.device, dtype=t.dtype)  # noqa: E731
    return [
        case("out of range for table 1", indices=lambda t: t.index_fill(0, torch.tensor([5], device=t.device), 6)),
        case("out of range", indices=lambda t: t.index_fill(0, torch.tensor([0], device=t.device), -2)),
        case("offsets must be non-decreasing", offsets=lambda t: dev(t, [0, 3, 2, 5, 7])),
        case("offsets must start at 0 and end at N", offsets=lambda t: dev(t, [0, 2, 2, 5, 6])),
        case("offsets must have T\\*B \\+ 1", offsets=lambda t: t[:4]),
        case("table_offsets must be non-decreasing", table_offsets=lambda t: dev(t, [0, 6, 4])),
        case("table_offsets must lie in", table_offsets=lambda t: dev(t, [0, 4, 11])),
        case("grad_output", grad_output=lambda t: t[:, :15]),
        case("pooling", pooling="max"),
        case("per_sample_weights is only supported", pooling="mean",
             per_sample_weights=lambda t: torch.ones(7, device=t.device)),
        case("momentum must be float32", momentum=lambda t: t.double()),
        case("lr", lr=-1.0),
        case("weight_decay_mode", weight_decay_mode="L2"),
    ]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,changes", _bad_fused_cases())
def test_fused_bad_input_raises_naming_the_argument(device, backend, needle, changes):
    require_backend(FUSED, device, backend)
    weight, momentum, indices, offsets, table_offsets, _, grad_output = _small_inputs(device)
    args = dict(weight=weight, momentum=momentum, indices=indices, offsets=offsets, grad_output=grad_output)
    kwargs = dict(table_offsets=table_offsets, lr=0.1)
    for k, v in changes.items():
        if k in args:
            args[k] = v(args[k])
        elif k == "table_offsets":
            kwargs[k] = v(table_offsets)
        elif k == "per_sample_weights":
            kwargs[k] = v(weight)
        else:
            kwargs[k] = v
    w0, m0 = weight.clone(), momentum.clone()
    with pytest.raises((ValueError, RuntimeError), match=needle):
        fused(backend, *args.values(), **kwargs)
    assert torch.equal(weight, w0) and torch.equal(momentum, m0), "nothing may be written before the error"


@pytest.mark.parametrize("device,backend", backend_params(("cuda",)))
def test_device_mismatch_raises(device, backend):
    require_backend(UPDATE, device, backend)
    weight, momentum, indices, _, _, grad_rows, _ = _small_inputs("cuda")
    with pytest.raises((ValueError, RuntimeError), match="same device"):
        update(backend, weight, momentum, indices.cpu(), grad_rows, lr=0.1)


# ------------------------------------------------------------------------------------------- optimizer

def test_optimizer_matches_the_op_for_sparse_embeddings():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 8, sparse=True)
    bag = torch.nn.EmbeddingBag(20, 8, mode="mean", sparse=True)
    w_emb, w_bag = emb.weight.detach().clone(), bag.weight.detach().clone()
    m_emb, m_bag = torch.zeros(30), torch.zeros(20)
    opt = RowWiseAdagrad(list(emb.parameters()) + list(bag.parameters()), lr=0.1, weight_decay=0.01,
                         weight_decay_mode="decoupled")
    for step in range(3):
        idx = torch.randint(0, 30, (12,))
        bidx, boff = torch.randint(0, 20, (9,)), torch.tensor([0, 4, 4, 9])
        opt.zero_grad()
        loss = emb(idx).square().sum() + bag(bidx, boff).sin().sum()
        loss.backward()
        grads = [(p.grad._indices()[0].clone(), p.grad._values().clone()) for p in (emb.weight, bag.weight)]
        opt.step()
        for (i, v), w, m in zip(grads, (w_emb, w_bag), (m_emb, m_bag)):
            ref.rowwise_adagrad_update_(w, m, i, v, lr=0.1, weight_decay=0.01, weight_decay_mode="decoupled")
        torch.testing.assert_close(emb.weight.detach(), w_emb, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bag.weight.detach(), w_bag, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[emb.weight]["momentum"], m_emb)


def test_optimizer_rejects_dense_gradients_and_bad_hyperparameters():
    dense = torch.nn.Embedding(5, 3)  # sparse=False: dense (E, D) gradients
    opt = RowWiseAdagrad(dense.parameters())
    dense(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="dense gradient"):
        opt.step()
    with pytest.raises(ValueError, match="lr"):
        RowWiseAdagrad(dense.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay_mode"):
        RowWiseAdagrad(dense.parameters(), weight_decay_mode="adam")
    with pytest.raises(ValueError, match="2-D"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3))])


def test_optimizer_state_dict_round_trip():
    def train(module, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            opt.zero_grad()
            module(torch.randint(0, 40, (16,), generator=g)).square().sum().backward()
            opt.step()

    torch.manual_seed(1)
    a = torch.nn.Embedding(40, 6, sparse=True)
    b = copy.deepcopy(a)
    opt_a = RowWiseAdagrad(a.parameters(), lr=0.2, eps=1e-6, weight_decay=0.1, weight_decay_mode="l2")
    train(a, opt_a, 2, seed=0)
    train(a, opt_a, 2, seed=1)
    opt_b = RowWiseAdagrad(b.parameters(), lr=0.2, eps=1e-6, weight_decay=0.1, weight_decay_mode="l2")
    train(b, opt_b, 2, seed=0)
    saved = copy.deepcopy(opt_b.state_dict())
    b2 = copy.deepcopy(b)
    opt_b2 = RowWiseAdagrad(b2.parameters(), lr=0.5)
    opt_b2.load_state_dict(saved)
    assert opt_b2.param_groups[0]["lr"] == 0.2 and opt_b2.param_groups[0]["weight_decay_mode"] == "l2"
    train(b2, opt_b2, 2, seed=1)
    assert torch.equal(a.weight, b2.weight)
    assert torch.equal(opt_a.state[a.weight]["momentum"], opt_b2.state[b2.weight]["momentum"])


# ---------------------------------------------------------------------------------------------- module

TABLES = [EmbeddingBagConfig("user", 30, 8, "sum"), EmbeddingBagConfig("item", 50, 8, "sum"),
          EmbeddingBagConfig("genre", 7, 4, "mean"), EmbeddingBagConfig("city", 12, 8, "mean")]


def _features(B: int, seed: int, tables=TABLES, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in tables:
        lengths = torch.randint(0, 4, (B,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        out[t.name] = (torch.randint(0, t.num_embeddings, (int(offsets[-1]),), generator=g).to(device),
                       offsets.to(device))
    return out


def test_collection_forward_matches_embedding_bag_and_backward_applies_the_update():
    opt = RowWiseAdagradConfig(lr=0.1, weight_decay=0.01, weight_decay_mode="l2")
    ebc = FusedEmbeddingBagCollection(TABLES, optimizer=opt, seed=0)
    assert ebc.output_dim == 28
    # The same tables as plain sparse EmbeddingBags trained by RowWiseAdagrad: the two must stay equal.
    plain = {t.name: torch.nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode=t.pooling, sparse=True)
             for t in TABLES}
    for name, w in ebc.split_embedding_weights().items():
        plain[name].weight.data.copy_(w)
    plain_opt = RowWiseAdagrad([p.weight for p in plain.values()], lr=0.1, weight_decay=0.01, weight_decay_mode="l2")
    for step in range(3):
        feats = _features(5, step)
        out = ebc(feats)
        expected = torch.cat([plain[t.name](feats[t.name][0], feats[t.name][1][:-1]) for t in TABLES], dim=1)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        grad = torch.randn_like(out)
        out.backward(grad)
        plain_opt.zero_grad()
        expected.backward(grad)
        plain_opt.step()
        for name, w in ebc.split_embedding_weights().items():
            assert ebc.get_parameter(ebc.parameter_name(name)).grad is None
            torch.testing.assert_close(w, plain[name].weight.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_collection_half_precision_tables(dtype):
    ebc = FusedEmbeddingBagCollection(TABLES[:2], optimizer=RowWiseAdagradConfig(lr=0.05, stochastic_rounding=True),
                                      dtype=dtype, seed=0)
    before = {k: v.clone() for k, v in ebc.split_embedding_weights().items()}
    feats = _features(4, 0, TABLES[:2])
    out = ebc(feats)
    assert out.dtype == dtype and out.shape == (4, 16)
    out.float().square().sum().backward()
    changed = [not torch.equal(before[k], v) for k, v in ebc.split_embedding_weights().items()]
    assert all(changed)
    state = ebc.state_dict()
    assert {"weights_0", "momentum_0", "_extra_state"} <= set(state)
    assert state["_extra_state"]["stochastic_rounding_step"] == 1
    copy_ = FusedEmbeddingBagCollection(TABLES[:2], dtype=dtype)
    copy_.load_state_dict(state)
    assert copy_._sr_step == 1 and torch.equal(copy_.weights_0, ebc.weights_0)


def test_collection_rejects_bad_tables_and_inputs():
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingBagConfig("a", 3, 4, "max")
    with pytest.raises(ValueError, match="unique"):
        FusedEmbeddingBagCollection([EmbeddingBagConfig("a", 3, 4), EmbeddingBagConfig("a", 5, 4)])
    ebc = FusedEmbeddingBagCollection(TABLES[:2])
    with pytest.raises(ValueError, match="item"):
        ebc({"user": _features(2, 0)["user"]})
    feats = _features(2, 0, TABLES[:2])
    feats["item"] = (feats["item"][0], feats["item"][1][:2])
    with pytest.raises(ValueError, match="same batch size"):
        ebc(feats)
