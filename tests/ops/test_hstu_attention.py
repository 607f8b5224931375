"""hstu_attention: the reference against a per-sequence loop over the definition, the reference's explicit
backward against autograd, every backend against the float64 reference (forward and the five gradients),
opcheck, gradcheck, compile, export of the reference, bad input, the module."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given

import recsys_kernels as rk
from recsys_kernels.reference import hstu_attention as ref
from recsys_kernels.testing.export_check import assert_exports_static
from recsys_kernels.testing.hstu_strategies import HSTUCase, hstu_cases
from recsys_kernels.testing.tolerances import assert_close_to_reference
from tests.conftest import backend_params, require_backend

OP = "hstu_attention"
ARGS = ("max_seq_len", "alpha", "causal", "num_targets", "contextual_seq_len", "max_attn_len", "timestamps",
        "pos_bias", "time_bias", "time_bucket")


def positional(inp: dict) -> tuple:
    """hstu_attention's arguments in schema order."""
    return (inp["q"], inp["k"], inp["v"], inp["seq_offsets"], *(inp[a] for a in ARGS))


def naive(inp: dict) -> torch.Tensor:
    """The definition, one sequence, head, query and key at a time, in float64."""
    q, k, v = (inp[x].double() for x in "qkv")
    o = inp["seq_offsets"].tolist()
    N, c, w, causal = inp["max_seq_len"], inp["contextual_seq_len"], inp["max_attn_len"], inp["causal"]
    out = torch.zeros_like(v)
    for b in range(len(o) - 1):
        n = o[b + 1] - o[b]
        nt = int(inp["num_targets"][b]) if inp["num_targets"] is not None else 0
        limit = (n - c + 1 if c > 0 else n) - nt

        def ident(x: int) -> int:
            x = max(x - c + 1, 0) if c > 0 else x
            return min(x, limit) if inp["num_targets"] is not None else x

        ts = inp["timestamps"][o[b]:o[b + 1]].tolist() if inp["timestamps"] is not None else None
        for i in range(n):
            for j in range(n):
                dist = ident(i) - ident(j)
                dist = dist if causal else abs(dist)
                ok = i == j or dist > 0
                if w > 0:
                    ok = ok and dist <= w
                if c > 0:
                    ok = ok or (ident(i) == 0 and ident(j) < limit)
                if not ok:
                    continue
                r = 0.0
                if inp["pos_bias"] is not None:
                    r += float(inp["pos_bias"][j - i + N - 1])
                if inp["time_bias"] is not None:
                    nb = inp["time_bias"].shape[0] - 1
                    x = abs(ts[min(i + 1, n - 1)] - ts[j])
                    bucket = math.floor(math.log(max(x, 1)) / 0.301) if inp["time_bucket"] == "log" \
                        else math.floor(math.sqrt(x))
                    r += float(inp["time_bias"][min(max(bucket, 0), nb)])
                for h in range(q.shape[1]):
                    s = inp["alpha"] * float(q[o[b] + i, h] @ k[o[b] + j, h]) + r
                    p = s / (1 + math.exp(-s)) / N
                    out[o[b] + i, h] += p * v[o[b] + j, h]
    return out


@given(case=hstu_cases(max_batch=3, max_seq_len=10, max_heads=2, head_dims=(2, 3, 5), dtypes=(torch.float64,)))
def test_reference_matches_definition(case: HSTUCase):
    inp = case.inputs("cpu")
    torch.testing.assert_close(ref.hstu_attention(*positional(inp)), naive(inp))


@given(case=hstu_cases(max_batch=3, max_seq_len=10, max_heads=2, head_dims=(2, 3, 5), dtypes=(torch.float64,)))
def test_reference_backward_matches_autograd(case: HSTUCase):
    inp = case.inputs("cpu")
    leaves = [inp[x] for x in ("q", "k", "v", "pos_bias", "time_bias") if inp[x] is not None]
    for t in leaves:
        t.requires_grad_(True)
    out = ref.hstu_attention(*positional(inp))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)
    expected = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    got = ref.hstu_attention_backward(grad, *(x.detach() if isinstance(x, torch.Tensor) else x
                                              for x in positional(inp)))
    got = [g for g, name in zip(got, ("q", "k", "v", "pos_bias", "time_bias")) if inp[name] is not None]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e)


GRADS = ("q", "k", "v", "pos_bias", "time_bias")
PAIRS = backend_params()


