"""Shared harness for ``benchmarks/ops/bench_<op>.py``.

An op's bench describes itself with an :class:`OpBench` (shapes, input maker, float64-capable reference,
providers, modes, a bytes or flops model) and calls :func:`main`. For every case (shape x dtype x mode)
and provider the runner

1. builds several input sets, enough to cycle through more memory than the caches hold;
2. checks the provider once against the reference run in float64 (outputs, and gradients for the
   backward modes); a provider may be at most 2x as far from float64 as the reference run in the same
   dtype, plus one ulp of the largest value. A wrong result aborts the row: a fast wrong kernel never
   prints a number;
3. times it with :func:`recsys_kernels.benchmarking.time_ms` (median, inputs rotated);
4. reports ms, the roofline figure (GB/s or TFLOP/s) and its fraction of the ceiling measured in the same
   run (copy bandwidth, or the GEMM rate), and the speedup over the "reference" provider.

Modes: "fwd" times the forward under no_grad; "bwd" times only ``autograd.grad`` on a forward graph built
untimed before each call; "fwd+bwd" times both. Output: a table on stdout, and JSON + CSV files under
``--out`` with device, versions, git revision, timestamp and ceilings (where the tree has no .git, the
revision is taken from the environment variable RECSYS_KERNELS_GIT_REV).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

import recsys_kernels
from recsys_kernels import _backend, benchmarking

MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Input sets cycle through at least this many bytes (5x an H100's L2) so a call never finds its inputs cached.
_ROTATE_BYTES = {"cuda": 256 * 2**20, "cpu": 64 * 2**20}
_MAX_SETS = 8

Tensors = tuple[torch.Tensor, ...]


@dataclass
class Case:
    """One benchmark point: ``shape`` (e.g. {"B": 65536, "F": 26, "D": 128}), dtype and mode."""

    shape: dict[str, int]
    dtype: torch.dtype
    mode: str

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape.items())


@dataclass
class Provider:
    """One implementation to time.

    ``factory(case, device)`` returns the forward callable ``fn(*inputs) -> Tensor | tuple[Tensor, ...]``
    (it is called once per shape and dtype, so a compiled provider compiles once per shape and dtype).
    ``unavailable(device)`` returns why the provider cannot run here, or None. ``oracle`` replaces the op's
    reference for the correctness check when the provider computes a different but equivalent layout.
    ``compiles`` marks torch.compile providers: a failure on first call is reported as "n/a", not "error".
    ``env``: environment variables set while the provider is checked and timed, backward included (a kernel
    switch that the C++ launchers read on every call).
    """

    name: str
    factory: Callable[[Case, torch.device], Callable[..., Any]]
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    oracle: Callable[..., Any] | None = None
    compiles: bool = False
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """Sets env's variables for the with-block, then restores what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class OpBench:
    """What an op's bench supplies.

    make_inputs(shape, dtype, device, generator) -> leaf tensors; ``differentiable`` indexes the ones that
    get gradients in the backward modes. ``reference(*inputs)`` is the forward oracle (must accept float64).
    ``bytes_fn(case)`` (memory-bound ops: bytes that must move) or ``flops_fn(case)`` gives the roofline.
    """

    name: str
    shapes: list[dict[str, int]]
    quick_shapes: list[dict[str, int]]
    make_inputs: Callable[[dict[str, int], torch.dtype, torch.device, torch.Generator], Tensors]
    reference: Callable[..., Any]
    providers: list[Provider]
    differentiable: tuple[int, ...] = ()
    modes: tuple[str, ...] = MODES
    dtypes: tuple[str, ...] = ("fp16", "bf16", "fp32")
    bytes_fn: Callable[[Case], float] | None = None
    flops_fn: Callable[[Case], float] | None = None
    quick_skip: tuple[str, ...] = ("reference-compiled",)  # dropped by --quick unless named in --providers


@dataclass
class Row:
    case: Case
    provider: str
    status: str = "ok"  # ok | n/a | error | wrong
    ms: float | None = None
    metric: float | None = None
    fraction: float | None = None
    speedup: float | None = None
    note: str = ""


