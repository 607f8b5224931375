"""Evaluators: click-through (AUC, user-averaged AUC) and pick-one-of-20 (HitRatio@1, ValidRatio).

Both split the rows over the ranks of a torchrun job and gather the per-row results on every rank, so the
metrics are computed once over all rows.

Matching a generated answer to a candidate (LLaRA's protocol): titles and output are compared after
lower-casing and dropping everything but letters and digits (tokenizers differ in how they space
punctuation); the answer names candidate c when c's normalised title occurs in it (the longest such title
wins, so "Toy Story 2" is not read as "Toy Story"). ValidRatio: the fraction of answers naming some
candidate; HitRatio@1: the fraction naming the target.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
import torch

from recsys_kernels.metrics import auc, user_averaged_auc

from .prompts import PromptBatch
from .trainer import DistContext

__all__ = ["evaluate_ctr", "evaluate_choice", "match_candidate", "normalise_title"]


def _gather(values: list, ctx: DistContext) -> list:
    if not ctx.active:
        return values
    parts: list = [None] * ctx.world
    torch.distributed.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def _my_batches(n: int, batch_size: int, ctx: DistContext):
    mine = np.arange(ctx.rank, n, ctx.world)
    for start in range(0, len(mine), batch_size):
        yield mine[start:start + batch_size]


@torch.no_grad()
def evaluate_ctr(score: Callable[[PromptBatch], torch.Tensor], make_batch: Callable[[np.ndarray], PromptBatch],
                 users: np.ndarray, labels: np.ndarray, device: torch.device, *, batch_size: int = 32,
                 ctx: DistContext | None = None) -> dict[str, float]:
    """AUC and UAUC of ``score(batch) -> (b,) P(click)`` over rows 0..N-1 (users/labels (N,))."""
    ctx = ctx or DistContext()
    rows: list[tuple[int, float]] = []
    for idx in _my_batches(len(labels), batch_size, ctx):
        p = score(make_batch(idx).to(device)).float().cpu().numpy()
        rows.extend(zip(idx.tolist(), p.tolist()))
    rows = sorted(_gather(rows, ctx))
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    y, u = labels[idx], users[idx]
    out = {"AUC": auc(y, scores), "n": int(len(idx))}
    try:
        out["UAUC"] = user_averaged_auc(u, y, scores)
    except ValueError:  # no user with both a click and a non-click among these rows
        out["UAUC"] = float("nan")
    return out


def normalise_title(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def match_candidate(answer: str, titles: Sequence[str]) -> int:
    """Index of the candidate the answer names (longest normalised title contained in it), or -1."""
    ans = normalise_title(answer)
    best, best_len = -1, 0
    for c, title in enumerate(titles):
        t = normalise_title(title)
        if t and t in ans and len(t) > best_len:
            best, best_len = c, len(t)
    return best


@torch.no_grad()
def evaluate_choice(generate: Callable[[PromptBatch], list[str]], make_batch: Callable[[np.ndarray], PromptBatch],
                    candidates: np.ndarray, targets: np.ndarray, titles: Sequence[str], device: torch.device, *,
                    batch_size: int = 16, ctx: DistContext | None = None,
                    keep_answers: int = 0) -> dict[str, float]:
    """HitRatio@1 and ValidRatio of generated answers over rows 0..N-1 (candidates (N, C), targets (N,))."""
    ctx = ctx or DistContext()
    rows: list[tuple[int, int, str]] = []
    for idx in _my_batches(len(targets), batch_size, ctx):
        answers = generate(make_batch(idx).to(device))
        for i, a in zip(idx.tolist(), answers):
            names = [titles[c] for c in candidates[i]]
            rows.append((i, match_candidate(a, names), a))
    rows = sorted(_gather(rows, ctx))
    picked = np.array([r[1] for r in rows], dtype=np.int64)
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    valid = picked >= 0
    hit = valid & (candidates[idx, np.maximum(picked, 0)] == targets[idx])
    out: dict = {"HitRatio@1": float(hit.mean()) if len(idx) else float("nan"),
                 "ValidRatio": float(valid.mean()) if len(idx) else float("nan"), "n": int(len(idx))}
    if keep_answers:
        out["examples"] = [{"target": titles[targets[i]], "answer": a} for i, _, a in rows[:keep_answers]]
    return out
