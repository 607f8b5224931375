"""QAT embedding bags: every backend against the float64 reference, the straight-through sparse gradient,
bit-exact agreement with the INT4 lookup of the exported tables, opcheck, compile, export of the reference,
bad input, and the QAT / INT4 collections (to_int4, scale refresh, state_dict, KeyedJaggedTensor).

gradcheck does not apply: the fake-quantized forward is piecewise constant in the weight, and the STE gradient
is by definition not its derivative. The STE gradient is instead checked element by element against the
float64 gradient of the unquantized embedding bag, which it must equal.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import recsys_kernels as rk
from recsys_kernels.nn import EmbeddingBagConfig, Int4EmbeddingBagCollection, QATEmbeddingBagCollection
from recsys_kernels.reference import qat_embedding_bag as ref
from recsys_kernels.testing.int4_strategies import BagCase, bag_cases, random_table
from recsys_kernels.testing.tolerances import assert_close_to_reference
from tests.conftest import backend_params, require_backend

OP = "qat_embedding_bag"
qat_cases = bag_cases(one_dim=True, output_dtypes=(torch.float32,))


def qat_inputs(case: BagCase, device: str, scale_factor: float = 1.0) -> dict:
    weight = torch.cat(case.tables()).to(device)
    bags = case.bags(device)
    to = bags["table_offsets"]
    scale = rk.ops.table_scales(weight, to) * scale_factor
    return dict(weight=weight, indices=bags["indices"], offsets=bags["offsets"], table_offsets=to,
                per_sample_weights=bags["per_sample_weights"], table_scale=scale)


def run(backend: str, x: dict, pooling: str, qparams: str, **kw) -> torch.Tensor:
    with rk.use_backend(backend):
        return rk.ops.qat_embedding_bag(x["weight"], x["indices"], x["offsets"], table_offsets=x["table_offsets"],
                                        pooling=pooling, per_sample_weights=x["per_sample_weights"], qparams=qparams,
                                        table_scale=x["table_scale"] if qparams == "table" else None, **kw)


def ref_args(x: dict, pooling: str, qparams: str, weight=None) -> tuple:
    return (x["weight"] if weight is None else weight, x["indices"], x["offsets"], x["table_offsets"], pooling,
            x["per_sample_weights"], qparams, x["table_scale"] if qparams == "table" else None)


def dense_ste_grad(case: BagCase, x: dict, grad_out: torch.Tensor) -> torch.Tensor:
    """The unquantized embedding bag's gradient in float64, with Python loops."""
    E, D = x["weight"].shape
    T, B = case.T, case.B
    grad = torch.zeros(E, D, dtype=torch.float64)
    to = [0] if x["table_offsets"] is None else x["table_offsets"].tolist()
    off, idx = x["offsets"].tolist(), x["indices"].tolist()
    psw = x["per_sample_weights"]
    for k in range(T * B):
        t, b = divmod(k, B)
        lo, hi = off[k], off[k + 1]
        for p in range(lo, hi):
            w = 1.0 if psw is None else float(psw[p])
            if case.pooling == "mean":
                w /= hi - lo
            grad[to[t] + idx[p]] += w * grad_out[b, t * D:(t + 1) * D].double().cpu()
    return grad


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=qat_cases, qparams=st.sampled_from(ref.QPARAMS), scale_factor=st.sampled_from([1.0, 0.4, 3.0]))
def test_forward_matches_float64(device, backend, case, qparams, scale_factor):
    require_backend(OP, device, backend)
    x = qat_inputs(case, device, scale_factor)
    out = run(backend, x, case.pooling, qparams)
    exact = ref.qat_embedding_bag(*ref_args(x, case.pooling, qparams, x["weight"].double()))
    same = ref.qat_embedding_bag(*ref_args(x, case.pooling, qparams))
    assert out.device.type == device and out.shape == (case.B, case.T * case.dims[0])
    assert_close_to_reference(out, exact, same, "pooled")


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=qat_cases, qparams=st.sampled_from(ref.QPARAMS))
def test_gradient_is_sparse_straight_through(device, backend, case, qparams):
    require_backend(OP, device, backend)
    x = qat_inputs(case, device)
    weight = x["weight"].clone().requires_grad_(True)
    out = run(backend, x | dict(weight=weight), case.pooling, qparams)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed)).to(device)
    (grad,) = torch.autograd.grad(out, weight, grad_out)
    assert grad.layout == torch.sparse_coo and grad.shape == weight.shape
    assert grad._nnz() == case.N  # one row per occurrence, never a dense (E, D) tensor
    torch.testing.assert_close(grad.cpu().double().to_dense(), dense_ste_grad(case, x, grad_out), rtol=1e-5,
                               atol=1e-6)


