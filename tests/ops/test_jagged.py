"""Jagged helpers: the reference against the definition, every backend against the reference (copies are
exact, so bit-equal), gradients, opcheck, gradcheck, compile, export of the reference, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import recsys_kernels as rk
from recsys_kernels.reference import jagged as ref
from recsys_kernels.testing.export_check import assert_exports_static
from recsys_kernels.testing.hstu_strategies import JaggedCase, jagged_cases, offsets_of
from tests.conftest import backend_params, require_backend

OPS = ("lengths_to_offsets", "jagged_to_padded_dense", "padded_dense_to_jagged")


def naive_j2d(values, lengths, max_len, pad):
    out = torch.full((len(lengths), max_len, values.shape[1]), pad, dtype=values.dtype)
    start = 0
    for b, n in enumerate(lengths):
        m = min(n, max_len)
        out[b, :m] = values[start:start + m]
        start += n
    return out


def naive_d2j(dense, lengths, total_len):
    out = torch.zeros(total_len, dense.shape[2], dtype=dense.dtype)
    start = 0
    for b, n in enumerate(lengths):
        m = min(n, dense.shape[1])
        out[start:start + m] = dense[b, :m]
        start += n
    return out


@given(case=jagged_cases())
def test_reference_matches_definition(case: JaggedCase):
    values, offsets, dense = case.inputs("cpu")
    assert torch.equal(ref.lengths_to_offsets(torch.tensor(case.lengths, dtype=case.offsets_dtype)), offsets)
    assert torch.equal(ref.jagged_to_padded_dense(values, offsets, case.max_len, case.padding_value),
                       naive_j2d(values, case.lengths, case.max_len, case.padding_value))
    assert torch.equal(ref.padded_dense_to_jagged(dense, offsets, case.L), naive_d2j(dense, case.lengths, case.L))


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=jagged_cases())
def test_backends_match_reference(device, backend, case: JaggedCase):
    for op in OPS:
        require_backend(op, device, backend)
    values, offsets, dense = case.inputs(device)
    lengths = torch.tensor(case.lengths, dtype=case.offsets_dtype, device=device)
    floating = case.dtype.is_floating_point
    values.requires_grad_(floating)
    dense.requires_grad_(floating)
    with rk.use_backend(backend):
        got_offsets = rk.ops.lengths_to_offsets(lengths)
        padded = rk.ops.jagged_to_padded_dense(values, offsets, case.max_len, case.padding_value)
        jagged = rk.ops.padded_dense_to_jagged(dense, offsets, case.L)
    assert got_offsets.device.type == device and torch.equal(got_offsets, offsets)
    assert torch.equal(padded.detach(), ref.jagged_to_padded_dense(values.detach(), offsets, case.max_len,
                                                                   case.padding_value))
    assert torch.equal(jagged.detach(), ref.padded_dense_to_jagged(dense.detach(), offsets, case.L))
    if not floating:
        return
    gp = torch.randn(padded.shape, generator=torch.Generator().manual_seed(case.seed)).to(device, case.dtype)
    gj = torch.randn(jagged.shape, generator=torch.Generator().manual_seed(case.seed + 1)).to(device, case.dtype)
    (g_values,) = torch.autograd.grad(padded, values, gp)
    (g_dense,) = torch.autograd.grad(jagged, dense, gj)
    assert torch.equal(g_values, ref.padded_dense_to_jagged(gp, offsets, case.L))
    assert torch.equal(g_dense, ref.jagged_to_padded_dense(gj, offsets, case.max_len, 0.0))


def test_trailing_feature_dims():
    values = torch.randn(7, 3, 5)
    offsets = torch.tensor([0, 2, 2, 7])
    dense = rk.ops.jagged_to_padded_dense(values, offsets, 4)
    assert dense.shape == (3, 4, 3, 5)
    torch.testing.assert_close(dense.flatten(2), ref.jagged_to_padded_dense(values.flatten(1), offsets, 4))
    back = rk.ops.padded_dense_to_jagged(dense, offsets, 7)
    assert back.shape == (7, 3, 5)
    assert torch.equal(back[:6], values[:6]) and torch.equal(back[6], torch.zeros(3, 5))  # 5 > max_len 4


def _triton_or_cpu(backend: str, name: str):
    return getattr(torch.ops.recsys, f"{name}_triton" if backend == "triton" else name).default


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"])
def test_opcheck(device, backend):
    for op in OPS:
        require_backend(op, device, backend)
    for odt in (torch.int32, torch.int64):
        offsets = offsets_of((3, 0, 5), odt, device)
        values = torch.randn(9, 6, device=device, requires_grad=True)
        dense = torch.randn(3, 4, 6, device=device, requires_grad=True)
        torch.library.opcheck(_triton_or_cpu(backend, "lengths_to_offsets"),
                              (torch.tensor([3, 0, 5], dtype=odt, device=device),))
        torch.library.opcheck(_triton_or_cpu(backend, "jagged_to_padded_dense"), (values, offsets, 4, -1.0))
        torch.library.opcheck(_triton_or_cpu(backend, "padded_dense_to_jagged"), (dense, offsets, 9))


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    require_backend("jagged_to_padded_dense", device, backend)
    offsets = offsets_of((2, 0, 3), torch.int64, device)
    values = torch.randn(6, 3, device=device, dtype=torch.float64, requires_grad=True)
    dense = torch.randn(3, 2, 3, device=device, dtype=torch.float64, requires_grad=True)
    with rk.use_backend(backend):
        assert torch.autograd.gradcheck(lambda v: rk.ops.jagged_to_padded_dense(v, offsets, 2, 1.0), (values,))
        assert torch.autograd.gradcheck(lambda d: rk.ops.padded_dense_to_jagged(d, offsets, 6), (dense,))


@pytest.mark.parametrize("device,backend", backend_params())
def test_compile_fullgraph(device, backend):
    for op in OPS:
        require_backend(op, device, backend)
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    lengths = torch.tensor([3, 0, 4], device=device)
    values = torch.randn(7, 5, device=device, requires_grad=True)

    def step(lengths, values):
        offsets = rk.ops.lengths_to_offsets(lengths)
        dense = rk.ops.jagged_to_padded_dense(values, offsets, 4)
        return rk.ops.padded_dense_to_jagged(dense * 2, offsets, 7).square().sum()

    with rk.use_backend(backend):
        loss = torch.compile(step, fullgraph=True, backend=compiler)(lengths, values)
        (grad,) = torch.autograd.grad(loss, values)
    torch.testing.assert_close(loss, (2 * values.detach()).square().sum())
    torch.testing.assert_close(grad, 8 * values.detach())


def test_reference_exports_with_static_shapes():
    class Forward(torch.nn.Module):
        def forward(self, lengths, values, dense):
            offsets = ref.lengths_to_offsets(lengths)
            return (ref.jagged_to_padded_dense(values, offsets, 4, -1.0),
                    ref.padded_dense_to_jagged(dense, offsets, values.shape[0]))

    args = (torch.tensor([3, 0, 4]), torch.randn(7, 5), torch.randn(3, 4, 5))
    assert_exports_static(Forward(), args)


BAD = [
    ("must start at 0", lambda v, o, d: ("j2d", v, torch.tensor([1, 3, 5]))),
    ("non-decreasing", lambda v, o, d: ("j2d", v, torch.tensor([0, 4, 3]))),
    ("past the number of rows", lambda v, o, d: ("j2d", v, torch.tensor([0, 3, 9]))),
    ("offsets must be int32 or int64", lambda v, o, d: ("j2d", v, o.float())),
    ("values must have shape", lambda v, o, d: ("j2d", v[0, 0], o)),
    ("dense must have shape", lambda v, o, d: ("d2j", d[0, 0], o)),
    ("offsets must have shape", lambda v, o, d: ("d2j", d, torch.tensor([0, 3]))),
    ("past the number of rows", lambda v, o, d: ("d2j", d, torch.tensor([0, 3, 9]))),
    ("lengths must be non-negative", lambda v, o, d: ("l2o", torch.tensor([2, -1]), None)),
]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,make", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(device, backend, needle, make):
    for op in OPS:
        require_backend(op, device, backend)
    values, offsets, dense = torch.randn(6, 3, device=device), torch.tensor([0, 3, 5], device=device), \
        torch.randn(2, 4, 3, device=device)
    kind, x, o = make(values, offsets, dense)
    x, o = x.to(device), (o.to(device) if o is not None else None)
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=needle):
        if kind == "j2d":
            rk.ops.jagged_to_padded_dense(x, o, 4)
        elif kind == "d2j":
            rk.ops.padded_dense_to_jagged(x, o, 6)
        else:
            rk.ops.lengths_to_offsets(x)


@pytest.mark.parametrize("device,backend", [p for p in backend_params(("cuda",))])
def test_offsets_on_the_cpu_need_no_device_sync(device, backend):
    """CPU offsets with CUDA values: the same copies and gradients as device offsets, and no device sync (the
    host reads the offsets where they are; the kernels get a copy uploaded without blocking)."""
    for op in OPS:
        require_backend(op, device, backend)
    lengths = [3, 0, 5, 2]
    offsets = offsets_of(tuple(lengths), torch.int64, "cpu")
    values = torch.randn(10, 4, device="cuda", requires_grad=True)
    dense = torch.randn(4, 6, 4, device="cuda", requires_grad=True)
    with rk.use_backend(backend):
        want_p = rk.ops.jagged_to_padded_dense(values, offsets.cuda(), 6, -1.0)
        want_j = rk.ops.padded_dense_to_jagged(dense, offsets.cuda(), 10)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got_p = rk.ops.jagged_to_padded_dense(values, offsets, 6, -1.0)
            got_j = rk.ops.padded_dense_to_jagged(dense, offsets, 10)
            g_values, g_dense = torch.autograd.grad((got_p.sum() + got_j.square().sum()), (values, dense))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got_p, want_p) and torch.equal(got_j, want_j)
    w_values, w_dense = torch.autograd.grad((want_p.sum() + want_j.square().sum()), (values, dense))
    assert torch.equal(g_values, w_values) and torch.equal(g_dense, w_dense)


@pytest.mark.parametrize("device,backend", [p for p in backend_params(("cuda",))])
def test_offsets_on_another_device_raise(device, backend):
    for op in OPS:
        require_backend(op, device, backend)
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="device|CPU"):
        rk.ops.jagged_to_padded_dense(torch.randn(5, 3, device="cuda"), torch.tensor([0, 2, 5], device="meta"), 4)

