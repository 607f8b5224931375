"""Training speed of the thin models on the fused ops against the same model under
``recsys_kernels.use_backend("reference")``, side by side in one run (issue 6, "Speed").

    python -m benchmarks.models.speed --device cuda --out bench_out/speed      # H100: a few minutes
    python -m benchmarks.models.speed --device cpu --quick --out /tmp/speed    # tiny shapes, a CPU check

A step is what the trainer does: ``task.loss`` (under bf16 autocast for the "amp" precision), zero_grad,
backward (the fused tables update themselves inside it), every optimizer's step. Each model is built once
from its registry config by its task; for every precision it runs ``--warmup`` untimed steps and ``--steps``
timed ones per backend ("fused" = the automatic dispatch, then "reference"), cycling through a few batches
collated beforehand and already on the device (data loading is not timed), with the device synchronised
around the timed loop. Random inputs of the benchmark's shapes:
  hstu / sasrec / bert4rec / gru4rec   ML-1M configs: batch 128, every sequence 200 items long, 3,706 items
  dlrm   dlrm-mlperf: 26 tables of the Criteo Kaggle cardinalities capped at 4M rows (18.8M rows), D 128,
         MLPerf MLPs, batch 65,536, power-law ids (synthetic_ctr)            target >= 4M samples/s
  dqrm   the same architecture with INT4 QAT tables (qparams "row")
  pmf    pmf-ml-100k's model (D 128) on ML-20M-sized tables (138,493 x 26,744), batch 65,536
Targets: HSTU fused/reference >= 3x; DLRM >= 4M samples/s. Output: a table, and speed.json + speed.csv under
``--out`` (device, versions, git revision, live backends).
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import recsys_kernels
from benchmarks import harness
from recsys_kernels import benchmarking
from recsys_kernels.data import Ratings, default_table_sizes, synthetic_ctr, synthetic_sequences
from recsys_kernels.train import registry
from recsys_kernels.train.loop import train_step
from recsys_kernels.train.ratings_task import RatingsTask

ROTATE = 4  # batches cycled through
SEQ_MODELS = ("hstu", "sasrec", "bert4rec", "gru4rec")
MODELS = SEQ_MODELS + ("dlrm", "dqrm", "pmf")
TARGETS = {"hstu": ("ratio", 3.0), "dlrm": ("samples_per_s", 4e6)}


@dataclass
class Bench:
    """The shapes of one model's benchmark."""

    config: str
    batch: int
    length: int = 0          # sequence models: items per sequence
    num_items: int = 0       # sequence models: item vocabulary; pmf: items
    num_users: int = 0       # pmf: users
    table_cap: int = 0       # dlrm / dqrm: rows per table at most


FULL = {
    "hstu": Bench("hstu-ml-1m", 128, 200, 3706),
    "sasrec": Bench("sasrec-ml-1m", 128, 200, 3706),
    "bert4rec": Bench("bert4rec", 128, 200, 3706),
    "gru4rec": Bench("gru4rec", 128, 200, 3706),
    "dlrm": Bench("dlrm-mlperf", 65536, table_cap=4_000_000),
    "dqrm": Bench("dlrm-mlperf", 65536, table_cap=4_000_000),
    "pmf": Bench("pmf-ml-100k", 65536, num_items=26744, num_users=138493),
}
QUICK = {
    "hstu": Bench("hstu-ml-1m", 16, 32, 500),
    "sasrec": Bench("sasrec-ml-1m", 16, 32, 500),
    "bert4rec": Bench("bert4rec", 16, 32, 500),
    "gru4rec": Bench("gru4rec", 16, 32, 500),
    "dlrm": Bench("dlrm-mlperf", 512, table_cap=2000),
    "dqrm": Bench("dlrm-mlperf", 512, table_cap=2000),
    "pmf": Bench("pmf-ml-100k", 1024, num_items=2000, num_users=3000),
}


@dataclass
class Row:
    model: str
    shape: str
    precision: str
    fused_ms: float | None = None
    reference_ms: float | None = None
    samples_per_step: int = 0
    error: str | None = None

    @property
    def samples_per_s(self) -> float | None:
        return self.samples_per_step / self.fused_ms * 1e3 if self.fused_ms else None

    @property
    def ratio(self) -> float | None:
        return self.reference_ms / self.fused_ms if self.fused_ms and self.reference_ms else None

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(fused_steps_per_s=1e3 / self.fused_ms if self.fused_ms else None,
                   reference_steps_per_s=1e3 / self.reference_ms if self.reference_ms else None,
                   samples_per_s=self.samples_per_s, ratio=self.ratio)
        return out


def make_task(model: str, bench: Bench) -> tuple[Any, dict, str]:
    """(task, config, shape label) for ``model`` on random data of ``bench``'s shapes, ROTATE batches of it."""
    cfg = dict(registry.CONFIGS[bench.config], batch_size=bench.batch)
    n = bench.batch * ROTATE
    if model in SEQ_MODELS:
        # leave-one-out keeps length - 2 items for training, the collation reads max_len of them plus a label
        cfg["max_len"] = bench.length
        data = synthetic_sequences(n, bench.num_items, min_length=bench.length + 3, max_length=bench.length + 3)
        return registry.MODELS[model](data, cfg), cfg, f"B={bench.batch} N={bench.length} items={bench.num_items}"
    if model in ("dlrm", "dqrm"):
        sizes = default_table_sizes(bench.table_cap)
        cfg.update(split=(1.0, 0.0, 0.0), max_table_rows=bench.table_cap)
        if model == "dqrm":
            cfg.update(model="dqrm", qparams="row", scale_refresh_every=100)
        data = synthetic_ctr(n, table_sizes=sizes, seed=0)
        label = f"B={bench.batch} T=26 rows={sum(sizes):,} D={cfg['embedding_dim']}"
        return registry.MODELS[model](data, cfg), cfg, label
    rng = np.random.default_rng(0)  # pmf: uniform random (user, item, rating) triples
    users, items = rng.integers(0, bench.num_users, n), rng.integers(0, bench.num_items, n)
    ratings = Ratings(users=users, items=items, ratings=rng.integers(1, 6, n).astype(np.float32),
                      timestamps=np.zeros(n, dtype=np.int64), num_users=bench.num_users, num_items=bench.num_items)
    task = RatingsTask(ratings, cfg, splits={"train": ratings, "valid": None, "test": ratings})
    return task, cfg, f"B={bench.batch} users={bench.num_users} items={bench.num_items} D={cfg['embedding_dim']}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[Any], None], batches: list, warmup: int, steps: int, device: torch.device) -> float:
    """Mean ms of one ``step(batch)`` over ``steps`` calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def training_step(task: Any, net: torch.nn.Module, optimizers: list, device: torch.device,
                  amp: bool) -> Callable[[Any], None]:
    """The trainer's step (recsys_kernels.train.loop.train_step) on one batch."""
    return lambda batch: train_step(task, net, optimizers, batch, device, amp)


def bench_model(model: str, bench: Bench, args: argparse.Namespace, device: torch.device) -> list[Row]:
    task, cfg, label = make_task(model, bench)
    net = task.build_model(cfg).to(device).train()
    optimizers = task.make_optimizers(net, cfg)
    batches = list(itertools.islice(task.train_batches(0, device), ROTATE))
    rows = []
    for precision in args.precisions:
        step = training_step(task, net, optimizers, device, amp=precision == "amp")
        row = Row(model, label, precision, samples_per_step=task.batch_size_of(batches[0]))
        for backend, attr in ((None, "fused_ms"), ("reference", "reference_ms")):
            try:
                with recsys_kernels.use_backend(backend):
                    setattr(row, attr, time_steps(step, batches, args.warmup, args.steps, device))
            except (RuntimeError, ValueError) as exc:  # e.g. the reference out of memory: keep the other numbers
                row.error = f"{backend or 'fused'}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {model:9s} {precision:4s} fused {row.fused_ms or float('nan'):9.2f} ms  reference "
              f"{row.reference_ms or float('nan'):9.2f} ms" + (f"  ({row.error})" if row.error else ""),
              file=sys.stderr, flush=True)
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def target_text(row: Row) -> str:
    if row.model not in TARGETS:
        return ""
    what, goal = TARGETS[row.model]
    value = row.ratio if what == "ratio" else row.samples_per_s
    met = "-" if value is None else ("yes" if value >= goal else "NO")
    return f"{met} ({'fused/ref' if what == 'ratio' else 'samples/s'} >= {goal:g})"


def print_table(rows: list[Row], targets: bool) -> None:
    head = (f"{'model':9s} {'shape':44s} {'prec':4s} {'fused ms':>9s} {'ref ms':>9s} {'steps/s':>8s} "
            f"{'samples/s':>11s} {'fused/ref':>9s}  target")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        steps = 1e3 / r.fused_ms if r.fused_ms else None
        print(f"{r.model:9s} {r.shape:44s} {r.precision:4s} {_fmt(r.fused_ms, '9.2f')} {_fmt(r.reference_ms, '9.2f')} "
              f"{_fmt(steps, '8.1f')} {_fmt(r.samples_per_s, '11.4g')} {_fmt(r.ratio, '8.2f')}x  "
              + (target_text(r) if targets else "") + (f"  [{r.error}]" if r.error else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    p.add_argument("--precision", default=None,
                   help="comma-separated of fp32, amp (bf16 autocast); default fp32,amp on CUDA, fp32 elsewhere")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per backend (default 10; --quick 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per backend (default 50; --quick 3)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a CPU check)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="bench_out/speed")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; known: {MODELS}")
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.precisions = (args.precision or ("fp32,amp" if device.type == "cuda" else "fp32")).split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    registry.load_all()
    shapes = QUICK if args.quick else FULL
    rows: list[Row] = []
    for model in args.models:
        print(f"{model} ...", file=sys.stderr, flush=True)
        try:
            rows += bench_model(model, shapes[model], args, device)
        except Exception as exc:  # one broken model must not cost the other numbers of a GPU session
            rows.append(Row(model, "-", "-", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            print(f"  {model}: {rows[-1].error}", file=sys.stderr, flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\ntraining speed on {benchmarking.device_name(device)}: mean of {args.steps} steps after {args.warmup} "
          f"warm-up steps, batches on the device; fused = automatic dispatch, ref = use_backend('reference')")
    print_table(rows, targets=device.type == "cuda" and not args.quick)  # the targets are the H100's
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = harness.metadata(device, {}, args)
    meta["capabilities"] = recsys_kernels.capabilities()
    records = [r.record() for r in rows]
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": records}, indent=1, default=str) + "\n")
    with open(out / "speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["model"])
        writer.writeheader()
        writer.writerows(records)
    print(f"wrote {out / 'speed.json'} and {out / 'speed.csv'}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