def assert_same_pooled(int4: torch.Tensor, qat: torch.Tensor, backend: str) -> None:
    """The fused kernels sum each bag in index order, so the INT4 lookup of exported rows equals the QAT
    forward bit for bit. The reference pools with index_add_, whose CUDA atomics add in no fixed order: on
    CUDA it is equal up to that summation order."""
    if backend == "reference" and int4.is_cuda:
        torch.testing.assert_close(int4, qat, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(int4, qat)


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=qat_cases, qparams=st.sampled_from(ref.QPARAMS), scale_factor=st.sampled_from([1.0, 0.4]))
def test_int4_lookup_of_exported_rows_is_bit_identical(device, backend, case, qparams, scale_factor):
    require_backend(OP, device, backend)
    x = qat_inputs(case, device, scale_factor)
    qat = run(backend, x, case.pooling, qparams)
    with rk.use_backend(backend):  # rows exported as QATEmbeddingBagCollection.to_int4 does, on this backend
        if qparams == "row":
            packed = rk.ops.quantize_int4_rows(x["weight"])
        else:
            to = [0, x["weight"].shape[0]] if x["table_offsets"] is None else x["table_offsets"].tolist()
            packed = torch.cat([ref.table_int4_rows(x["weight"][to[t]:to[t + 1]], x["table_scale"][t])
                                for t in range(case.T)])
        int4 = rk.ops.int4_embedding_bag(packed, x["indices"], x["offsets"], D=case.dims[0],
                                         table_offsets=x["table_offsets"], pooling=case.pooling,
                                         per_sample_weights=x["per_sample_weights"])
    assert_same_pooled(int4, qat, backend)