# ----------------------------------------------------------------------------------------------- providers

def backend_provider(op: str, backend: str, fn: Callable[..., Any], name: str | None = None) -> Provider:
    """The public op ``fn`` run under ``recsys_kernels.use_backend(backend)``."""

    def unavailable(device: torch.device) -> str | None:
        if backend in ("cuda", "triton") and device.type != "cuda":
            return "needs a CUDA device"
        if backend == "cpu" and device.type != "cpu":
            return "CPU kernel"
        if backend == "triton" and importlib.util.find_spec("triton") is None:
            return "triton not installed"
        if backend not in _backend.live_backends(op, device.type):
            return f"recsys_kernels._C has no {backend.upper()} kernel for {op} (not built)"
        return None

    def factory(case: Case, device: torch.device) -> Callable[..., Any]:
        def run(*inputs: torch.Tensor) -> Any:
            with recsys_kernels.use_backend(backend):
                return fn(*inputs)
        return run

    return Provider(name or backend, factory, unavailable)


def compiled_reference_provider(fn: Callable[..., Any]) -> Provider:
    """``torch.compile(fullgraph=True, dynamic=False)`` of the public op ``fn`` under use_backend("reference")."""

    def factory(case: Case, device: torch.device) -> Callable[..., Any]:
        # The backend is chosen at trace time and guarded on, so every call must be inside the same block.
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)

        def run(*inputs: torch.Tensor) -> Any:
            with recsys_kernels.use_backend("reference"):
                return compiled(*inputs)
        return run

    return Provider("reference-compiled", factory, compiles=True)


def module_available(module: str) -> Callable[[torch.device], str | None]:
    """``unavailable`` for a peer library: the reason when ``module`` is not importable."""
    return lambda device: None if importlib.util.find_spec(module) is not None else f"{module} not installed"


# ------------------------------------------------------------------------------------------------ running

def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _mode_outputs(fn: Callable[..., Any], inputs: Tensors, diff: tuple[int, ...], grad_outs: Tensors,
                  mode: str) -> list[torch.Tensor]:
    """What a mode produces: the forward outputs, plus the input gradients for the backward modes."""
    if mode == "fwd":
        with torch.no_grad():
            return _as_list(fn(*inputs))
    outs = _as_list(fn(*inputs))
    grads = torch.autograd.grad(outs, [inputs[i] for i in diff], grad_outs)
    return [o.detach() for o in outs] + list(grads)


def _upcast(tensors: Sequence[torch.Tensor]) -> Tensors:
    return tuple(t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t
                 for t in tensors)


def _check(got: list[torch.Tensor], ref: list[torch.Tensor], truth: list[torch.Tensor],
           dtype: torch.dtype) -> str | None:
    """None when every output of ``got`` is at most 2x the reference's own error from float64 (+1 ulp)."""
    if len(got) != len(truth):
        return f"returned {len(got)} tensors, expected {len(truth)}"
    eps = torch.finfo(dtype).eps
    for k, (g, r, t) in enumerate(zip(got, ref, truth)):
        if g.shape != t.shape:
            return f"output {k} has shape {tuple(g.shape)}, expected {tuple(t.shape)}"
        if t.numel() == 0:
            continue
        err = (g.double() - t).abs().max().item()
        ref_err = (r.double() - t).abs().max().item()
        tol = 2 * ref_err + eps * t.abs().max().item()
        if not err <= tol:  # also catches NaN
            return f"output {k}: max |error| {err:.3g} > tolerance {tol:.3g} (reference's own error {ref_err:.3g})"
    return None