def ops_of(backend: str):
    """(forward, backward) registered ops of a kernel backend."""
    if backend == "triton":
        import recsys_kernels.triton.hstu_attention  # noqa: F401  (registers the Triton ops)

        return torch.ops.recsys.hstu_attention_triton, torch.ops.recsys.hstu_attention_triton_backward
    return torch.ops.recsys.hstu_attention, torch.ops.recsys.hstu_attention_backward


def run(inp: dict, backend: str) -> torch.Tensor:
    with rk.use_backend(backend):
        return rk.ops.hstu_attention(inp["q"], inp["k"], inp["v"], inp["seq_offsets"], **{a: inp[a] for a in ARGS})


def upcast(inp: dict) -> dict:
    return {n: (x.detach().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
            for n, x in inp.items()}


def leaves(inp: dict) -> list[torch.Tensor]:
    return [inp[n] for n in GRADS if inp[n] is not None]


# The full ranges (batch 0-8, heads 1-4) outside CI; CI shares two cores, so it draws smaller cases.
_CI = bool(os.environ.get("CI"))


@pytest.mark.parametrize("device,backend", PAIRS)
@given(case=hstu_cases(max_batch=4 if _CI else 8, max_seq_len=16 if _CI else 24, max_heads=3 if _CI else 4))
def test_forward_and_gradients_match_float64(device, backend, case: HSTUCase):
    require_backend(OP, device, backend)
    inp = case.inputs(device)
    exact_in, same_in = upcast(inp), dict(inp)
    for d in (inp, exact_in, same_in):
        for n in GRADS:
            if d[n] is not None:
                d[n] = d[n].detach().clone().requires_grad_(True)
    out = run(inp, backend)
    exact = ref.hstu_attention(*positional(exact_in))
    same = ref.hstu_attention(*positional(same_in))
    assert out.device.type == device
    assert_close_to_reference(out, exact, same, "forward")
    # The upstream gradient in the kernel's dtype; the exact reference gets those same values in float64, as it
    # gets q, k, v (an unrounded one made tiny fp16 cases fail by one ulp of the rounded gradient's error).
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed)).to(device, case.dtype)
    g_out = torch.autograd.grad(out, leaves(inp), grad, allow_unused=True)
    g_exact = torch.autograd.grad(exact, leaves(exact_in), grad.double(), allow_unused=True)
    g_same = torch.autograd.grad(same, leaves(same_in), grad, allow_unused=True)
    names = [n for n in GRADS if inp[n] is not None]
    for name, o, e, s, x in zip(names, g_out, g_exact, g_same, leaves(inp)):
        zero = torch.zeros_like(x)
        o, s, e = (zero if o is None else o), (zero if s is None else s), (zero.double() if e is None else e)
        assert_close_to_reference(o, e, s, f"grad_{name}")


def full_case(dtype=torch.float32, lengths=(5, 0, 7, 3), N=8, H=2, Dqk=25, Dv=50) -> HSTUCase:
    return HSTUCase(lengths=lengths, max_seq_len=N, H=H, Dqk=Dqk, Dv=Dv, causal=True, targets=True,
                    contextual_seq_len=1, max_attn_len=4, pos_bias=True, time_bias=True, num_buckets=16,
                    time_bucket="log", offsets_dtype=torch.int64, dtype=dtype, seed=7)


@pytest.mark.parametrize("device,backend", [p for p in PAIRS if p.values[1] != "reference"])
def test_opcheck(device, backend):
    require_backend(OP, device, backend)
    for case in (full_case(), HSTUCase((3, 4), 4, 1, 16, 16, False, False, 0, 0, False, False, 0, "sqrt",
                                       torch.int32, torch.float32, 1)):
        inp = case.inputs(device)
        for n in GRADS:
            if inp[n] is not None:
                inp[n].requires_grad_(True)
        forward, backward = ops_of(backend)
        torch.library.opcheck(forward.default, positional(inp))
        grad = torch.randn_like(inp["v"])
        torch.library.opcheck(backward.default,
                              (grad, *(x.detach() if isinstance(x, torch.Tensor) else x for x in positional(inp))))


@pytest.mark.parametrize("device,backend", PAIRS)
def test_gradcheck_float64(device, backend):
    require_backend(OP, device, backend)
    inp = full_case(torch.float64, lengths=(3, 0, 4), N=5, H=1, Dqk=3, Dv=2).inputs(device)
    names = [n for n in GRADS if inp[n] is not None]

    def f(*xs):
        d = dict(inp, **dict(zip(names, xs)))
        return run(d, backend)

    xs = tuple(inp[n].detach().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, xs)


