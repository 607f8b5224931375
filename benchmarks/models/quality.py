"""Issue 6's quality run: train every thin model on its data set in one process, pick the epoch with the best
validation metric, report its test metrics against the targets.

    python -m benchmarks.models.quality --device cuda --out bench_out/quality      # about 8 minutes on an H100
    python -m benchmarks.models.quality --device cpu --quick --out /tmp/quality    # tiny settings, a CPU check

Groups (``--only``):
  beauty        Amazon Beauty, leave-one-out, full ranking, length 50: HSTU, SASRec twice (sasrec: the paper's
                Beauty setting, BCE with one negative; sasrec-ssm: D 64 with HSTU's sampled softmax, so the two
                compare encoders), BERT4Rec, GRU4Rec. Target: HSTU HR@10 >= 0.0744 and NDCG@10 >= 0.0403
                (ICLRec's trained model on this file) and HSTU above both SASRec rows on HR@10 and NDCG@10.
  ml-100k-seq   MovieLens-100K next-item (sequences by timestamp), the same protocol: the four models, HSTU > SASRec.
  pmf           MovieLens-100K ratings, PMF 5-fold cross-validation (ratings_task.cross_validate_pmf): RMSE <= 0.925.
  ctr           synthetic CTR with a planted logistic model: DLRM test AUC within 0.005 of the planted model's,
                DQRM's INT4 inference model (DQRM.to_int4) within 0.002 of DLRM with tables >= 7x smaller.
Each sequential model trains with ``recsys_kernels.train.loop.fit`` under a wall-clock budget of ``--budget-s``
times its weight (JOBS), at most ``--max-epochs`` epochs; the configs are the registry's (quality_configs.py).
Output: one table on stdout; ``quality.json`` (rows, every epoch's validation metrics, versions) and
``quality.log`` (the trainer's epoch lines) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import harness
from recsys_kernels import benchmarking
from recsys_kernels.data import Sequences, load_dataset
from recsys_kernels.train import registry
from recsys_kernels.train.loop import fit

BEAUTY_HR10, BEAUTY_NDCG10 = 0.0744, 0.0403
PMF_RMSE = 0.925
DLRM_AUC_GAP, DQRM_AUC_GAP, DQRM_SHRINK = 0.005, 0.002, 7.0
GROUPS = ("beauty", "ml-100k-seq", "pmf", "ctr")
SEQ_MODELS = ("hstu", "sasrec", "bert4rec", "gru4rec")


@dataclass
class Job:
    """One sequential training: ``weight`` x --budget-s seconds of training and validation; ``name`` labels its row."""

    data: str
    model: str
    config: str
    weight: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.model


JOBS = [
    Job("beauty", "hstu", "hstu-beauty-fast", 2.5),
    Job("beauty", "sasrec", "sasrec-beauty-fast", 1.0, "sasrec-ssm"),  # HSTU's loss: compares the encoders
    Job("beauty", "sasrec", "sasrec-beauty", 0.75),                    # the paper's Beauty setting (BCE)
    Job("beauty", "bert4rec", "bert4rec-beauty-fast", 1.0),
    Job("beauty", "gru4rec", "gru4rec-beauty-fast", 0.5),
    Job("ml-100k-seq", "hstu", "hstu-ml-100k-fast", 0.3),
    Job("ml-100k-seq", "sasrec", "sasrec-ml-100k-fast", 0.3),
    Job("ml-100k-seq", "bert4rec", "bert4rec-ml-100k-fast", 0.3),
    Job("ml-100k-seq", "gru4rec", "gru4rec-ml-100k-fast", 0.2),
]
# HSTU must beat these rows (HR@10 and NDCG@10): the target of the HSTU row, and a check of its own per row.
RIVALS = {"beauty": ("sasrec", "sasrec-ssm"), "ml-100k-seq": ("sasrec",)}


@dataclass
class Row:
    data: str
    model: str
    config: str
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: str = "-"
    wall_s: float = 0.0
    target: str = "reported"
    met: bool | None = None
    error: str | None = None


def _config(args: argparse.Namespace, name: str, row: str = "", model: str = "", **overrides: Any) -> dict:
    """Registry config ``name`` with ``overrides``, then the --set entries of ``row`` (or of its ``model``),
    epochs capped."""
    cfg = dict(registry.CONFIGS[name], **overrides)
    for item in args.set:
        target, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        # "beauty/sasrec-ssm", "sasrec-ssm" or "sasrec" (every row of that model, whatever the row's name)
        if target in (row, row.split("/")[-1], model):
            cfg[key] = json.loads(value)
    if args.max_epochs:
        cfg["epochs"] = min(int(cfg["epochs"]), args.max_epochs)
    return cfg


def _guarded(row: Row, log: Callable[[str], None], fn: Callable[[], None]) -> Row:
    """Run ``fn`` (which fills ``row``); a failure becomes the row's error, and the run goes on."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # one broken model must not cost the other results of a GPU session
        row.error, row.met = f"{type(exc).__name__}: {exc}", False
        log(traceback.format_exc())
    row.wall_s = time.perf_counter() - t0
    return row


