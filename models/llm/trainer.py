"""Training stages, single-process or under ``torchrun`` (DistributedDataParallel).

A ``Stage`` names which parameters train (LoRA, a mapper, projectors), how to build a batch from example
indices, and its length; ``run_stage`` freezes everything else, wraps the model in DDP when a process group
is up, and runs AdamW. Every rank shuffles the examples with the same seed and takes every world-th batch
slice, so together they see one epoch. Losses are averaged over ranks only for the log.

Under torchrun: ``init_distributed()`` reads LOCAL_RANK/WORLD_SIZE, joins the process group with torch's
default backend for the device (nccl, hccl, gloo), and returns the device this rank uses.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .prompts import PromptBatch

__all__ = ["Stage", "StageResult", "DistContext", "init_distributed", "run_stage", "broadcast_module"]

@dataclass
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        # A process group of one also counts: the DDP path then runs (and is tested) on a single process.
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> tuple[DistContext, torch.device]:
    """This rank's device, and the torchrun process group joined when WORLD_SIZE > 1.

    Without ``device``: the machine's accelerator (CUDA, Gaudi, ...) numbered LOCAL_RANK, else the CPU. The
    process-group backend is torch's default for that device (nccl, hccl, gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = torch.accelerator.current_accelerator(check_available=True) if device is None else None
    if accelerator is not None:
        torch.accelerator.set_device_index(local)
        dev = torch.device(accelerator.type, local)
    else:
        dev = torch.device(device or "cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(torch.distributed.get_default_backend_for_device(dev))
    return context(), dev


def shutdown_distributed() -> None:
    """Leave the process group before the interpreter exits. Without this, gloo's worker threads are torn down
    by static destructors while still joinable, and a rank can abort ("terminate called without an active
    exception") after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def context() -> DistContext:
    """This process's rank and world size (0 and 1 without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return DistContext()


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (after a pretraining every rank ran on its own)."""
    if not ctx.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)


@dataclass
class Stage:
    """One training stage.

    trainable:  model -> the parameters this stage trains (all others are frozen).
    batch:      (example indices (b,) int64, progress in [0, 1]) -> PromptBatch on the host.
    """

    name: str
    trainable: Callable[[torch.nn.Module], list[torch.nn.Parameter]]
    batch: Callable[[np.ndarray, float], PromptBatch]
    num_examples: int
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    seed: int = 0

    def total_steps(self, world: int = 1) -> int:
        per_epoch = math.ceil(self.num_examples / (self.batch_size * world))
        steps = max(1, math.ceil(per_epoch * self.epochs))
        return min(steps, self.max_steps) if self.max_steps is not None else steps


@dataclass
class StageResult:
    name: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stopped_by_budget: bool = False

    def summary(self) -> dict:
        k = max(1, min(10, len(self.losses) // 4 or 1))
        first = float(np.mean(self.losses[:k])) if self.losses else float("nan")
        last = float(np.mean(self.losses[-k:])) if self.losses else float("nan")
        return {"stage": self.name, "steps": self.steps, "seconds": round(self.seconds, 1),
                "loss_first": first, "loss_last": last, "stopped_by_budget": self.stopped_by_budget}


def _step_indices(stage: Stage, ctx: DistContext):
    """Yield this rank's example indices for each step, epoch after epoch (reshuffled per epoch)."""
    epoch = 0
    global_batch = stage.batch_size * ctx.world
    while True:
        order = np.random.default_rng(stage.seed + epoch).permutation(stage.num_examples)
        for start in range(0, len(order), global_batch):
            chunk = order[start:start + global_batch]
            mine = chunk[ctx.rank::ctx.world]
            if len(mine) == 0:  # a short final chunk: every rank must still step together
                mine = chunk[:1]
            yield mine
        epoch += 1


def run_stage(model: torch.nn.Module, stage: Stage, device: torch.device, ctx: DistContext | None = None, *,
              time_budget_s: float | None = None, log_every: int = 0, log: Callable[[str], None] = print) -> StageResult:
    """Train ``stage.trainable(model)`` for stage.total_steps(world) AdamW steps (or until the time budget)."""
    ctx = ctx or DistContext()
    for p in model.parameters():
        p.requires_grad_(False)
    if stage.total_steps(ctx.world) == 0:  # max_steps=0 skips the stage (its parameters were trained elsewhere)
        model.eval()
        return StageResult(stage.name, 0, 0.0)
    params = [p for p in stage.trainable(model)]
    if not params:
        raise ValueError(f"stage {stage.name!r} has no trainable parameters")
    for p in params:
        p.requires_grad_(True)
    # Trainable parts stay float32 under a bf16 backbone: peft keeps adapters in float32 by default, and
    # mappers/projectors are built in float32; their outputs are cast to the backbone's dtype at the splice.
    runner: torch.nn.Module = model
    if ctx.active:
        # find_unused_parameters: a text-only curriculum batch never touches the projector.
        runner = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    # ``plan["total"]`` shrinks to what the time budget allows, so the cosine decay still ends at 0 and the
    # curriculum still reaches 1 within the budget. It is re-fitted at steps 8, 16, 32, ... from the recent pace:
    # the first steps of a run are slow (new prompt shapes, allocator and kernel warm-up), and one early estimate
    # cut a GPU run to 240 steps that then took 22 of its 39 s.
    plan = {"total": stage.total_steps(ctx.world)}
    warm = max(1, min(stage.warmup_steps, plan["total"] // 10 or 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.999 * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / plan["total"]))) + 1e-3)
    model.train()
    result = StageResult(stage.name, 0, 0.0)
    start = mark = time.perf_counter()
    indices = _step_indices(stage, ctx)
    step = 0
    while step < plan["total"]:
        idx = next(indices)
        batch = stage.batch(np.asarray(idx, dtype=np.int64), step / max(1, plan["total"] - 1)).to(device)
        loss = runner(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if stage.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
        opt.step()
        sched.step()
        value = loss.detach()
        if ctx.active:
            torch.distributed.all_reduce(value)
            value /= ctx.world
        result.losses.append(float(value))
        if not math.isfinite(result.losses[-1]):
            # Stop at once: every later step would train on NaN weights and the run would report garbage.
            raise FloatingPointError(f"stage {stage.name!r}: the loss is {result.losses[-1]} at step {step + 1}")
        step += 1
        result.steps = step
        if log_every and ctx.is_main and step % log_every == 0:
            log(f"[{stage.name}] step {step}/{plan['total']} loss {np.mean(result.losses[-log_every:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
        if time_budget_s is not None:
            if step & (step - 1) == 0:  # steps 1, 2, 4, 8, ...
                now = time.perf_counter()
                if _FIT_AFTER <= step < plan["total"]:
                    pace = (now - mark) / (step // 2)  # of steps step/2 + 1 .. step: past the slow first ones
                    plan["total"] = min(stage.total_steps(ctx.world),
                                        _fit_steps(step, start, pace, time_budget_s, ctx, device))
                mark = now
            if _out_of_time(start, time_budget_s, ctx, device):
                result.stopped_by_budget = step < plan["total"]
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    result.seconds = time.perf_counter() - start
    return result


_FIT_AFTER = 8


def _fit_steps(step: int, start: float, pace: float, budget: float, ctx: DistContext,
               device: torch.device) -> int:
    """Steps that fit the budget at ``pace`` seconds a step (rank 0's estimate, shared)."""
    now = time.perf_counter()
    fit = torch.tensor([step + int(max(0.0, budget - (now - start)) / max(pace, 1e-6))], device=device)
    if ctx.active:
        torch.distributed.broadcast(fit, src=0)
    return max(step, int(fit.item()))


def _out_of_time(start: float, budget: float, ctx: DistContext, device: torch.device) -> bool:
    """Whether the budget is spent; ranks agree (rank 0's clock) so none waits forever in an all-reduce."""
    over = torch.tensor([1.0 if time.perf_counter() - start > budget else 0.0], device=device)
    if ctx.active:
        torch.distributed.broadcast(over, src=0)
    return bool(over.item())
