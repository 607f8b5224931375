"""One model end to end: data, backbone, collaborative pretraining, stages, evaluation, checkpoint.

Used by the command line (cli.py) and the quality benchmark. ``MODELS`` maps a name to its module, which
provides DATA ("collm" | "ml-100k"), DEFAULTS, build(), stages() and evaluate().
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .backbone import Backbone
from .data import subset
from .trainer import DistContext, run_stage

__all__ = ["MODELS", "model_module", "resolve_config", "default_data_path", "load_data", "limit_splits",
           "train_and_evaluate", "save_checkpoint", "load_checkpoint"]

MODELS = {"tallrec": ".tallrec", "collm": ".collm", "llara": ".llara", "allmrec": ".allmrec"}


def model_module(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown LLM recommender {name!r}; known: {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name], __package__)


def resolve_config(name: str, overrides: dict | None = None) -> dict:
    """The model's DEFAULTS updated by ``overrides``; an unknown key raises (typos)."""
    defaults = model_module(name).DEFAULTS
    config = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r} for {name}; keys: {', '.join(sorted(defaults))}")
        config[key] = value
    return config


def default_data_path(name: str) -> Path:
    from recsys_kernels.data import data_root

    root = data_root()
    if root is None:
        raise FileNotFoundError("no data root: pass --data or set RECSYS_KERNELS_DATA to the shared data folder")
    return root / ("collm-ml-1m/ml-1m.zip" if model_module(name).DATA == "collm" else "ml-100k")


def load_data(name: str, path: str | Path | None = None, *, seed: int = 0):
    from .data import load_collm_ml1m, movielens_candidates

    path = Path(path) if path is not None else default_data_path(name)
    return load_collm_ml1m(path) if model_module(name).DATA == "collm" else movielens_candidates(path, seed=seed)


def limit_splits(data, train: int | None = None, evaluation: int | None = None, seed: int = 0):
    """The same data with at most ``train`` training rows and ``evaluation`` valid/test rows (seeded).
    The collaborative models still pretrain on every training row (``cf_train``, ``train_sequences``)."""
    if hasattr(data, "cf_train") and data.cf_train is None:
        data.cf_train = data.splits["train"]
    data.splits = {s: subset(rows, train if s == "train" else evaluation, seed) for s, rows in data.splits.items()}
    return data


def train_and_evaluate(name: str, backbone: Backbone, data, config: dict, device: torch.device, *,
                       ctx: DistContext | None = None, time_budget_s: float | None = None,
                       splits: tuple[str, ...] = ("valid", "test"), text_embeddings=None, log_every: int = 0,
                       log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Build (collaborative pretraining included), run every stage, evaluate ``splits``; (model, report).

    ``time_budget_s`` covers the stages; each stage gets the remaining budget in proportion to its steps."""
    ctx = ctx or DistContext()
    mod = model_module(name)
    kwargs = {"text_embeddings": text_embeddings} if name == "allmrec" else {}
    t0 = time.perf_counter()
    model = mod.build(backbone, data, config, device, ctx, **kwargs)
    report: dict = {"model": name, "config": config, "backbone": backbone.source,
                    "build_seconds": round(time.perf_counter() - t0, 1), "stages": []}
    stage_list = mod.stages(model, data, config)
    steps = [s.total_steps(ctx.world) for s in stage_list]
    start = time.perf_counter()
    for k, stage in enumerate(stage_list):
        budget = None
        if time_budget_s is not None:
            left = max(0.0, time_budget_s - (time.perf_counter() - start))
            budget = left * steps[k] / max(1, sum(steps[k:]))
        result = run_stage(model, stage, device, ctx, time_budget_s=budget, log_every=log_every, log=log)
        report["stages"].append(result.summary())
        report["stages"][-1]["losses"] = result.losses
    t1 = time.perf_counter()
    for split in splits:
        report[split] = mod.evaluate(model, data, split, config, device, ctx)
    report["eval_seconds"] = round(time.perf_counter() - t1, 1)
    return model, report


def save_checkpoint(path: str | Path, name: str, model: torch.nn.Module, config: dict, report: dict | None = None) -> Path:
    """torch.save of the trained state (CPU tensors, backbone weights left out) with its config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": name, "config": config, "backbone": model.backbone.source, "state": model.trained_state(),
               "report": json.loads(json.dumps(report or {}, default=str))}
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path, backbone: Backbone, data, device: torch.device,
                    ctx: DistContext | None = None) -> tuple[str, torch.nn.Module, dict]:
    """(name, model, config) rebuilt on ``backbone`` (the same pretrained weights it was trained on)."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    name, config = payload["model"], payload["config"]
    kwargs = {"text_embeddings": payload["state"]["text"].numpy()} if name == "allmrec" else {}
    model = model_module(name).build(backbone, data, config, device, ctx, pretrain=False, **kwargs)
    model.load_trained_state(payload["state"])
    model.to(device).eval()
    return name, model, config


def jsonable(report: dict) -> dict:
    """The report without per-step losses (for printing)."""
    out = {k: v for k, v in report.items() if k != "stages"}
    out["stages"] = [{k: v for k, v in s.items() if k != "losses"} for s in report.get("stages", [])]
    return json.loads(json.dumps(out, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