def test_table_mode_codes_and_zero_scale():
    w = torch.tensor([[0.7, -0.7, 0.04, 3.0], [0.0, 0.0, 0.0, 0.0]])
    v = ref.fake_quantize(w, "table", torch.tensor([0.1, 0.0]))
    s = float(torch.tensor(0.1).half())
    # codes clamp to [-8, 7]: 3.0 / 0.1 -> 7; zero scale -> 0
    torch.testing.assert_close(v, torch.tensor([[7 * s, -7 * s, 0.0, 7 * s], [0.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"])
def test_opcheck(device, backend):
    require_backend(OP, device, backend)
    g = torch.Generator().manual_seed(4)
    weight = torch.cat([random_table(6, 8, g), random_table(4, 8, g)]).to(device).requires_grad_(True)
    indices = torch.tensor([1, 5, 5, 0, 2, 3, 0], device=device)
    offsets = torch.tensor([0, 3, 3, 5, 7], device=device, dtype=torch.int32)
    to = torch.tensor([0, 6, 10], device=device)
    psw = torch.rand(7, device=device)
    scale = rk.ops.table_scales(weight, to)
    op = torch.ops.recsys.qat_embedding_bag_triton if backend == "triton" else torch.ops.recsys.qat_embedding_bag
    # Autograd is exercised by the gradient tests (opcheck's autograd checks compare dense gradients).
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(op.default, (weight.detach(), indices, offsets, to, "sum", psw, "row", None, "error"))
    torch.library.opcheck(op.default, (weight, indices, offsets, to, "mean", None, "table", scale, "ignore"),
                          test_utils=utils)
    bwd = (torch.ops.recsys.qat_embedding_bag_triton_backward if backend == "triton"
           else torch.ops.recsys.qat_embedding_bag_backward)
    grad = torch.randn(2, 16, device=device)
    torch.library.opcheck(bwd.default, (grad, indices, offsets, to, "mean", psw, 10))
    torch.library.opcheck(torch.ops.recsys.qat_embedding_bag_reference.default,
                          (weight.detach(), indices, offsets, to, "sum", psw, "row", None, "error"))


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("qparams", ref.QPARAMS)
def test_compile_fullgraph_forward_and_backward(device, backend, qparams):
    require_backend(OP, device, backend)
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    g = torch.Generator().manual_seed(6)
    weight = random_table(30, 16, g).to(device).requires_grad_(True)
    indices = torch.randint(0, 30, (25,), generator=g).to(device)
    offsets = torch.tensor([0, 5, 5, 12, 25], device=device)
    scale = rk.ops.table_scales(weight)

    def step(w, i, o, s):
        out = rk.ops.qat_embedding_bag(w, i, o, pooling="mean", qparams=qparams, table_scale=s)
        return (out * torch.arange(16, device=out.device)).sum()

    with rk.use_backend(backend):
        loss = torch.compile(step, fullgraph=True, backend=compiler)(weight, indices, offsets, scale)
        (grad,) = torch.autograd.grad(loss, weight)
        eager = step(weight, indices, offsets, scale)
        (eager_grad,) = torch.autograd.grad(eager, weight)
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    assert grad.layout == torch.sparse_coo
    torch.testing.assert_close(grad.to_dense(), eager_grad.to_dense())


DATA_DEPENDENT = ("nonzero", "unique", "masked_select", "_local_scalar_dense", "item")


@pytest.mark.parametrize("qparams", ref.QPARAMS)
def test_reference_exports_with_static_shapes(qparams):
    class Forward(torch.nn.Module):
        def forward(self, weight, indices, offsets, to, psw, scale):
            return ref.qat_embedding_bag(weight, indices, offsets, to, "mean", psw, qparams, scale, "ignore")

    class Backward(torch.nn.Module):
        def forward(self, grad, indices, offsets, to, psw):
            return ref.qat_embedding_bag_backward(grad, indices, offsets, to, "mean", psw, 17)

    class Scales(torch.nn.Module):
        def forward(self, weight, to):
            return ref.table_scales(weight, to, 2)

    g = torch.Generator().manual_seed(0)
    weight = torch.cat([random_table(10, 8, g), random_table(7, 8, g)])
    indices, offsets = torch.randint(0, 7, (12,), generator=g), torch.tensor([0, 2, 5, 5, 9, 9, 12])
    to, psw = torch.tensor([0, 10, 17]), torch.rand(12)
    for module, args in [(Forward(), (weight, indices, offsets, to, psw, torch.tensor([0.1, 0.2]))),
                         (Backward(), (torch.randn(3, 16), indices, offsets, to, psw)),
                         (Scales(), (weight, to))]:
        graph = torch.export.export(module, args).graph
        targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
        bad = [t for t in targets if any(k in t for k in DATA_DEPENDENT)]
        assert not bad, f"data-dependent ops in the reference: {bad}"


def _inputs(device):
    g = torch.Generator().manual_seed(8)
    return dict(weight=random_table(6, 8, g).to(device), indices=torch.tensor([0, 1, 2, 5], device=device),
                offsets=torch.tensor([0, 1, 4], device=device))


BAD_INPUTS = [
    ("out of range", lambda x: x | dict(indices=x["indices"] + 3), {}),
    ("non-decreasing", lambda x: x | dict(offsets=torch.tensor([0, 3, 1, 4], device=x["offsets"].device)), {}),
    ("end at N", lambda x: x | dict(offsets=torch.tensor([0, 1, 5], device=x["offsets"].device)), {}),
    ("even number", lambda x: x | dict(weight=x["weight"][:, :7].contiguous()), {}),
    ("float32", lambda x: x | dict(weight=x["weight"].half()), {}),
    ("contiguous", lambda x: x | dict(weight=x["weight"].t().contiguous().t()[:, :8]), {}),
    ("per_sample_weights must have shape", lambda x: x, {"per_sample_weights": torch.ones(3)}),
    ("qparams", lambda x: x, {"qparams": "channel"}),
    ("table_scale must have shape", lambda x: x, {"qparams": "table", "table_scale": torch.ones(2)}),
    ("table_scale must be float32", lambda x: x,
     {"qparams": "table", "table_scale": torch.ones(1, dtype=torch.float64)}),
    ("pooling", lambda x: x, {"pooling": "max"}),
    ("table_offsets end at row", lambda x: x | dict(offsets=torch.tensor([0, 1, 2, 3, 4], device=x["offsets"].device)),
     {"table_offsets": torch.tensor([0, 3, 9])}),
]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,mutate,kwargs", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(device, backend, needle, mutate, kwargs):
    require_backend(OP, device, backend)
    x = mutate(_inputs(device))
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=needle):
        rk.ops.qat_embedding_bag(x["weight"], x["indices"], x["offsets"], **kwargs)


@pytest.mark.parametrize("device,backend", backend_params(("cuda",)))
def test_device_mismatch_raises(device, backend):
    require_backend(OP, device, backend)
    x = _inputs("cuda")
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="same device"):
        rk.ops.qat_embedding_bag(x["weight"], x["indices"].cpu(), x["offsets"])
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="same device"):
        rk.ops.qat_embedding_bag(x["weight"], x["indices"], x["offsets"], qparams="table", table_scale=torch.ones(1))


def test_per_sample_weights_requiring_grad_raise():
    x = _inputs("cpu")
    with pytest.raises(ValueError, match="per_sample_weights"):
        rk.ops.qat_embedding_bag(x["weight"], x["indices"], x["offsets"],
                                 per_sample_weights=torch.ones(4, requires_grad=True))


@pytest.mark.parametrize("device,backend", backend_params())
def test_ignore_drops_rows_and_their_gradient(device, backend):
    require_backend(OP, device, backend)
    x = _inputs(device)
    weight = x["weight"].clone().requires_grad_(True)
    bad = torch.tensor([0, 1, -3, 600], device=device)
    with rk.use_backend(backend):
        out = rk.ops.qat_embedding_bag(weight, bad, x["offsets"], pooling="sum", bounds_check="ignore")
        (grad,) = torch.autograd.grad(out.sum(), weight)
        kept = rk.ops.qat_embedding_bag(x["weight"], torch.tensor([0, 1], device=device),
                                        torch.tensor([0, 1, 2], device=device))
    torch.testing.assert_close(out, kept)
    dense = grad.to_dense()
    assert dense[0].eq(1).all() and dense[1].eq(1).all() and dense[2:].eq(0).all()


# ---------------------------------------------------------------------------------------------- modules

TABLES = [EmbeddingBagConfig("user", 40, 16), EmbeddingBagConfig("item", 25, 16, "mean"),
          EmbeddingBagConfig("ctx", 9, 6), EmbeddingBagConfig("geo", 12, 16)]


def features(B: int, seed: int, device: str = "cpu", weights: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in TABLES:
        lengths = torch.randint(0, 5, (B,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        idx = torch.randint(0, t.num_embeddings, (int(offsets[-1]),), generator=g)
        value = (idx.to(device), offsets.to(device))
        if weights and t.pooling == "sum":
            value = value + (torch.rand(idx.shape[0], generator=g).to(device),)
        out[t.name] = value
    return out


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("qparams", ref.QPARAMS)
def test_collection_to_int4_is_exact_and_trains_sparsely(device, backend, qparams):
    require_backend(OP, device, backend)
    qat = QATEmbeddingBagCollection(TABLES, qparams=qparams, scale_refresh_every=2, device=device, seed=0)
    opt = torch.optim.SparseAdam(list(qat.parameters()), lr=0.05)
    with rk.use_backend(backend):
        for step in range(3):
            out = qat(features(4, step, device, weights=True))
            assert out.shape == (4, qat.output_dim)
            out.square().sum().backward()
            assert all(p.grad.layout == torch.sparse_coo for p in qat.parameters())
            opt.step()
            opt.zero_grad()
        qat.eval()
        int4 = qat.to_int4()
        for seed in (10, 11):
            f = features(5, seed, device, weights=True)
            assert_same_pooled(int4(f), qat(f), backend)


def test_table_scales_refresh_every_k_training_steps():
    qat = QATEmbeddingBagCollection(TABLES[:2], qparams="table", scale_refresh_every=3, seed=1)
    w = qat.weights_0
    fresh = rk.ops.table_scales(w, qat.table_offsets_0)
    torch.testing.assert_close(qat.table_scale_0, fresh)
    with torch.no_grad():
        w.mul_(2)
    qat(features(2, 0))  # step 0: refresh
    torch.testing.assert_close(qat.table_scale_0, 2 * fresh)
    with torch.no_grad():
        w.mul_(2)
    qat(features(2, 1))
    qat(features(2, 2))  # steps 1, 2: stale
    torch.testing.assert_close(qat.table_scale_0, 2 * fresh)
    qat(features(2, 3))  # step 3: refresh
    torch.testing.assert_close(qat.table_scale_0, 4 * fresh)
    qat.eval()
    with torch.no_grad():
        w.mul_(2)
    qat(features(2, 4))  # eval: never refreshed
    torch.testing.assert_close(qat.table_scale_0, 4 * fresh)


@pytest.mark.parametrize("qparams", ref.QPARAMS)
def test_state_dict_round_trip_through_cpu(qparams):
    qat = QATEmbeddingBagCollection(TABLES, qparams=qparams, seed=2)
    qat(features(3, 0))
    buf = io.BytesIO()
    torch.save(qat.state_dict(), buf)
    assert all(v.device.type == "cpu" for v in qat.state_dict().values() if isinstance(v, torch.Tensor))
    other = QATEmbeddingBagCollection(TABLES, qparams=qparams, seed=3)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    f = features(3, 1)
    other.eval(), qat.eval()
    assert torch.equal(other(f), qat(f)) and other._step == qat._step
    int4 = qat.to_int4()
    buf = io.BytesIO()
    torch.save(int4.state_dict(), buf)
    loaded = Int4EmbeddingBagCollection(TABLES)
    loaded.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(loaded(f), qat(f))


def test_int4_collection_from_float_and_kjt_like_input():
    g = torch.Generator().manual_seed(5)
    weights = {t.name: random_table(t.num_embeddings, t.embedding_dim, g) for t in TABLES}
    int4 = Int4EmbeddingBagCollection.from_float(TABLES, weights, output_dtype=torch.float16)
    f = features(3, 2)
    out = int4(f)
    assert out.dtype == torch.float16 and out.shape == (3, int4.output_dim)
    col = 0
    for t in TABLES:
        idx, off = f[t.name]
        expected = rk.ops.int4_embedding_bag(rk.ops.quantize_int4_rows(weights[t.name]), idx, off,
                                             D=t.embedding_dim, pooling=t.pooling, output_dtype=torch.float16)
        assert torch.equal(out[:, col:col + t.embedding_dim], expected)
        col += t.embedding_dim

    class Jagged:  # the slice of torchrec's JaggedTensor / KeyedJaggedTensor the modules use
        def __init__(self, values, offsets):
            self._v, self._o = values, offsets

        def values(self):
            return self._v

        def offsets(self):
            return self._o

        def weights_or_none(self):
            return None

    class KJT:
        def to_dict(self):
            return {name: Jagged(*value) for name, value in f.items()}

    assert torch.equal(int4(KJT()), out)


def test_collection_bad_config():
    with pytest.raises(ValueError, match="even"):
        QATEmbeddingBagCollection([EmbeddingBagConfig("a", 4, 5)])
    with pytest.raises(ValueError, match="unique"):
        Int4EmbeddingBagCollection([EmbeddingBagConfig("a", 4, 4), EmbeddingBagConfig("a", 4, 4)])
    with pytest.raises(ValueError, match="qparams"):
        QATEmbeddingBagCollection([EmbeddingBagConfig("a", 4, 4)], qparams="channel")
    qat = QATEmbeddingBagCollection(TABLES)
    f = features(2, 0)
    f["item"] = (f["item"][0], torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="same batch size"):
        qat(f)
    del f["item"]
    with pytest.raises(ValueError, match="no entry for table 'item'"):
        qat(f)

