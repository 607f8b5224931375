"""Shared setup of the sequential-model tests: tiny synthetic data, a task, a few training steps."""

from __future__ import annotations

import torch

from recsys_kernels.data import synthetic_sequences
from recsys_kernels.train.sequential_configs import CONFIGS
from recsys_kernels.train.sequential_task import SequentialTask

SEQUENTIAL = ("sasrec", "bert4rec", "gru4rec", "hstu")


def tiny_config(model: str, **overrides) -> dict:
    return dict(CONFIGS[model][f"{model}-tiny"], **overrides)


def tiny_task(model: str, **overrides) -> SequentialTask:
    config = tiny_config(model, **overrides)
    return SequentialTask(model, synthetic_sequences(**config["data_args"]), config)


def loss_curve(task: SequentialTask, steps: int, num_batches: int = 2) -> list[float]:
    """Losses of ``steps`` optimizer steps cycling over the first ``num_batches`` batches of epoch 0."""
    model = task.build_model(task.config)
    optimizers = task.make_optimizers(model, task.config)
    batches = []
    for batch in task.train_batches(0, "cpu"):
        batches.append(batch)
        if len(batches) == num_batches:
            break
    torch.manual_seed(1)  # negatives and dropout: the same draws in every run
    losses = []
    for step in range(steps):
        loss = task.loss(model, batches[step % len(batches)])
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(float(loss.detach()))
    return losses


def one_thread():
    """Run a test on one torch thread: the CI machine's two cores are shared, and two OpenMP threads
    competing with another process make these tiny models 10-100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous
