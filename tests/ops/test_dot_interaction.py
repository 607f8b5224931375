"""dot_interaction: every backend against the float64 reference, gradients, opcheck, gradcheck, compile,
export of the reference, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import recsys_kernels as rk
from recsys_kernels.reference import dot_interaction as ref
from recsys_kernels.testing.strategies import DotInteractionCase, dot_interaction_cases
from recsys_kernels.testing.tolerances import assert_close_to_reference
from tests.conftest import backend_params, require_backend

OP = "dot_interaction"


def run(case: DotInteractionCase, dense, sparse, backend: str) -> torch.Tensor:
    with rk.use_backend(backend):
        return rk.ops.dot_interaction(dense, sparse, self_interaction=case.self_interaction, layout=case.layout,
                                      pad_to_multiple=case.pad_to_multiple)


def naive(dense, sparse, self_interaction, layout, pad_to_multiple):
    """The definition, with Python loops: the reference's own oracle."""
    t = torch.cat([dense.unsqueeze(1), sparse], 1).double()
    n = t.shape[1]
    rows = []
    for b in range(t.shape[0]):
        if layout == "lower":
            pairs = [t[b, r] @ t[b, c] for r in range(n) for c in range(r + int(self_interaction))]
        else:
            pairs = [t[b, r] @ t[b, c] for r in range(n) for c in range(r + 1 - int(self_interaction), n)]
        row = torch.cat([dense[b].double(), torch.stack(pairs)])
        pad = -len(row) % pad_to_multiple
        rows.append(torch.cat([row, row.new_zeros(pad)]))
    return torch.stack(rows)


@given(case=dot_interaction_cases(max_batch=3, max_features=9, max_dim=9, dtypes=(torch.float64,)))
def test_reference_matches_definition(case):
    dense, sparse = case.inputs("cpu")
    if case.B == 0:
        return
    out = ref.dot_interaction(dense, sparse, case.self_interaction, case.layout, case.pad_to_multiple)
    torch.testing.assert_close(out, naive(dense, sparse, case.self_interaction, case.layout, case.pad_to_multiple))


@pytest.mark.parametrize("device,backend", backend_params())
@given(case=dot_interaction_cases())
def test_forward_and_gradients_match_float64(device, backend, case):
    require_backend(OP, device, backend)
    dense, sparse = case.inputs(device)
    dense.requires_grad_(True)
    sparse.requires_grad_(True)
    out = run(case, dense, sparse, backend)
    d64, s64 = (x.detach().double().requires_grad_(True) for x in (dense, sparse))
    exact = ref.dot_interaction(d64, s64, case.self_interaction, case.layout, case.pad_to_multiple)
    dl, sl = (x.detach().requires_grad_(True) for x in (dense, sparse))
    same = ref.dot_interaction(dl, sl, case.self_interaction, case.layout, case.pad_to_multiple)
    assert out.device.type == device
    assert_close_to_reference(out, exact, same, "forward")
    if case.B == 0:
        return
    # The upstream gradient in the kernel's dtype; the exact reference gets the same values in float64.
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed)).to(device, case.dtype)
    g_exact = torch.autograd.grad(exact, (d64, s64), grad.double())
    g_same = torch.autograd.grad(same, (dl, sl), grad)
    g_out = torch.autograd.grad(out, (dense, sparse), grad)
    for name, o, e, s in zip(("grad_dense", "grad_sparse"), g_out, g_exact, g_same):
        assert_close_to_reference(o, e, s, name)


@pytest.mark.parametrize("device,backend", backend_params())
def test_empty_batch_and_large_shapes(device, backend):
    require_backend(OP, device, backend)
    # B = 0, and the upper limits (F = 128, D = 512) with odd sizes beside them.
    for B, F, D in [(0, 26, 128), (2, 128, 512), (3, 129, 33), (2, 1, 1)]:
        case = DotInteractionCase(B, F, D, torch.float32, False, "lower", 8, seed=F + D)
        dense, sparse = case.inputs(device)
        out = run(case, dense, sparse, backend)
        exact = ref.dot_interaction(dense.double(), sparse.double(), False, "lower", 8)
        assert_close_to_reference(out, exact, ref.dot_interaction(dense, sparse, False, "lower", 8))


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"])
def test_opcheck(device, backend):
    require_backend(OP, device, backend)
    op = torch.ops.recsys.dot_interaction_triton if backend == "triton" else torch.ops.recsys.dot_interaction
    for self_interaction, layout in [(False, "lower"), (True, "upper")]:
        dense = torch.randn(3, 8, device=device, requires_grad=True)
        sparse = torch.randn(3, 5, 8, device=device, requires_grad=True)
        torch.library.opcheck(op.default, (dense, sparse, self_interaction, layout, 4))
        width = 8 + ref.num_pairs(6, self_interaction)
        grad = torch.randn(3, width + 8, device=device)[:, :width]  # a strided grad_output
        backward = torch.ops.recsys.dot_interaction_triton_backward if backend == "triton" else \
            torch.ops.recsys.dot_interaction_backward
        torch.library.opcheck(backward.default, (grad, dense.detach(), sparse.detach(), self_interaction, layout))


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    require_backend(OP, device, backend)
    dense = torch.randn(2, 5, device=device, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(2, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
    for self_interaction, layout in [(False, "lower"), (True, "upper")]:
        def f(d, s):
            with rk.use_backend(backend):
                return rk.ops.dot_interaction(d, s, self_interaction=self_interaction, layout=layout, pad_to_multiple=4)
        assert torch.autograd.gradcheck(f, (dense, sparse))
        if backend == "reference":  # only the reference's backward is itself differentiable
            assert torch.autograd.gradgradcheck(f, (dense, sparse))


@pytest.mark.parametrize("device,backend", backend_params())
def test_compile_fullgraph(device, backend):
    require_backend(OP, device, backend)
    # Inductor cannot run user Triton kernels on CPU tensors (the interpreter is eager-only).
    compiler = "aot_eager" if (backend == "triton" and device == "cpu") else "inductor"
    dense = torch.randn(4, 16, device=device, requires_grad=True)
    sparse = torch.randn(4, 6, 16, device=device, requires_grad=True)

    def step(d, s):
        return rk.ops.dot_interaction(d, s, layout="upper", pad_to_multiple=8).square().sum()

    with rk.use_backend(backend):
        compiled = torch.compile(step, fullgraph=True, backend=compiler)
        loss = compiled(dense, sparse)
        grads = torch.autograd.grad(loss, (dense, sparse))
    d64, s64 = (x.detach().double().requires_grad_(True) for x in (dense, sparse))
    exact = ref.dot_interaction(d64, s64, False, "upper", 8).square().sum()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=1e-4)
    for g, e in zip(grads, torch.autograd.grad(exact, (d64, s64))):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-3)