class _Runner:
    def __init__(self, bench: OpBench, device: torch.device, quick: bool, ceilings: dict[str, float]):
        self.bench, self.device, self.quick, self.ceilings = bench, device, quick, ceilings
        cuda = device.type == "cuda"
        self.warmup, self.rep = (2, 10) if quick else ((10, 50) if cuda else (3, 20))

    def inputs(self, case: Case) -> tuple[list[Tensors], list[Tensors]]:
        """Input sets and grad_output sets, enough to cycle past the caches (all from fixed seeds)."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        first = self.bench.make_inputs(case.shape, case.dtype, self.device, gen)
        set_bytes = sum(t.numel() * t.element_size() for t in first)
        n_sets = max(2, min(_MAX_SETS, math.ceil(_ROTATE_BYTES.get(self.device.type, 0) / max(set_bytes, 1))))
        sets = [first] + [self.bench.make_inputs(case.shape, case.dtype, self.device, gen) for _ in range(n_sets - 1)]
        if case.mode != "fwd":
            for s in sets:
                for i in self.bench.differentiable:
                    s[i].requires_grad_(True)
        if case.mode == "fwd":
            return sets, [() for _ in sets]
        with torch.no_grad():  # only for the output shapes
            outs = _as_list(self.bench.reference(*first))
        grads = [tuple(torch.randn(o.shape, dtype=o.dtype, device=self.device, generator=gen) for o in outs)
                 for _ in sets]
        del outs
        return sets, grads

    def truth(self, oracle: Callable[..., Any], case: Case, sets: list[Tensors], grads: list[Tensors]):
        """(float64 truth, the oracle's own result in the case's dtype) on input set 0."""
        diff = self.bench.differentiable
        truth = _mode_outputs(oracle, _upcast(sets[0]), diff, _upcast(grads[0]), case.mode)
        ref = _mode_outputs(oracle, sets[0], diff, grads[0], case.mode)
        return [t.detach() for t in truth], [r.detach() for r in ref]

    def time(self, fn: Callable[..., Any], case: Case, sets: list[Tensors], grads: list[Tensors]) -> float:
        diff = self.bench.differentiable
        kw = dict(device=self.device, warmup=self.warmup, rep=self.rep, rotate=len(sets))
        if case.mode == "fwd":
            def fwd(i: int) -> None:
                with torch.no_grad():
                    fn(*sets[i])
            return benchmarking.time_ms(fwd, **kw)
        if case.mode == "bwd":
            # A fresh forward graph per call, built untimed: retain_graph would keep buffers that compiled
            # backwards donate (and refuse to run), and training frees the graph after one backward anyway.
            return benchmarking.time_ms(lambda state: torch.autograd.grad(
                state[0], [sets[state[1]][j] for j in diff], grads[state[1]]),
                setup=lambda i: (_as_list(fn(*sets[i])), i), **kw)
        return benchmarking.time_ms(lambda i: torch.autograd.grad(
            _as_list(fn(*sets[i])), [sets[i][j] for j in diff], grads[i]), **kw)

    def roofline(self, row: Row) -> None:
        seconds = row.ms * 1e-3
        if self.bench.bytes_fn is not None:
            row.metric = self.bench.bytes_fn(row.case) / seconds / 1e9
            row.fraction = row.metric / self.ceilings["copy_gbs"]
        elif self.bench.flops_fn is not None:
            row.metric = self.bench.flops_fn(row.case) / seconds / 1e12
            row.fraction = row.metric / self.ceilings["matmul_tflops"]

    def run(self, shapes: list[dict[str, int]], dtypes: list[torch.dtype], modes: list[str],
            providers: list[Provider]) -> list[Row]:
        rows: list[Row] = []
        for shape in shapes:
            for dtype in dtypes:
                torch._dynamo.reset()  # fresh compile caches per shape/dtype: no recompile limit, no stale guards
                fns: dict[str, Callable[..., Any]] = {}
                for mode in modes:
                    rows += self.run_case(Case(dict(shape), dtype, mode), providers, fns)
        return rows

    def check_and_time(self, row: Row, p: Provider, truths: tuple[list[torch.Tensor], list[torch.Tensor]],
                       sets: list[Tensors], grads: list[Tensors], fns: dict[str, Callable[..., Any]]) -> None:
        """Fills row: the provider's result checked against the oracle's, then its time (or why not)."""
        case = row.case
        truth, ref = truths
        try:
            if p.name not in fns:
                fns[p.name] = p.factory(case, self.device)
            got = _mode_outputs(fns[p.name], sets[0], self.bench.differentiable, grads[0], case.mode)
        except Exception as e:  # noqa: BLE001 - reported in the row; one provider must not end the run
            row.status = "n/a" if p.compiles else "error"
            row.note = f"{'torch.compile failed: ' if p.compiles else ''}{type(e).__name__}: {_first_line(e)}"
            return
        wrong = _check(got, ref, truth, case.dtype)
        del got
        if wrong is not None:
            row.status, row.note = "wrong", f"WRONG RESULT, not timed: {wrong}"
            return
        try:
            row.ms = self.time(fns[p.name], case, sets, grads)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at this shape; reported in the row
            row.status, row.note = "error", f"{type(e).__name__}: {_first_line(e)}"
            return
        self.roofline(row)
        # Progress on stderr as each row finishes, so a run cut off by a time limit still says something.
        print(f"# {case.label} {p.name}: {row.ms:.4f} ms", file=sys.stderr, flush=True)

    def run_case(self, case: Case, providers: list[Provider], fns: dict[str, Callable[..., Any]]) -> list[Row]:
        sets, grads = self.inputs(case)
        truths: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        rows = []
        for p in providers:
            row = Row(case, p.name)
            rows.append(row)
            reason = p.unavailable(self.device)
            if reason is not None:
                row.status, row.note = "n/a", reason
                continue
            oracle = p.oracle or self.bench.reference
            if id(oracle) not in truths:
                try:
                    truths[id(oracle)] = self.truth(oracle, case, sets, grads)
                except Exception as e:  # noqa: BLE001 - reported in the row; one provider must not end the run
                    row.status, row.note = "error", f"{type(e).__name__}: {_first_line(e)}"
                    continue
            with _environment(p.env):
                self.check_and_time(row, p, truths[id(oracle)], sets, grads, fns)
        base = next((r.ms for r in rows if r.provider == "reference" and r.ms), None)
        for r in rows:
            if base and r.ms:
                r.speedup = base / r.ms
        del sets, grads, truths
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return rows


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


# ------------------------------------------------------------------------------------------------- output

def _git_revision() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        # A copy of the tree without .git (e.g. the lent GPU machine): the caller may pass the revision.
        return os.environ.get("RECSYS_KERNELS_GIT_REV", "unknown")
    return rev + ("-dirty" if dirty else "")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device: torch.device, ceilings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": benchmarking.device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "recsys_kernels": recsys_kernels.__version__,
        "python": sys.version.split()[0],
        "git": _git_revision(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ceilings": ceilings,
        "args": {k: v for k, v in vars(args).items()},
    }


def _row_dict(row: Row, metric_name: str) -> dict[str, Any]:
    return {"shape": row.case.label, **row.case.shape, "dtype": _DTYPE_NAMES.get(row.case.dtype, str(row.case.dtype)),
            "mode": row.case.mode, "provider": row.provider, "status": row.status, "ms": row.ms,
            metric_name: row.metric, "fraction_of_ceiling": row.fraction, "speedup_vs_reference": row.speedup,
            "note": row.note}


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def print_table(rows: list[Row], metric_name: str, ceiling_name: str) -> None:
    header = ["shape", "dtype", "mode", "provider", "ms", metric_name, f"% {ceiling_name}", "vs ref", "note"]
    body = [[r.case.label, _DTYPE_NAMES.get(r.case.dtype, str(r.case.dtype)), r.case.mode, r.provider,
             _fmt(r.ms, ".4f"), _fmt(r.metric, ".1f" if metric_name == "GB/s" else ".2f"),
             _fmt(None if r.fraction is None else 100 * r.fraction, ".1f"),
             _fmt(r.speedup, ".2f") + ("x" if r.speedup else ""),
             r.note if r.status == "ok" else (f"n/a ({r.note})" if r.status == "n/a" else r.note)]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    numeric = {4, 5, 6, 7}
    for line in [header, ["-" * w for w in widths], *body]:
        cells = [str(c).rjust(w) if i in numeric else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())


def write_results(path: str, op: str, meta: dict[str, Any], rows: list[Row], metric_name: str) -> tuple[str, str]:
    """Write ``<op>-<device type>-<UTC time>.json`` and ``.csv`` under ``path``; returns both paths."""
    os.makedirs(path, exist_ok=True)
    stamp = meta["timestamp"].replace(":", "").replace("-", "").split("+")[0]
    stem = os.path.join(path, f"{op}-{meta['device_type']}-{stamp}")
    dicts = [_row_dict(r, metric_name) for r in rows]
    with open(stem + ".json", "w") as f:
        json.dump({"op": op, **meta, "rows": dicts}, f, indent=1)
    # The CSV repeats the run's metadata on every row so that it stands alone in a spreadsheet.
    flat_meta = {k: meta[k] for k in ("device", "torch", "triton", "git", "timestamp")}
    flat_meta.update({f"ceiling_{k}": v for k, v in meta["ceilings"].items()})
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["op", *keys, *flat_meta])
        writer.writeheader()
        for d in dicts:
            writer.writerow({"op": op, **d, **flat_meta})
    return stem + ".json", stem + ".csv"


# ---------------------------------------------------------------------------------------------------- CLI

def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(bench: OpBench, argv: Sequence[str] | None) -> argparse.Namespace:
    names = [p.name for p in bench.providers]
    ap = argparse.ArgumentParser(description=f"Benchmark recsys_kernels' {bench.name} against its providers.")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--dtypes", default=",".join(bench.dtypes), help=f"comma list of {', '.join(DTYPES)}")
    ap.add_argument("--modes", default=",".join(bench.modes), help=f"comma list of {', '.join(bench.modes)}")
    ap.add_argument("--providers", default=None, help=f"comma list of {', '.join(names)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions (CPU smoke run)")
    ap.add_argument("--out", default="bench_out", help="folder for the JSON and CSV results")
    args = ap.parse_args(argv)
    for flag, given, allowed in (("--dtypes", args.dtypes, DTYPES), ("--modes", args.modes, bench.modes),
                                 ("--providers", args.providers or "", names)):
        bad = [x for x in _csv_list(given) if x not in allowed]
        if bad:
            ap.error(f"{flag}: unknown {bad}; choose from {list(allowed)}")
    return args


def main(bench: OpBench, argv: Sequence[str] | None = None) -> list[Row]:
    """Parse the common flags, measure the ceilings, run every case, print and save the results."""
    args = parse_args(bench, argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.providers:
        providers = [p for p in bench.providers if p.name in _csv_list(args.providers)]
    else:
        providers = [p for p in bench.providers if not (args.quick and p.name in bench.quick_skip)]
    matmul_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPUs rarely have fast bf16 GEMM
    ceilings = {"copy_gbs": benchmarking.copy_bandwidth_gbs(device),
                "matmul_tflops": benchmarking.matmul_tflops(device, matmul_dtype),
                "matmul_dtype": _DTYPE_NAMES[matmul_dtype]}
    metric_name, ceiling_name = ("GB/s", "copy BW") if bench.bytes_fn else ("TFLOP/s", f"{ceilings['matmul_dtype']} GEMM")
    meta = metadata(device, ceilings, args)
    print(f"# {bench.name} on {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | git {meta['git']}")
    print(f"# ceilings: copy {ceilings['copy_gbs']:.1f} GB/s, {ceilings['matmul_dtype']} GEMM "
          f"{ceilings['matmul_tflops']:.2f} TFLOP/s")
    runner = _Runner(bench, device, args.quick, ceilings)
    rows = runner.run(bench.quick_shapes if args.quick else bench.shapes,
                      [DTYPES[d] for d in _csv_list(args.dtypes)], _csv_list(args.modes), providers)
    print_table(rows, metric_name, ceiling_name)
    json_path, csv_path = write_results(args.out, bench.name, meta, rows, metric_name)
    print(f"# wrote {json_path} and {csv_path}")
    return rows
