"""INT4 rows and the TBE-style INT4 embedding bag: every backend against the float64 reference, quantization
bytes and round-trip bound, opcheck, compile, export of the reference, bounds checking and bad input.
(Not differentiable: no gradient or gradcheck tests. FBGEMM cross-checks: tests/test_fbgemm_int4.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys_kernels as rk
from recsys_kernels.reference import int4_embedding_bag as ref
from recsys_kernels.testing.export_check import assert_exports_static
from recsys_kernels.testing.int4_strategies import BagCase, bag_cases, random_table, table_cases
from recsys_kernels.testing.tolerances import assert_close_to_reference
from tests.conftest import backend_params, require_backend

OP = "int4_embedding_bag"
KERNEL_PARAMS = [p for p in backend_params() if p.values[1] != "reference"]


def run_bag(backend: str, packed, indices, offsets, **kwargs) -> torch.Tensor:
    with rk.use_backend(backend):
        return rk.ops.int4_embedding_bag(packed, indices, offsets, **kwargs)


def bag_op(backend: str):
    return torch.ops.recsys.int4_embedding_bag_triton if backend == "triton" else torch.ops.recsys.int4_embedding_bag


def check_against_reference(backend: str, case: BagCase, device: str) -> torch.Tensor:
    """The case's lookup on ``backend``, checked against the float64 reference (within the reference's own
    rounding at the case's output dtype); returns the output."""
    packed, bags = case.packed(device), case.bags(device)
    out = run_bag(backend, packed, bags["indices"], bags["offsets"], **case.kwargs(device))
    args = (packed, bags["indices"], bags["offsets"], list(case.dims), bags["table_offsets"], case.pooling,
            bags["per_sample_weights"])
    assert out.device.type == device and out.dtype == case.output_dtype
    assert_close_to_reference(out, ref.int4_embedding_bag(*args, torch.float64),
                              ref.int4_embedding_bag(*args, case.output_dtype), "pooled")
    return out


def naive_bag(tables: list[torch.Tensor], dims, indices, offsets, pooling, psw) -> torch.Tensor:
    """The definition with Python loops, from dequantized float64 tables."""
    T = len(tables)
    B = (offsets.shape[0] - 1) // T
    deq = [ref.unpack_rows(t, d, torch.float64) for t, d in zip(tables, dims)]
    out = torch.zeros(B, sum(dims), dtype=torch.float64)
    col = 0
    for t in range(T):
        for b in range(B):
            k = t * B + b
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            for p in range(lo, hi):
                w = 1.0 if psw is None else float(psw[p])
                out[b, col:col + dims[t]] += w * deq[t][int(indices[p])]
            if pooling == "mean" and hi > lo:
                out[b, col:col + dims[t]] /= hi - lo
        col += dims[t]
    return out


# ------------------------------------------------------------------------------------- quantize / dequantize