@pytest.mark.parametrize("device,backend", [p for p in PAIRS if p.values[1] != "reference"])
def test_backward_is_deterministic(device, backend):
    """Bit-identical gradients run to run (and, on the CPU, across thread counts)."""
    require_backend(OP, device, backend)
    inp = full_case(lengths=(8, 6, 7, 8, 5, 8), H=4).inputs(device)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(ops_of(backend)[1](torch.ones_like(inp["v"]), *positional(inp)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], r))


@pytest.mark.parametrize("device,backend", PAIRS)
def test_compile_fullgraph(device, backend):
    require_backend(OP, device, backend)
    inp = full_case().inputs(device)
    for n in GRADS:
        inp[n].requires_grad_(True)

    def step(q, k, v, pos, time):
        d = dict(inp, q=q, k=k, v=v, pos_bias=pos, time_bias=time)
        return run(d, backend).square().sum()

    # Inductor cannot run user Triton kernels on CPU tensors (the interpreter is eager-only).
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    loss = compiled(*leaves(inp))
    grads = torch.autograd.grad(loss, leaves(inp))
    e_in = upcast(inp)
    for n in GRADS:
        e_in[n].requires_grad_(True)
    exact = ref.hstu_attention(*positional(e_in)).square().sum()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=1e-5)
    for g, e in zip(grads, torch.autograd.grad(exact, leaves(e_in))):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)




def test_reference_exports_with_static_shapes():
    inp = full_case().inputs("cpu")
    kw = {a: inp[a] for a in ARGS if not isinstance(inp[a], torch.Tensor)}

    class Forward(torch.nn.Module):
        def forward(self, q, k, v, seq_offsets, num_targets, timestamps, pos_bias, time_bias):
            return ref.hstu_attention(q, k, v, seq_offsets, kw["max_seq_len"], kw["alpha"], kw["causal"], num_targets,
                                      kw["contextual_seq_len"], kw["max_attn_len"], timestamps, pos_bias, time_bias,
                                      kw["time_bucket"])

    class Backward(torch.nn.Module):
        def forward(self, grad, q, k, v, seq_offsets, num_targets, timestamps, pos_bias, time_bias):
            return ref.hstu_attention_backward(grad, q, k, v, seq_offsets, kw["max_seq_len"], kw["alpha"],
                                               kw["causal"], num_targets, kw["contextual_seq_len"],
                                               kw["max_attn_len"], timestamps, pos_bias, time_bias, kw["time_bucket"])

    tensors = tuple(inp[n] for n in ("q", "k", "v", "seq_offsets", "num_targets", "timestamps", "pos_bias",
                                     "time_bias"))
    for module, args in [(Forward(), tensors), (Backward(), (torch.randn_like(inp["v"]), *tensors))]:
        assert_exports_static(module, args)


BAD = [
    ("must start at 0", dict(seq_offsets=[1, 5, 5, 12, 15])),
    ("non-decreasing", dict(seq_offsets=[0, 5, 4, 12, 15])),
    ("past the number of rows", dict(seq_offsets=[0, 5, 5, 12, 16])),
    ("exceeds max_seq_len", dict(max_seq_len=6, pos_bias=None)),
    ("num_targets", dict(num_targets=[6, 0, 1, 1])),
    ("num_targets", dict(num_targets=[1, 0, 1])),
    ("pos_bias", dict(pos_bias="short")),
    ("time_bias", dict(time_bias="empty")),
    ("timestamps are required", dict(timestamps=None)),
    ("q and k must have the same shape", dict(k="heads")),
    ("v must have shape", dict(v="heads")),
    ("same dtype", dict(k="half")),
    ("time_bucket", dict(time_bucket="linear")),
]


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("needle,change", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(device, backend, needle, change):
    require_backend(OP, device, backend)
    inp = full_case().inputs(device)
    for name, value in change.items():
        if name in ("seq_offsets", "num_targets"):
            value = torch.tensor(value, device=device)
        elif value == "short":
            value = inp[name][:-1]
        elif value == "empty":
            value = inp[name][:0]
        elif value == "heads":
            value = inp[name][:, :1]
        elif value == "half":
            value = inp[name].half()
        inp[name] = value
    with pytest.raises((ValueError, RuntimeError), match=needle):
        run(inp, backend)


def test_module_matches_op():
    torch.manual_seed(0)
    layer = rk.nn.HSTUAttention(8, contextual_seq_len=1, num_buckets=16)
    inp = full_case().inputs("cpu")
    out = layer(inp["q"], inp["k"], inp["v"], inp["seq_offsets"], inp["num_targets"], inp["timestamps"])
    out.sum().backward()
    assert layer.pos_bias.grad is not None and layer.time_bias.grad is not None
    expected = ref.hstu_attention(inp["q"], inp["k"], inp["v"], inp["seq_offsets"], 8, 1 / 25, True,
                                  inp["num_targets"], 1, 0, inp["timestamps"], layer.pos_bias.detach(),
                                  layer.time_bias.detach(), "log")
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="timestamps"):
        layer(inp["q"], inp["k"], inp["v"], inp["seq_offsets"])