def _test_metrics(result: dict, keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(result["test"][k]) for k in keys if k in result["test"]}


def _epochs(result: dict) -> str:
    return f"{len(result['epochs'])} (best {result['best_epoch']}, {result['stopped']})"


def run_sequential(args, device, log, runs: dict) -> list[Row]:
    rows: list[Row] = []
    for data_name in [g for g in ("beauty", "ml-100k-seq") if g in args.only]:
        data = load_dataset(data_name)
        if args.users:  # the first N users (CPU checks)
            ts = data.timestamps[: args.users] if data.timestamps is not None else None
            data = Sequences(sequences=data.sequences[: args.users], num_items=data.num_items, timestamps=ts)
        by_name: dict[str, Row] = {}
        for job in [j for j in JOBS if j.data == data_name and j.model in args.models]:
            row = Row(data_name, job.name, job.config)

            def train(job=job, row=row):
                cfg = _config(args, job.config, f"{data_name}/{job.name}", job.model, eval_batch_size=1024)
                task = registry.MODELS[job.model](data, cfg)
                result = fit(task, cfg, device=device, amp=args.amp, budget_s=args.budget_s * job.weight,
                             model_name=job.model, data_name=data_name, progress=False,
                             log=lambda msg: log(f"{data_name}/{job.name}: {msg}"))
                result.pop("model_object")
                runs[f"{data_name}/{job.name}"] = result
                row.metrics = _test_metrics(result, ("HR@10", "NDCG@10", "HR@20", "NDCG@20"))
                row.epochs = _epochs(result)

            rows.append(_guarded(row, log, train))
            by_name[job.name] = row
        hstu = by_name.get("hstu")
        if hstu is None or hstu.error:
            continue
        beaten = []
        for name in [n for n in RIVALS[data_name] if n in by_name and not by_name[n].error]:
            rival = by_name[name]
            rival.met = all(hstu.metrics[k] > rival.metrics[k] for k in ("HR@10", "NDCG@10"))
            rival.target = "HSTU above it (HR@10, NDCG@10)"
            beaten.append(rival.met)
        hstu.target, hstu.met = "> SASRec rows", bool(beaten) and all(beaten)
        if data_name == "beauty":
            hstu.target = f"HR@10 >= {BEAUTY_HR10}, NDCG@10 >= {BEAUTY_NDCG10}, " + hstu.target
            hstu.met = hstu.met and hstu.metrics["HR@10"] >= BEAUTY_HR10 and hstu.metrics["NDCG@10"] >= BEAUTY_NDCG10
    return rows


def run_pmf(args, device, log, runs: dict) -> list[Row]:
    from recsys_kernels.train.ratings_task import cross_validate_pmf

    row = Row("ml-100k", "pmf", args.pmf_config, target=f"{args.pmf_folds}-fold RMSE <= {PMF_RMSE}")

    def train():
        cfg = _config(args, args.pmf_config, "pmf")
        result = cross_validate_pmf(load_dataset("ml-100k"), cfg, args.pmf_folds, device=device,
                                    log=lambda msg: log(f"ml-100k/pmf: {msg}"))
        runs["ml-100k/pmf"] = dict(result, config=cfg)
        row.metrics = {"RMSE": result["RMSE"], "MAE": result["MAE"]}
        row.epochs = f"{cfg['epochs']} x {args.pmf_folds} folds"
        row.met = result["RMSE"] <= PMF_RMSE

    return [_guarded(row, log, train)]


def run_ctr(args, device, log, runs: dict) -> list[Row]:
    dlrm = Row("synthetic-ctr", "dlrm", "dlrm-synthetic", target=f"AUC >= planted AUC - {DLRM_AUC_GAP}")
    dqrm = Row("synthetic-ctr", "dqrm", "dqrm-synthetic",
               target=f"INT4 AUC >= DLRM AUC - {DQRM_AUC_GAP}, tables >= {DQRM_SHRINK:g}x smaller")
    state: dict[str, Any] = {}

    def train(model: str, row: Row):
        data_args = dict(registry.CONFIGS[row.config].get("data_args") or {})
        if args.ctr_samples:
            data_args["num_samples"] = args.ctr_samples
        cfg = _config(args, row.config, model, data_args=data_args)
        key = json.dumps(data_args, sort_keys=True)
        if state.get("key") != key:  # both models train on the same rows
            state["key"], state["data"] = key, load_dataset("synthetic-ctr", **data_args)
        task = registry.MODELS[model](state["data"], cfg)
        result = fit(task, cfg, device=device, amp=args.amp, budget_s=args.budget_s * 0.5, model_name=model,
                     data_name="synthetic-ctr", progress=False, log=lambda msg: log(f"synthetic-ctr/{model}: {msg}"))
        trained = result.pop("model_object")
        row.metrics = _test_metrics(result, ("AUC", "LogLoss", "planted_AUC"))
        row.epochs = _epochs(result)
        if model == "dlrm":
            row.met = row.metrics["AUC"] >= row.metrics["planted_AUC"] - DLRM_AUC_GAP
        else:
            int4 = task.evaluate(trained.to_int4(), "test", device)
            sizes = trained.table_bytes()
            row.metrics.update(int4_AUC=int4["AUC"], table_shrink=sizes["fp32"] / sizes["int4"])
            result["int4_test"], result["table_bytes"] = int4, sizes
            reference = dlrm.metrics.get("AUC", math.nan)
            row.met = (int4["AUC"] >= reference - DQRM_AUC_GAP) and row.metrics["table_shrink"] >= DQRM_SHRINK
        runs[f"synthetic-ctr/{model}"] = result

    return [_guarded(row, log, lambda m=m, row=row: train(m, row))
            for m, row in (("dlrm", dlrm), ("dqrm", dqrm)) if m in args.models]