@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
@given(case=table_cases(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_quantize_bytes_match_reference(device, backend, case, dtype):
    require_backend("quantize_int4_rows", device, backend)
    E, D, seed = case
    w = random_table(E, D, torch.Generator().manual_seed(seed)).to(dtype)
    with rk.use_backend(backend):
        got = rk.ops.quantize_int4_rows(w.to(device))
    assert got.dtype == torch.uint8 and got.shape == (E, ref.row_bytes(D))
    assert torch.equal(got.cpu(), ref.quantize_int4_rows(w))


@given(case=table_cases())
def test_round_trip_error_at_most_half_a_step(case):
    """|dequantize(quantize(w)) - w| <= scale / 2 (+ the fp16 rounding of the bias, which FBGEMM's format
    stores as fp16(min) and clamps below; and a float32 ulp)."""
    E, D, seed = case
    w = random_table(E, D, torch.Generator().manual_seed(seed))
    packed = ref.quantize_int4_rows(w)
    back = ref.dequantize_int4_rows(packed, D).double()
    qp = packed[:, :4].contiguous().view(torch.float16).double()
    scale, bias = qp[:, 0], qp[:, 1]
    w64 = w.double()
    bound = scale / 2 + (bias - w64.amin(1)).clamp(min=0) + 4 * torch.finfo(torch.float32).eps * w64.abs().amax(1)
    assert ((back - w64).abs() <= bound[:, None]).all()
    # Rows have 16-byte padding, zeroed.
    assert (packed[:, 4 + D // 2:] == 0).all()


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=table_cases(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_dequantize_matches_reference(device, backend, case, dtype):
    require_backend("dequantize_int4_rows", device, backend)
    E, D, seed = case
    packed = ref.quantize_int4_rows(random_table(E, D, torch.Generator().manual_seed(seed)))
    with rk.use_backend(backend):
        got = rk.ops.dequantize_int4_rows(packed.to(device), D, dtype)
    assert got.dtype == dtype and got.shape == (E, D)
    # q * scale is exact in float32, so every backend rounds exactly once: bit-identical results.
    assert torch.equal(got.cpu(), ref.dequantize_int4_rows(packed, D, dtype))


# --------------------------------------------------------------------------------------------------- lookup

@settings(max_examples=8)
@given(case=bag_cases(max_batch=3, max_rows=8, max_len=6, dims=(2, 4, 6, 10)))
def test_reference_matches_definition(case):
    bags = case.bags("cpu")
    tables = [ref.quantize_int4_rows(w) for w in case.tables()]
    packed = case.packed("cpu")
    out = ref.int4_embedding_bag(packed, bags["indices"], bags["offsets"], list(case.dims), bags["table_offsets"],
                                 case.pooling, bags["per_sample_weights"], torch.float64)
    expected = naive_bag(tables, case.dims, bags["indices"], bags["offsets"], case.pooling, bags["per_sample_weights"])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=bag_cases())
def test_forward_matches_float64(device, backend, case: BagCase):
    require_backend(OP, device, backend)
    check_against_reference(backend, case, device)


@pytest.mark.parametrize("device,backend", backend_params())
def test_empty_bags_edges_and_large_shapes(device, backend):
    require_backend(OP, device, backend)
    cases = [
        BagCase((5,), (512,), 3, (40, 0, 40), "uniform", "mean", True, False, False, torch.int64, torch.int64,
                torch.float32, 1),
        BagCase((3, 9), (2, 130), 2, (0, 0, 1, 0), "all_equal", "mean", False, True, True, torch.int32, torch.int32,
                torch.bfloat16, 2),
        BagCase((4,), (8,), 0, (), "uniform", "sum", False, True, False, torch.int32, torch.int64, torch.float16, 3),
    ]
    for case in cases:
        out = check_against_reference(backend, case, device)
        lengths = torch.tensor(case.lengths).reshape(case.T, case.B) if case.B else torch.zeros(case.T, 0)
        col = 0
        for t, d in enumerate(case.dims):  # empty bags pool to exactly zero, "mean" included
            empty = (lengths[t] == 0).nonzero().flatten().tolist()
            assert (out[empty, col:col + d] == 0).all()
            col += d


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("short_bags", [True, False], ids=["one-row-bags", "long-bags"])
def test_many_blocks_of_short_and_long_bags(device, backend, short_bags):
    """Hundreds of bags over tables of D 128, 64 and 40 span many CUDA blocks, and blocks straddle bags and
    tables: one-row bags (Criteo) take the shared-memory staged store, bags averaging >= 8 rows the direct one."""
    require_backend(OP, device, backend)
    B, dims = 300, (128, 64, 40)
    g = torch.Generator().manual_seed(7)
    cap = 1 if short_bags else 24
    lengths = tuple(torch.randint(1 if short_bags else 8, cap + 1, (len(dims) * B,), generator=g).tolist())
    for output_dtype, pooling in ((torch.float32, "sum"), (torch.bfloat16, "mean")):
        case = BagCase((1000, 50, 7), dims, B, lengths, "uniform", pooling, not short_bags, True, False, torch.int64,
                       torch.int32, output_dtype, 11)
        check_against_reference(backend, case, device)


@pytest.mark.parametrize("device,backend", backend_params())
def test_bounds_check_ignore_skips_out_of_range_rows(device, backend):
    require_backend(OP, device, backend)
    g = torch.Generator().manual_seed(3)
    tables = [ref.quantize_int4_rows(random_table(E, 16, g)) for E in (6, 4)]
    packed = torch.cat(tables).to(device)
    to = torch.tensor([0, 6, 10], device=device)
    good = torch.tensor([0, 5, 1, 3, 2, 0, 3], device=device)
    bad = torch.tensor([0, 5, -1, 3, 4, 2**40, 3], device=device)  # -1, and 4 is past table 1's 4 rows
    offsets = torch.tensor([0, 2, 4, 6, 7], device=device)
    keep = torch.tensor([1, 1, 0, 1, 0, 0, 1], dtype=torch.float32, device=device)
    for pooling in ("sum", "mean"):
        out = run_bag(backend, packed, bad, offsets, D=16, table_offsets=to, pooling=pooling, bounds_check="ignore")
        # Dropped occurrences count toward the bag length of "mean" but add nothing.
        expected = run_bag("reference", packed, good, offsets, D=16, table_offsets=to, pooling=pooling,
                           per_sample_weights=keep)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        with pytest.raises((ValueError, RuntimeError), match=r"indices\[2\] = -1 is out of range for table 0"):
            run_bag(backend, packed, bad, offsets, D=16, table_offsets=to, pooling=pooling)


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"])
def test_bounds_check_ignore_never_reads_past_bad_offsets(device, backend):
    """Kernels clamp offsets into [0, N]: nonsense offsets give some result, never a crash."""
    require_backend(OP, device, backend)
    packed = ref.quantize_int4_rows(torch.randn(5, 8)).to(device)
    indices = torch.tensor([0, 1, 2, 3], device=device)
    for offsets in ([0, 3, 1, 9], [-5, 2, 2, 1000], [7, 0, 4, 4]):
        out = run_bag(backend, packed, indices, torch.tensor(offsets, device=device), D=8, bounds_check="ignore")
        assert out.shape == (3, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_opcheck(device, backend):
    require_backend(OP, device, backend)
    g = torch.Generator().manual_seed(1)
    w = random_table(6, 8, g).to(device)
    packed = ref.quantize_int4_rows(w.cpu()).to(device)
    flat = torch.cat([packed.reshape(-1), ref.quantize_int4_rows(random_table(3, 34, g)).reshape(-1).to(device)])
    indices = torch.tensor([1, 5, 5, 0, 2, 1, 0], device=device)
    offsets = torch.tensor([0, 3, 3, 5, 7], device=device, dtype=torch.int32)
    psw = torch.rand(7, device=device)
    to = torch.tensor([0, 6, 9], device=device)
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.recsys
    torch.library.opcheck(getattr(ops, f"quantize_int4_rows{suffix}").default, (w,))
    torch.library.opcheck(getattr(ops, f"dequantize_int4_rows{suffix}").default, (packed, 8, torch.float16))
    op = bag_op(backend).default
    torch.library.opcheck(op, (packed, indices, offsets, [8], None, "sum", psw, torch.float32, "error"))
    torch.library.opcheck(op, (flat, indices, offsets, [8, 34], to, "mean", None, torch.bfloat16, "ignore"))


@pytest.mark.parametrize("device,backend", backend_params())
def test_compile_fullgraph(device, backend):
    require_backend(OP, device, backend)
    # Inductor cannot run user Triton kernels on CPU tensors (the interpreter is eager-only).
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    g = torch.Generator().manual_seed(2)
    packed = ref.quantize_int4_rows(random_table(20, 32, g)).to(device)
    indices = torch.randint(0, 20, (30,), generator=g).to(device)
    offsets = torch.tensor([0, 4, 4, 10, 30], device=device)

    def f(packed, indices, offsets):
        return rk.ops.int4_embedding_bag(packed, indices, offsets, D=32, pooling="mean").square().sum(1)

    with rk.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend=compiler)(packed, indices, offsets)
        eager = f(packed, indices, offsets)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", backend_params())
def test_compiled_quantize_writes_the_eager_bytes(device, backend):
    """FBGEMM compatibility survives torch.compile: inductor once dropped the reference's fp16 rounding of the
    scale and bias (a cast pair inside a fused kernel), changing ~15% of the rows it wrote."""
    require_backend("quantize_int4_rows", device, backend)
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    g = torch.Generator().manual_seed(3)
    w = torch.cat([random_table(400, 16, g), random_table(100, 16, g) * 1e-6, random_table(20, 16, g) * 1e5]).to(device)
    with rk.use_backend(backend):
        eager = rk.ops.quantize_int4_rows(w)
        got = torch.compile(rk.ops.quantize_int4_rows, fullgraph=True, backend=compiler)(w)
    assert torch.equal(got, eager)


def test_round_to_fp16_is_the_fp16_cast():
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-7, 1e-5, 1e-2, 1.0, 1e3, 6e4)])
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, -65520.0, 1e9, 2.98e-8, 2.99e-8, 5.96e-8, 1e-12,
                          6.1035e-5, 2049.0, 2051.0, float("inf"), float("-inf")])
    x = torch.cat([x, edges])
    torch.testing.assert_close(ref.round_to_fp16(x), x.to(torch.float16).to(torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("flat", [False, True])
def test_reference_exports_with_static_shapes(flat):
    class Bag(torch.nn.Module):
        def forward(self, packed, indices, offsets, table_offsets, psw):
            dims = [16, 16] if not flat else [16, 40]
            return ref.int4_embedding_bag(packed, indices, offsets, dims, table_offsets, "mean", psw,
                                          torch.float32, "ignore")

    class Quant(torch.nn.Module):
        def forward(self, w):
            return ref.quantize_int4_rows(w), ref.dequantize_int4_rows(ref.quantize_int4_rows(w), 16)

    g = torch.Generator().manual_seed(0)
    tables = [ref.quantize_int4_rows(random_table(10, 16, g)),
              ref.quantize_int4_rows(random_table(7, 40 if flat else 16, g))]
    packed = torch.cat([t.reshape(-1) for t in tables]) if flat else torch.cat(tables)
    indices = torch.randint(0, 7, (12,), generator=g)
    offsets = torch.tensor([0, 2, 5, 5, 9, 9, 12])
    assert_exports_static(Bag(), (packed, indices, offsets, torch.tensor([0, 10, 17]), torch.rand(12)))
    assert_exports_static(Quant(), (random_table(10, 16, g),))


def _bag_inputs(device):
    g = torch.Generator().manual_seed(5)
    packed = ref.quantize_int4_rows(random_table(6, 8, g)).to(device)
    return dict(packed=packed, indices=torch.tensor([0, 1, 2, 5], device=device),
                offsets=torch.tensor([0, 1, 4], device=device))


def _call(x, **kw):
    args = dict(D=8)
    args.update(kw)
    return rk.ops.int4_embedding_bag(x["packed"], x["indices"], x["offsets"], **args)


BAD_INPUTS = [
    ("out of range", lambda x: (x | dict(indices=x["indices"] + 3)), {}),
    ("indices\\[3\\] = -2", lambda x: (x | dict(indices=torch.tensor([0, 1, 2, -2], device=x["indices"].device))), {}),
    ("non-decreasing", lambda x: (x | dict(offsets=torch.tensor([0, 3, 1, 4], device=x["offsets"].device))), {}),
    ("end at N", lambda x: (x | dict(offsets=torch.tensor([0, 1, 5], device=x["offsets"].device))), {}),
    ("start at 0", lambda x: (x | dict(offsets=torch.tensor([1, 1, 4], device=x["offsets"].device))), {}),
    ("even number", lambda x: x, {"D": 7}),
    ("row_bytes", lambda x: x, {"D": 40}),
    ("packed must be uint8", lambda x: (x | dict(packed=x["packed"].to(torch.int8))), {}),
    ("indices must be int32 or int64", lambda x: (x | dict(indices=x["indices"].float())), {}),
    ("per_sample_weights must have shape", lambda x: x,
     {"per_sample_weights": torch.ones(3)}),
    ("per_sample_weights must be float32", lambda x: x,
     {"per_sample_weights": torch.ones(4, dtype=torch.int32)}),
    ("pooling", lambda x: x, {"pooling": "max"}),
    ("bounds_check", lambda x: x, {"bounds_check": "clamp"}),
    ("output_dtype", lambda x: x, {"output_dtype": torch.int32}),
    ("one dimension per table", lambda x: x, {"D": [8, 8]}),
    ("table_offsets must start at 0", lambda x: x, {"table_offsets": torch.tensor([1, 3, 6]), "D": 8}),
    ("table_offsets must be non-decreasing", lambda x: x, {"table_offsets": torch.tensor([0, 4, 3]), "D": 8}),
    ("bytes of INT4 rows", lambda x: x, {"table_offsets": torch.tensor([0, 4, 7]), "D": 8}),
    ("contiguous", lambda x: (x | dict(packed=torch.cat([x["packed"], x["packed"]], 1)[:, :16])), {}),
]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,mutate,kwargs", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(device, backend, needle, mutate, kwargs):
    require_backend(OP, device, backend)
    x = mutate(_bag_inputs(device))
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if "table_offsets" in kwargs:  # two tables: T*B + 1 = 5 offsets for B = 2
        x["offsets"] = torch.tensor([0, 1, 2, 3, 4], device=device)
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=needle):
        _call(x, **kwargs)


@pytest.mark.parametrize("device,backend", backend_params())
def test_quantize_bad_input(device, backend):
    require_backend("quantize_int4_rows", device, backend)
    with rk.use_backend(backend):
        with pytest.raises((ValueError, RuntimeError), match="even"):
            rk.ops.quantize_int4_rows(torch.randn(3, 5, device=device))
        with pytest.raises((ValueError, RuntimeError), match="weight"):
            rk.ops.quantize_int4_rows(torch.randn(3, device=device))
        with pytest.raises((ValueError, RuntimeError), match="row_bytes"):
            rk.ops.dequantize_int4_rows(torch.zeros(3, 16, dtype=torch.uint8, device=device), 30)
        with pytest.raises((ValueError, RuntimeError), match="uint8"):
            rk.ops.dequantize_int4_rows(torch.zeros(3, 16, dtype=torch.int32, device=device), 8)


@pytest.mark.parametrize("device,backend", backend_params(("cuda",)))
def test_device_mismatch_raises(device, backend):
    require_backend(OP, device, backend)
    x = _bag_inputs("cuda")
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="same device"):
        _call(x | dict(indices=x["indices"].cpu()))
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="same device"):
        _call(x, per_sample_weights=torch.ones(4))


def test_concat_tables_and_mixed_dims_match_separate_lookups():
    g = torch.Generator().manual_seed(9)
    t0, t1 = ref.quantize_int4_rows(random_table(5, 8, g)), ref.quantize_int4_rows(random_table(3, 36, g))
    packed, to = rk.ops.concat_int4_tables([t0, t1])
    assert packed.shape == (5 * 16 + 3 * 32,) and to.tolist() == [0, 5, 8]
    i0, i1 = torch.tensor([4, 0, 1]), torch.tensor([2, 2])
    both = rk.ops.int4_embedding_bag(packed, torch.cat([i0, i1]), torch.tensor([0, 1, 3, 4, 5]), D=[8, 36],
                                     table_offsets=to)
    a = rk.ops.int4_embedding_bag(t0, i0, torch.tensor([0, 1, 3]), D=8)
    b = rk.ops.int4_embedding_bag(t1, i1, torch.tensor([0, 1, 2]), D=36)
    torch.testing.assert_close(both, torch.cat([a, b], 1), rtol=0, atol=0)