EDGE = [
    dict(lengths=(), N=4, Dqk=16, Dv=16),              # B = 0
    dict(lengths=(0, 0), N=3, Dqk=25, Dv=50),          # every sequence empty
    dict(lengths=(5, 1, 9), N=40, Dqk=50, Dv=25),      # max_seq_len past every sequence, several blocks
    dict(lengths=(3, 2), N=3, Dqk=256, Dv=1),          # the largest and the smallest head dims
]
# 600 sequences: more programs and offsets than the CUDA forward carries in its kernel parameters (its upload
# path). Not under the Triton interpreter: 80 s there.
MANY_SEQUENCES = dict(lengths=tuple(1 + i % 3 for i in range(600)), N=3, Dqk=16, Dv=16)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("shape", EDGE + [MANY_SEQUENCES], ids=[str(i) for i in range(len(EDGE))] + ["many"])
def test_edge_shapes(device, backend, shape):
    require_backend(OP, device, backend)
    if shape is MANY_SEQUENCES and device == "cpu" and backend == "triton":
        pytest.skip("80 s in the Triton interpreter")
    case = full_case(lengths=shape["lengths"], N=shape["N"], H=2, Dqk=shape["Dqk"], Dv=shape["Dv"])
    inp = case.inputs(device)
    for n in GRADS:
        inp[n].requires_grad_(True)
    out = run(inp, backend)
    e_in = upcast(inp)
    for n in GRADS:
        e_in[n].requires_grad_(True)
    exact = ref.hstu_attention(*positional(e_in))
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-5)
    grad = torch.ones_like(out)
    for g, e in zip(torch.autograd.grad(out, leaves(inp), grad), torch.autograd.grad(exact, leaves(e_in), grad.double())):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_non_finite_rows_stay_in_their_sequence(device, backend, bias):
    """NaN in every input row of the second sequence (q, k, v and the upstream gradient) leaves the first sequence's
    output and q / k / v gradients as they were. A tile running past a sequence's end reads the next sequence's rows
    (the CUDA kernels' TMA loads do): those must contribute exact zeros, not 0 x NaN. 16-bit on CUDA with head dims
    of 64 and a partial last tile, so the H100 takes its TMA path."""
    require_backend(OP, device, backend)
    if device == "cpu" and backend == "triton":
        pytest.skip("slow in the Triton interpreter")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    case = full_case(dtype=dtype, lengths=(37, 70), N=128, H=2, Dqk=64, Dv=64)
    clean = case.inputs(device)
    if not bias:
        clean.update(timestamps=None, pos_bias=None, time_bias=None)
    end0, end1 = (int(x) for x in clean["seq_offsets"][1:3])
    dirty = dict(clean)
    for n in ("q", "k", "v"):
        dirty[n] = clean[n].clone()
        dirty[n][end0:end1] = float("nan")
    results = []
    for is_dirty, source in enumerate((clean, dirty)):
        inp = {n: (x.detach().clone().requires_grad_(True) if n in ("q", "k", "v") else x) for n, x in source.items()}
        out = run(inp, backend)
        grad = torch.ones_like(out)
        if is_dirty:
            grad[end0:end1] = float("nan")
        dq, dk, dv = torch.autograd.grad(out, [inp["q"], inp["k"], inp["v"]], grad)
        results.append([x[:end0] for x in (out, dq, dk, dv)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.isfinite(b).all(), name
        torch.testing.assert_close(b, a, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("device,backend", [p for p in PAIRS if p.values[0] == "cuda"])
def test_device_mismatch_raises(device, backend):
    require_backend(OP, device, backend)
    inp = full_case().inputs(device)
    for name in ("v", "pos_bias", "timestamps"):  # seq_offsets and num_targets may be on the CPU (below)
        bad = dict(inp, **{name: inp[name].cpu()})
        with pytest.raises((ValueError, RuntimeError), match="same device|device"):
            run(bad, backend)


@pytest.mark.parametrize("device,backend", [p for p in PAIRS if p.values[0] == "cuda"])
def test_offsets_on_the_cpu(device, backend):
    """seq_offsets and num_targets on the CPU with q on CUDA: the same output and gradients as on the device;
    the kernel backends then run forward and backward without a device sync."""
    require_backend(OP, device, backend)
    inp = full_case().inputs(device)
    for n in GRADS:
        inp[n].requires_grad_(True)
    want = run(inp, backend)
    want_grads = torch.autograd.grad(want, leaves(inp), torch.ones_like(want))
    host = dict(inp, seq_offsets=inp["seq_offsets"].cpu(), num_targets=inp["num_targets"].cpu())
    torch.cuda.synchronize()
    if backend != "reference":  # the reference's own ops may sync
        torch.cuda.set_sync_debug_mode("error")
    try:
        got = run(host, backend)
        got_grads = torch.autograd.grad(got, leaves(host), torch.ones_like(got))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    exact = {} if backend == "reference" else dict(rtol=0, atol=0)  # the reference's backward adds with atomics
    torch.testing.assert_close(got, want, **exact)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **exact)


# The hypothesis cases above stay within one tile (max_seq_len <= 24); these run the GPU kernels over many
# query and key tiles: software pipelines, causal/window block skipping, the dQ kernel's diagonal carries and
# the cross-program bias reductions.
LONG_CONFIGS = {
    "causal": dict(causal=True, targets=False, contextual_seq_len=0, max_attn_len=0, pos_bias=False,
                   time_bias=False, time_bucket="log"),
    "targets-context-window-bias": dict(causal=True, targets=True, contextual_seq_len=5, max_attn_len=37,
                                        pos_bias=True, time_bias=True, time_bucket="log"),
    "bidirectional-window-sqrt-bias": dict(causal=False, targets=True, contextual_seq_len=0, max_attn_len=70,
                                           pos_bias=True, time_bias=True, time_bucket="sqrt"),
    # Bias-free masks: on an H100 the CUDA forward of 16-bit values in 16-byte rows is the wgmma kernel.
    "targets-context-window": dict(causal=True, targets=True, contextual_seq_len=5, max_attn_len=37, pos_bias=False,
                                   time_bias=False, time_bucket="log"),
    "bidirectional-targets": dict(causal=False, targets=True, contextual_seq_len=0, max_attn_len=0, pos_bias=False,
                                  time_bias=False, time_bucket="log"),
    # Causal with targets and no context or window: the kernels' unmasked tiles stop at the first target.
    "targets-bias": dict(causal=True, targets=True, contextual_seq_len=0, max_attn_len=0, pos_bias=True,
                         time_bias=True, time_bucket="log"),
}


def long_case(dtype: torch.dtype, Dqk: int, Dv: int, config: str, lengths=(300, 0, 129, 257, 64, 1),
              N: int = 320, H: int = 2, seed: int = 11) -> HSTUCase:
    return HSTUCase(lengths=lengths, max_seq_len=N, H=H, Dqk=Dqk, Dv=Dv, num_buckets=40, offsets_dtype=torch.int32,
                    dtype=dtype, seed=seed, **LONG_CONFIGS[config])


def check_long_case(case: HSTUCase, device: str, backend: str) -> None:
    """Forward and every gradient of one backend against the float64 reference and the same-dtype one."""
    inp = case.inputs(device)
    exact_in, same_in = upcast(inp), dict(inp)
    for d in (inp, exact_in, same_in):
        for n in GRADS:
            if d[n] is not None:
                d[n] = d[n].detach().clone().requires_grad_(True)
    out = run(inp, backend)
    exact = ref.hstu_attention(*positional(exact_in))
    same = ref.hstu_attention(*positional(same_in))
    assert_close_to_reference(out, exact, same, "forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device, case.dtype)
    g_out = torch.autograd.grad(out, leaves(inp), grad)
    g_exact = torch.autograd.grad(exact, leaves(exact_in), grad.double())
    g_same = torch.autograd.grad(same, leaves(same_in), grad)
    for name, o, e, s in zip([n for n in GRADS if inp[n] is not None], g_out, g_exact, g_same):
        assert_close_to_reference(o, e, s, f"grad_{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("config", list(LONG_CONFIGS))
@pytest.mark.parametrize("dims", [(64, 64), (128, 128), (50, 25), (256, 32)], ids=lambda d: f"{d[0]}x{d[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gpu_long_sequences_match_float64(dtype, dims, config, backend):
    require_backend(OP, "cuda", backend)
    check_long_case(long_case(dtype, *dims, config), "cuda", backend)


@pytest.mark.parametrize("config", ["causal", "targets-bias", "targets-context-window-bias"])
@pytest.mark.parametrize("dims", [(32, 16), (25, 50)], ids=lambda d: f"{d[0]}x{d[1]}")
def test_triton_uneven_tiles_over_long_sequences(dims, config, monkeypatch):
    """The Triton kernels over many tiles with BM != BN (on the GPU: 64 x 32 forward, 64 x 64 backward): unmasked
    interior tiles, masked diagonal and end tiles, the last partial query block, head dims padded or not."""
    require_backend(OP, "cpu", "triton")
    from recsys_kernels.triton import hstu_attention as tri

    monkeypatch.setattr(tri, "TILE_OVERRIDE", {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)})
    case = long_case(torch.float32, *dims, config, lengths=(70, 0, 49, 33, 16), N=80, H=1)
    check_long_case(case, "cpu", "triton")


def test_triton_register_capped_forward_only_for_direct_launches(monkeypatch):
    """The forward's 128-register launch (4 programs an SM) is for bf16, d <= 128, bias-free, 512 < N <= 1024, and
    only when the kernel is launched directly: torch's Triton wrapper, which traces it under torch.compile and opcheck,
    would take maxnreg for a kernel argument."""
    require_backend(OP, "cpu", "triton")
    from torch._library.triton import set_wrap_triton_enabled

    from recsys_kernels.triton import hstu_attention as tri

    monkeypatch.setattr(tri, "_INTERPRETED", False)  # as on a GPU
    bf16 = torch.bfloat16
    with set_wrap_triton_enabled(False):  # what triton_op does for an eager call on real tensors
        assert tri._four_programs_an_sm(bf16, 1024, 128, 128, True)
        assert tri._four_programs_an_sm(bf16, 513, 100, 128, True)
        for args in [(bf16, 512, 128, 128, True), (bf16, 2048, 128, 128, True), (bf16, 1024, 64, 64, True),
                     (bf16, 1024, 256, 256, True), (bf16, 1024, 128, 128, False), (torch.float16, 1024, 128, 128, True),
                     (torch.float32, 1024, 128, 128, True)]:
            assert not tri._four_programs_an_sm(*args), args
    assert not tri._four_programs_an_sm(bf16, 1024, 128, 128, True)  # traced launch


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_triton_writes_every_output_element(device, monkeypatch):
    """The Triton op starts its output and dq, dk, dv from torch.empty and zeroes only the rows past
    seq_offsets[B]; here those buffers start as NaN, so a row or column no kernel stores fails the comparison.
    Tail rows, an empty sequence, targets, a contextual prefix, a window and both biases."""
    require_backend(OP, device, "triton")
    from recsys_kernels.triton import hstu_attention as tri

    zero_unwritten = tri._zero_unwritten
    monkeypatch.setattr(tri, "_zero_unwritten", lambda x, host: zero_unwritten(x.fill_(float("nan")), host))
    g = torch.Generator().manual_seed(3)
    L, H, dqk, dv, N = 40, 2, 25, 16, 20
    q, k, v = (torch.randn(L, H, d, generator=g).to(device).requires_grad_() for d in (dqk, dqk, dv))
    args = (torch.tensor([0, 5, 5, 17, 30]), N, 0.1, True, torch.tensor([1, 0, 3, 2]), 2, 6,
            torch.randint(0, 50, (L,), generator=g).cumsum(0).to(device), torch.randn(2 * N - 1, generator=g).to(device),
            torch.randn(9, generator=g).to(device), "log")
    out = torch.ops.recsys.hstu_attention_triton(q, k, v, *args)
    exact = ref.hstu_attention(q, k, v, *args)
    torch.testing.assert_close(out, exact, rtol=1e-4, atol=1e-5)
    assert bool((out[30:] == 0).all())
    grad = torch.randn(out.shape, generator=g).to(device)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(exact, (q, k, v), grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert bool((got[30:] == 0).all())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_cuda_many_time_buckets(dtype):
    """More "sqrt" buckets (40,001) than the dQ kernel's shared memory holds: its exact time histogram then
    lives in global memory. Gaps of up to 10^7 reach buckets in the thousands."""
    require_backend(OP, "cuda", "cuda")
    case = dataclasses.replace(long_case(dtype, 64, 64, "bidirectional-window-sqrt-bias"), num_buckets=40_000)
    check_long_case(case, "cuda", "cuda")


def log_bucket_step_case(device: str, nb: int = 90) -> dict:
    """One sequence whose gaps to its first item straddle every "log" bucket step up to nb: for each step, the
    integers and float32 neighbours around exp(0.301 k). q = k = 0, so S = R; time_bias = 0, 1, 2, ... makes a
    bucket off by one move the score by 1."""
    gaps = set()
    for step in range(1, nb + 1):
        t = math.ceil(math.exp(0.301 * step))
        f, inf = torch.tensor(float(t)), torch.tensor(math.inf)
        near = torch.stack([torch.nextafter(f, -inf), f, torch.nextafter(f, inf)])  # distinct integers past 2^24
        gaps |= {t - 1, t, t + 1, *(int(x) for x in near.double().tolist())}
    ts = torch.tensor([0, *sorted(gaps)], dtype=torch.int64, device=device)
    n, gen = ts.numel(), torch.Generator().manual_seed(5)
    zeros = torch.zeros(n, 1, 16, device=device)
    return dict(q=zeros, k=zeros.clone(), v=torch.randn(n, 1, 32, generator=gen).to(device),
                seq_offsets=torch.tensor([0, n], device=device), max_seq_len=n, alpha=1.0, causal=True,
                num_targets=None, contextual_seq_len=0, max_attn_len=0, timestamps=ts, pos_bias=None,
                time_bias=torch.arange(nb + 1, dtype=torch.float32, device=device).requires_grad_(True),
                time_bucket="log")


@pytest.mark.gpu
def test_cuda_log_buckets_match_cpu_at_every_step():
    """The CUDA kernels' quarter-octave bucket table (log_time_bias) against the C++ CPU op, which evaluates the
    float32 formula per element: the same bucket for every gap next to a step, so the same output and the same
    time-bias gradient."""
    require_backend(OP, "cuda", "cuda")
    require_backend(OP, "cpu", "cpu")
    outs = {}
    for device, backend in (("cpu", "cpu"), ("cuda", "cuda")):
        inp = log_bucket_step_case(device)
        out = run(inp, backend)
        (d_time,) = torch.autograd.grad(out, [inp["time_bias"]], torch.ones_like(out))
        outs[backend] = (out.cpu(), d_time.cpu())
    # A bucket off by one moves an output or a time-bias gradient by ~1 / n (0.003): far above these tolerances,
    # which leave room for summation order and the histogram's fixed-point rounding.
    torch.testing.assert_close(outs["cuda"][0], outs["cpu"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["cuda"][1], outs["cpu"][1], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_forward_backward_bit_identical(dtype):
    """Forward and all five gradients, twice, with targets, a contextual prefix, a window and both biases over
    many tiles: bit-identical (no atomics anywhere)."""
    require_backend(OP, "cuda", "cuda")
    inp = long_case(dtype, 128, 128, "targets-context-window-bias", lengths=(512, 300, 1, 0, 257), N=512,
                    H=3).inputs("cuda")
    results = []
    for _ in range(2):
        xs = {n: inp[n].detach().clone().requires_grad_(True) for n in GRADS}
        out = run(dict(inp, **xs), "cuda")
        grads = torch.autograd.grad(out, [xs[n] for n in GRADS], torch.ones_like(out))
        results.append((out, *grads))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["targets-context-window", "targets-context-window-bias"])
def test_cuda_work_lists_in_parameters_or_uploaded_agree(config, monkeypatch):
    """The CUDA kernels' work lists travel in the launch's parameters when they fit, else by one upload
    (RECSYS_KERNELS_HSTU_INLINE=0 forces it; with the bias the backward always uploads). Each program's arithmetic is
    the same either way: the output and all five gradients are bit-identical."""
    require_backend(OP, "cuda", "cuda")
    inp = long_case(torch.bfloat16, 128, 128, config, lengths=(512, 300, 1, 0, 257, 64), N=512, H=3).inputs("cuda")
    results = []
    for inline in ("1", "0"):
        monkeypatch.setenv("RECSYS_KERNELS_HSTU_INLINE", inline)
        xs = {n: inp[n].detach().clone().requires_grad_(True) for n in GRADS if inp[n] is not None}
        out = run(dict(inp, **xs), "cuda")
        results.append((out, *torch.autograd.grad(out, list(xs.values()), torch.ones_like(out))))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# Run in a child process: a crash there fails the test instead of ending the run.
_FRESH_THREAD_SCRIPT = textwrap.dedent("""
    import threading, torch
    from recsys_kernels import ops, use_backend
    g = torch.Generator().manual_seed(0)
    lens = [300, 0, 129, 64]
    L, H, N = sum(lens), 2, 300
    off = torch.tensor([0] + lens).cumsum(0)
    q, k, v, do = (torch.randn(L, H, 128, generator=g).to("cuda", torch.bfloat16) for _ in range(4))
    ts = torch.randint(0, 10**6, (L,), generator=g).sort().values.cuda()
    pos, tb = torch.randn(2 * N - 1).cuda().bfloat16(), torch.randn(129).cuda().bfloat16()
    def results():
        out = []
        for bias in ((None, None, None), (ts, pos, tb)):
            args = (q, k, v, off, N, 1 / 128, True, None, 0, 0, *bias, "log")
            out += [torch.ops.recsys.hstu_attention(*args), *torch.ops.recsys.hstu_attention_backward(do, *args)]
            xs = [x.clone().requires_grad_() for x in (q, k, v)]
            with use_backend("cuda"):
                o = ops.hstu_attention(*xs, off, max_seq_len=N, alpha=1 / 128, timestamps=bias[0], pos_bias=bias[1],
                                       time_bias=bias[2])
            out += [o, *torch.autograd.grad(o, xs, do)]
        torch.cuda.synchronize()
        return out
    main = results()
    box = []
    t = threading.Thread(target=lambda: box.append(results()))
    t.start()
    t.join()
    assert box and all(torch.equal(a, b) for a, b in zip(main, box[0])), "thread results differ"
    print("ok")
""")


@pytest.mark.gpu
def test_cuda_ops_from_a_fresh_thread_match_the_main_thread():
    """The CUDA forward and backward ops, and a forward+backward through autograd, called from a new Python thread
    (as a serving or data-loading thread would, with no CUDA call made there before) give the main thread's results
    bit for bit, bias off and on. A probe on the H100 (benchmarks/RESULTS.md, twenty-fifth session) ended in a
    segmentation fault when the backward op ran in a fresh thread."""
    require_backend(OP, "cuda", "cuda")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", _FRESH_THREAD_SCRIPT], cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout[-2000:], r.stderr[-4000:])


@pytest.mark.gpu
@pytest.mark.parametrize("switch", [None, "tma0", "0"], ids=["wgmma", "wgmma-cpasync", "mma"])
@pytest.mark.parametrize("config", ["targets-context-window", "targets-context-window-bias"])
@pytest.mark.parametrize("dims", [(128, 128), (64, 64), (64, 120)], ids=lambda d: f"{d[0]}x{d[1]}")
def test_hopper_kernels_run_and_match_float64(dims, config, switch, monkeypatch):
    """On an sm_90 GPU the 16-bit CUDA op with head dims in 16-byte rows runs the wgmma forward and dK / dV kernels,
    and the wgmma dQ kernel without the bias (seen in the profiler), loading their tiles by TMA (dK / dV with the
    bias: cp.async) or, under RECSYS_KERNELS_HSTU_TMA=0, all by cp.async; RECSYS_KERNELS_HSTU_WGMMA=0 brings back
    the mma.sync ones. The output and every gradient match float64 either way."""
    require_backend(OP, "cuda", "cuda")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernels run on sm_90 only")
    if switch == "tma0":
        monkeypatch.setenv("RECSYS_KERNELS_HSTU_TMA", "0")
    elif switch is not None:
        monkeypatch.setenv("RECSYS_KERNELS_HSTU_WGMMA", switch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        check_long_case(long_case(torch.bfloat16, *dims, config), "cuda", "cuda")
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    wgmma = switch != "0"
    for kernel, hopper in (("hstu_fwd", wgmma), ("hstu_dkdv", wgmma), ("hstu_dq_", wgmma and "bias" not in config)):
        ran = {n for n in names if kernel in n}
        assert len(ran) == 1 and ("wgmma" in ran.pop()) == hopper, (kernel, ran)
