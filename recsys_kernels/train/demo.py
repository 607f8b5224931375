"""``recsys-kernels demo``: HSTU against a popularity baseline on the built-in synthetic sequences.

The data are Markov-chain sequences with planted successors (recsys_kernels.data.synthetic_sequences), so a
model that learns the transitions ranks the next item near the top while popularity cannot; the protocol is
the library's next-item one (leave-one-out, full ranking, the user's own items excluded). Sized by the
"hstu-demo" config to train in well under a minute on two CPU cores; ``quick=True`` (tests) shrinks it more.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import torch

from recsys_kernels.data import synthetic_sequences
from recsys_kernels.train.loop import fit
from recsys_kernels.train.sequential_configs import CONFIGS
from recsys_kernels.train.sequential_task import SequentialTask, popularity_metrics

__all__ = ["DATA_SIZES", "QUICK_SIZES", "run"]

DATA_SIZES = dict(num_users=2000, num_items=500, min_length=5, max_length=50, seed=0)
QUICK_SIZES = dict(num_users=300, num_items=100, min_length=5, max_length=30, seed=0)


def run(device: str | torch.device, *, epochs: int | None = None, quick: bool = False,
        print_fn: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train HSTU, print its test HR@10 / NDCG@10 beside popularity's, and return both and the timing."""
    device = torch.device(device)
    sizes = QUICK_SIZES if quick else DATA_SIZES
    config = dict(CONFIGS["hstu"]["hstu-demo"], data_args=sizes)
    if quick:
        config.update(epochs=2, batch_size=32)
    if epochs is not None:
        config["epochs"] = epochs
    data = synthetic_sequences(**sizes)
    task = SequentialTask("hstu", data, config)
    popularity = popularity_metrics(task, "test")
    print_fn(f"HSTU on synthetic Markov-chain sequences ({sizes['num_users']} users, {sizes['num_items']} items), "
             f"{config['epochs']} epochs on {device}")
    t0 = time.perf_counter()
    result = fit(task, config, device=device, model_name="hstu", data_name="synthetic-seq",
                 log=lambda msg: print(msg, file=sys.stderr, flush=True), progress=progress)
    seconds = time.perf_counter() - t0
    hstu = result["test"]
    print_fn("\nnext-item, leave-one-out, full ranking over all items (test split):")
    print_fn(f"  {'model':12s} {'HR@10':>7s} {'NDCG@10':>8s} {'MRR':>7s}")
    for name, m in (("popularity", popularity), ("HSTU", hstu)):
        print_fn(f"  {name:12s} {m['HR@10']:7.4f} {m['NDCG@10']:8.4f} {m['MRR']:7.4f}")
    sps = [e["samples_per_s"] for e in result["epochs"] if e["samples_per_s"]]
    print_fn(f"  trained and evaluated in {seconds:.1f} s ({sum(sps) / max(len(sps), 1):.0f} training sequences/s)")
    return {"hstu": hstu, "popularity": popularity, "seconds": seconds, "config": config}
