"""The benchmark harness: a provider's environment holds through its backward, and a wrong provider is not timed;
CPU smoke runs of the HSTU kernel-time tool, the autograd host-cost tool and the A / B script."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import harness
from benchmarks.ops import host_autograd_args, kernel_time_hstu
from recsys_kernels import _backend

SWITCH = "RECSYS_KERNELS_TEST_HARNESS_SWITCH"


class _ScaleBySwitch(torch.autograd.Function):
    """y = 2 x; its backward is right only while SWITCH is "1" (as a C++ launcher reading a kernel switch)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return g * (2 if os.environ.get(SWITCH) == "1" else 3)


def _rows(env: dict[str, str]) -> list[harness.Row]:
    bench = harness.OpBench(
        name="double", shapes=[], quick_shapes=[],
        make_inputs=lambda shape, dtype, device, gen: (torch.randn(shape["n"], dtype=dtype, generator=gen),),
        reference=lambda x: 2 * x, differentiable=(0,),
        providers=[harness.Provider("switched", lambda case, device: _ScaleBySwitch.apply, env=env)])
    runner = harness._Runner(bench, torch.device("cpu"), quick=True, ceilings={})
    return runner.run([{"n": 64}], [torch.float32], ["fwd", "bwd"], bench.providers)


def test_provider_environment_reaches_the_backward_and_is_restored():
    rows = _rows({SWITCH: "1"})
    assert [(r.case.mode, r.status, r.ms is not None) for r in rows] == [("fwd", "ok", True), ("bwd", "ok", True)]
    assert SWITCH not in os.environ


def test_wrong_gradient_is_reported_not_timed():
    fwd, bwd = _rows({})
    assert fwd.status == "ok" and bwd.status == "wrong" and bwd.ms is None, (fwd, bwd)


def test_hstu_kernel_time_tool_reports_wall_and_each_op(capsys):
    """benchmarks.ops.kernel_time_hstu on the CPU: a wall time and the time of both registered ops of the step."""
    if not _backend.EXTENSION_LOADED:
        pytest.skip("needs the C++ extension (the cpu backend)")
    kernel_time_hstu.main(["--device", "cpu", "--quick"])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("B 4,")][0]
    wall, total = (float(x) for x in re.findall(r"(?:wall|kernels) ([0-9.]+) ms", line))
    ops = dict((name, float(ms)) for name, ms in re.findall(r"(recsys::\w+) ([0-9.]+)", line))
    assert wall > 0 and set(ops) == {"recsys::hstu_attention", "recsys::hstu_attention_backward"}
    assert all(ms > 0 for ms in ops.values()) and total == pytest.approx(sum(ops.values()), abs=2e-4)


def test_kernel_time_short_names_keep_kernels_in_anonymous_namespaces_apart():
    """CUDA kernel names from the profiler: "(anonymous namespace)" must not cut every name down to one key."""
    fwd = ("void recsys::hstu_cuda::(anonymous namespace)::hstu_fwd_wgmma_kernel<__nv_bfloat16, 128, true>"
           "(recsys::hstu_cuda::Params<float>, recsys::hstu_cuda::InlineWork)")
    dq = fwd.replace("hstu_fwd_wgmma_kernel", "hstu_dq_wgmma_kernel")
    assert kernel_time_hstu.short_name(fwd) == "hstu_fwd_wgmma_kernel"
    assert kernel_time_hstu.short_name(dq) == "hstu_dq_wgmma_kernel"
    assert kernel_time_hstu.short_name("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn") == \
        "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn"


def test_host_autograd_args_tool_times_every_schema_on_the_cpu():
    """benchmarks.ops.host_autograd_args: each do-nothing op's three timings and fill_defaults, all positive; the
    ops' gradients have the inputs' shapes (the backward is wired to the forward's inputs)."""
    rows = host_autograd_args.measure(torch.device("cpu"), calls=3)
    assert set(rows) == set(host_autograd_args.SCHEMAS) | {"fill_defaults"}
    assert all(v > 0 for row in rows.values() for v in row.values())
    for name in host_autograd_args.SCHEMAS:
        assert set(rows[name]) == {"fwd no-grad", "fwd grad", "fwd+bwd"}
    q = torch.randn(8, 2, 4, requires_grad=True)
    out = getattr(torch.ops, host_autograd_args.NAMESPACE).args4(q, q, q, torch.tensor([0, 8]))
    assert [g.shape for g in torch.autograd.grad(out, [q], torch.ones_like(out))] == [q.shape]


def test_ab_builds_script_times_both_trees_and_reports_each_row(tmp_path):
    """benchmarks/ab_builds.sh on the CPU, the same tree as A and B: one line per benchmark row (shape, dtype, mode,
    provider) with each side's time and the ratio of the medians."""
    if not _backend.EXTENSION_LOADED:
        pytest.skip("needs the C++ extension (the cpu backend)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OUT_DIR=str(tmp_path), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", "benchmarks/ab_builds.sh", ".", ".", "1", "--", "--device", "cpu", "--quick",
                        "--dtypes", "fp32", "--providers", "cpu", "--modes", "fwd"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("B=")]
    assert [row[5:8] for row in rows] == [["fp32", "fwd", "cpu"]] * 2, r.stdout
    assert all(float(row[8]) > 0 and float(row[9]) > 0 and float(row[10]) > 0 for row in rows), r.stdout