DATA_DEPENDENT = ("nonzero", "unique", "masked_select", "_local_scalar_dense", "item", "where.self")


@pytest.mark.parametrize("self_interaction,layout", [(False, "lower"), (True, "upper")])
def test_reference_exports_with_static_shapes(self_interaction, layout):
    class Forward(torch.nn.Module):
        def forward(self, dense, sparse):
            return ref.dot_interaction(dense, sparse, self_interaction, layout, 8)

    class Backward(torch.nn.Module):
        def forward(self, grad, dense, sparse):
            return ref.dot_interaction_backward(grad, dense, sparse, self_interaction, layout)

    dense, sparse = torch.randn(4, 16), torch.randn(4, 26, 16)
    out = ref.dot_interaction(dense, sparse, self_interaction, layout, 8)
    for module, args in [(Forward(), (dense, sparse)), (Backward(), (torch.randn_like(out), dense, sparse))]:
        graph = torch.export.export(module, args).graph
        targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
        bad = [t for t in targets if any(k in t for k in DATA_DEPENDENT)]
        assert not bad, f"data-dependent ops in the reference: {bad}"


BAD_INPUTS = [
    ("dense", lambda d, s: (d[0], s), {}),                                   # wrong rank
    ("sparse", lambda d, s: (d, s[:, 0]), {}),                               # wrong rank
    ("dtype", lambda d, s: (d, s.half()), {}),                               # dtype mismatch
    ("float32, float16", lambda d, s: (d.int(), s.int()), {}),               # integer inputs
    ("same D", lambda d, s: (d[:, :3], s), {}),                              # F/D mismatch
    ("batch", lambda d, s: (d[:2], s), {}),                                  # B mismatch
    ("F >= 1", lambda d, s: (d, s[:, :0]), {}),                              # no sparse features
    ("layout", lambda d, s: (d, s), {"layout": "diagonal"}),
    ("pad_to_multiple", lambda d, s: (d, s), {"pad_to_multiple": 0}),
]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("needle,mutate,kwargs", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(device, backend, needle, mutate, kwargs):
    require_backend(OP, device, backend)
    dense, sparse = torch.randn(4, 8, device=device), torch.randn(4, 3, 8, device=device)
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=needle):
        rk.ops.dot_interaction(*mutate(dense, sparse), **kwargs)


@pytest.mark.parametrize("device,backend", [p for p in backend_params(("cuda",))])
def test_device_mismatch_raises(device, backend):
    require_backend(OP, device, backend)
    with rk.use_backend(backend), pytest.raises((ValueError, RuntimeError), match="same device"):
        rk.ops.dot_interaction(torch.randn(4, 8, device="cuda"), torch.randn(4, 3, 8))


@pytest.mark.parametrize("device,backend", backend_params())
def test_backward_bad_grad_shape(device, backend):
    require_backend(OP, device, backend)
    if backend == "reference":
        fn = ref.dot_interaction_backward
    else:
        fn = torch.ops.recsys.dot_interaction_triton_backward if backend == "triton" else \
            torch.ops.recsys.dot_interaction_backward
    dense, sparse = torch.randn(4, 8, device=device), torch.randn(4, 3, 8, device=device)
    with pytest.raises((ValueError, RuntimeError), match="grad_output"):
        fn(torch.randn(4, 10, device=device), dense, sparse, False, "lower")


def test_module_output_dim_and_forward():
    module = rk.nn.DotInteraction(self_interaction=True, layout="upper", pad_to_multiple=8)
    dense, sparse = torch.randn(3, 16), torch.randn(3, 26, 16)
    assert module(dense, sparse).shape == (3, module.output_dim(26, 16)) == (3, 16 + 378 + 6)
    with pytest.raises(ValueError, match="layout"):
        rk.nn.DotInteraction(layout="full")
