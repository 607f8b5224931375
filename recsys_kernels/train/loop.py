"""The trainer: epochs over a Task, evaluation every epoch, best checkpoint, resume, results JSON.

    result = fit(task, config, device="cpu", out_dir="runs/hstu")   # -> dict, also runs/hstu/results.json

Files under ``out_dir``: ``last.pt`` (after every epoch; what ``--resume`` takes), ``best.pt`` (the epoch with
the best validation ``task.primary_metric``; what ``eval`` takes) and ``results.json`` (config, metrics per
epoch, samples/s, the test metrics of the best epoch, versions and git revision). Without ``out_dir`` nothing
is written and the best weights are kept in memory.

``amp``: bfloat16 autocast on CUDA (no loss scaling needed for bf16); elsewhere it is off, with a note.
``compile``: ``model.compile()`` — the module's forward is compiled in place, so state dict keys and
checkpoints are the same as eager.
``budget_s``: a wall-clock budget for training and validation; after each epoch the trainer stops when one more
epoch of the mean length so far would end past it (at least one epoch always runs; the test evaluation of the
best epoch comes after it). ``result["stopped"]`` says why training ended: "epochs", "patience" or "budget".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from recsys_kernels.train.checkpoint import (load_checkpoint, rng_state, save_checkpoint, set_rng_state, to_cpu,
                                             versions)
from recsys_kernels.train.progress import Progress
from recsys_kernels.train.task import Task

__all__ = ["autocast", "fit", "load_for_eval", "no_autocast"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def no_autocast(device: torch.device) -> torch.autocast:
    """Autocast switched off on ``device``: for float32 matmuls inside an autocast region, which autocast
    would otherwise run in bf16 whatever their inputs' dtype."""
    return torch.autocast(device_type=device.type, enabled=False)


def _better(task: Task, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new > old if task.higher_is_better else new < old


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)


def train_step(task: Task, model: torch.nn.Module, optimizers: list, batch, device: torch.device,
               amp: bool) -> torch.Tensor:
    """One step on ``batch``: task.loss (bf16 autocast when amp), zero_grad, backward (fused tables update
    themselves there), every optimizer's step. Returns the loss."""
    with autocast(device, amp):
        loss = task.loss(model, batch)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss


def fit(task: Task, config: dict, *, device: str | torch.device = "cpu", amp: bool = False, compile: bool = False,
        out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
        model_name: str | None = None, data_name: str | None = None, log: Log = _stderr,
        progress: bool = True, budget_s: float | None = None) -> dict:
    """Train ``task`` for ``config["epochs"]`` epochs and return the results dict (see module docstring)."""
    device = torch.device(device)
    if amp and device.type != "cuda":
        log(f"note: --amp is bf16 autocast on CUDA only; training in float32 on {device.type}")
    epochs = int(config["epochs"])
    patience = int(config.get("patience", 0))
    model = task.build_model(config).to(device)
    optimizers = task.make_optimizers(model, config)
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model_state"])
        if len(ckpt["optimizer_states"]) != len(optimizers):
            raise ValueError(f"{resume}: {len(ckpt['optimizer_states'])} optimizer states for {len(optimizers)} "
                             "optimizers: the checkpoint is from another model or config")
        for opt, state in zip(optimizers, ckpt["optimizer_states"]):
            opt.load_state_dict(state)
        start_epoch, history, best = int(ckpt["epoch"]), list(ckpt["history"]), ckpt.get("best")
        set_rng_state(ckpt["rng"])
        if out is not None and (out / "best.pt").is_file():
            best_state = load_checkpoint(out / "best.pt")["model_state"]
        elif best is not None and Path(resume).with_name("best.pt").is_file():
            best_state = load_checkpoint(Path(resume).with_name("best.pt"))["model_state"]
        log(f"resumed from {resume} after epoch {start_epoch}")
    if compile:
        model.compile()
    run_info = {"model": model_name, "data": data_name, "task": task.name, "primary_metric": task.primary_metric,
                "device": str(device), "amp": bool(amp and device.type == "cuda"), "compile": compile,
                "config": config, "versions": versions()}

    def checkpoint_payload(epoch: int) -> dict:
        return {"model_name": model_name, "data": data_name, "task": task.name, "config": config, "epoch": epoch,
                "model_state": model.state_dict(), "optimizer_states": [o.state_dict() for o in optimizers],
                "history": history, "best": best, "rng": rng_state(), "versions": run_info["versions"]}

    num_batches = getattr(task, "num_train_batches", None)
    stale = 0
    stopped = "epochs"
    t_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        bar = Progress(f"epoch {epoch + 1}/{epochs}", num_batches() if callable(num_batches) else None,
                       use_tqdm=progress) if progress else None
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        steps = samples = 0
        t0 = time.perf_counter()
        for batch in task.train_batches(epoch, device):
            loss = train_step(task, model, optimizers, batch, device, amp)
            loss_sum += loss.detach().double()
            steps += 1
            samples += task.batch_size_of(batch)
            if bar is not None:
                show = bar.due()  # read the loss (a device sync) only when the bar redraws
                bar.update(1, loss=float(loss_sum) / steps if show else None,
                           samples_s=round(samples / (time.perf_counter() - t0)) if show else None)
        train_s = time.perf_counter() - t0
        train_loss = float(loss_sum) / max(steps, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch + 1}: training loss is {train_loss}")
        t1 = time.perf_counter()
        with autocast(device, amp):
            valid = task.evaluate(model, "valid", device)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "steps": steps, "samples": samples,
                  "train_seconds": train_s, "samples_per_s": samples / train_s if train_s > 0 else None,
                  "eval_seconds": time.perf_counter() - t1, "valid": valid}
        history.append(record)
        if bar is not None:
            bar.close(loss=train_loss, samples_s=round(record["samples_per_s"] or 0))
        metric = valid[task.primary_metric]
        improved = _better(task, metric, best["metric"] if best else None)
        log(f"epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}, {record['samples_per_s'] or 0:.0f} samples/s, "
            f"valid " + ", ".join(f"{k} {v:.4f}" for k, v in valid.items()) + (" *" if improved else ""))
        if improved:
            best = {"epoch": epoch + 1, "metric": metric, "valid": valid}
            best_state = to_cpu(model.state_dict())
            stale = 0
            if out is not None:
                save_checkpoint(out / "best.pt", checkpoint_payload(epoch + 1))
        else:
            stale += 1
        if out is not None:
            save_checkpoint(out / "last.pt", checkpoint_payload(epoch + 1))
        if patience and stale >= patience:
            log(f"stopping: no better valid {task.primary_metric} for {patience} epochs")
            stopped = "patience"
            break
        if budget_s is not None and epoch + 1 < epochs:
            elapsed, done = time.perf_counter() - t_start, epoch + 1 - start_epoch
            if elapsed * (done + 1) / done > budget_s:  # one more epoch of the mean length would overrun
                log(f"stopping: another epoch would pass the {budget_s:g} s budget ({elapsed:.1f} s used)")
                stopped = "budget"
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    with autocast(device, amp):
        test = task.evaluate(model, "test", device)
    log(f"test (best epoch {best['epoch'] if best else '-'}): " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    result = dict(run_info, epochs=history, stopped=stopped, best_epoch=best["epoch"] if best else None,
                  best_valid=best["valid"] if best else None, test=test,
                  checkpoint=str(out / "best.pt") if out is not None and best is not None else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "results.json", result)
    result["model_object"] = model
    return result


def load_for_eval(task: Task, checkpoint: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of ``checkpoint`` (a loaded payload) built by ``task``, on ``device``, in eval mode."""
    model = task.build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()