SHOWN = ("HR@10", "NDCG@10", "RMSE", "MAE", "AUC", "planted_AUC", "int4_AUC", "table_shrink")  # the rest: JSON


def _fmt_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" if k != "table_shrink" else f"{v:.2f}x smaller"
                     for k, v in m.items() if k in SHOWN)


def print_table(rows: list[Row]) -> None:
    head = f"{'data':14s} {'model':10s} {'metrics (test)':62s} {'epochs':26s} {'wall s':>7s}  target met"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        met = "error" if r.error else {True: "yes", False: "NO", None: "-"}[r.met]
        print(f"{r.data:14s} {r.model:10s} {(r.error or _fmt_metrics(r.metrics))[:62]:62s} {r.epochs:26s} "
              f"{r.wall_s:7.1f}  {met:5s} ({r.target})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--budget-s", type=float, default=50.0,
                   help="seconds of training + validation per model of weight 1 (HSTU on Beauty has 2.5)")
    p.add_argument("--max-epochs", type=int, default=0, help="cap on every config's epochs (0: the config's)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {GROUPS}")
    p.add_argument("--models", default=",".join(SEQ_MODELS + ("pmf", "dlrm", "dqrm")), help="comma-separated models")
    p.add_argument("--users", type=int, default=0, help="train on the first N users of each sequence data set")
    p.add_argument("--pmf-folds", type=int, default=5)
    p.add_argument("--pmf-config", default="pmf-ml-100k-fast", help="pmf-ml-100k: batch 256, 4x the steps")
    p.add_argument("--ctr-samples", type=int, default=0, help="synthetic CTR rows (0: the config's)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="ROW:KEY=JSON",
                   help="override a row's config entry: sasrec:lr=2e-3 (every sasrec row, sasrec-ssm included), "
                        "beauty/sasrec-ssm:num_blocks=4 (one row)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="CPU check: --users 1500 --budget-s 20 --max-epochs 2 --pmf-folds 2 --ctr-samples 20000")
    p.add_argument("--out", default="bench_out/quality")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.budget_s = args.users or 1500, min(args.budget_s, 20.0)
        args.max_epochs, args.pmf_folds = args.max_epochs or 2, 2
        args.ctr_samples = args.ctr_samples or 20000
    args.only, args.models = args.only.split(","), args.models.split(",")
    unknown = set(args.only) - set(GROUPS)
    if unknown:
        p.error(f"unknown groups {sorted(unknown)}; known: {GROUPS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as generative-recommenders' configs (enable_tf32)
    registry.load_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "quality.log", "w")

    def log(msg: str) -> None:
        print(msg, file=log_file, flush=True)
        if any(word in msg for word in (": test", ": stopping", ": fold", "Traceback")):
            print(msg, file=sys.stderr, flush=True)

    runs: dict[str, Any] = {}
    rows: list[Row] = []
    t0 = time.perf_counter()
    plan = [(run_sequential, {"beauty", "ml-100k-seq"}, set(SEQ_MODELS)), (run_pmf, {"pmf"}, {"pmf"}),
            (run_ctr, {"ctr"}, {"dlrm", "dqrm"})]
    for runner, groups, models in plan:
        if groups & set(args.only) and models & set(args.models):
            print(f"[{time.perf_counter() - t0:5.0f} s] {runner.__name__} ...", file=sys.stderr, flush=True)
            rows += runner(args, device, log, runs)
    total = time.perf_counter() - t0
    print(f"\nquality on {benchmarking.device_name(device)}, {total:.0f} s in all "
          f"(--budget-s {args.budget_s:g}, amp {args.amp and device.type == 'cuda'})")
    print_table(rows)
    payload = {"meta": harness.metadata(device, {}, args), "total_s": total, "rows": [asdict(r) for r in rows],
               "runs": runs}
    (out / "quality.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {out / 'quality.json'} and {out / 'quality.log'}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
