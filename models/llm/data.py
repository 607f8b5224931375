"""Data for the LLM recommenders.

* ``load_collm_ml1m(path)``: the CoLLM paper's MovieLens-1M click split (``ml-1m.zip`` of pandas pickles
  train/valid/test_ood2.pkl with columns uid, iid, label, timestamp, his, his_title, title, ...). ``his``
  holds only liked items (label 1), 0-padded at the front; the disliked list TALLRec's prompt wants is
  rebuilt from the user's earlier label-0 rows. Reading the pickles needs pandas, imported here only (it is
  part of the optional ``llm`` extra, never of the core package).
* ``movielens_candidates(path)``: next-item examples with 20 candidates (the target and 19 items the user
  never rated, in a seeded random order) and titles from MovieLens-100K ``u.item``, for LLaRA and A-LLMRec.
  Leave-one-out per user: the last item is test, the second-to-last valid, earlier targets train.
* ``encode_texts(texts, folder)``: sentence embeddings (mean-pooled, l2-normalised, as all-MiniLM-L6-v2 is
  used) with plain ``transformers``, so sentence-transformers is not needed.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["CTRRows", "CoLLMData", "ChoiceRows", "CandidateData", "load_collm_ml1m", "movielens_candidates",
           "encode_texts", "subset"]

COLLM_SPLITS = {"train": "train_ood2.pkl", "valid": "valid_ood2.pkl", "test": "test_ood2.pkl"}


@dataclass
class CTRRows:
    """N click rows. users/items/labels/timestamps: (N,) int64; liked[n] / disliked[n]: (≤) int64 item ids
    the user liked / disliked before row n, oldest first."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray
    liked: list[np.ndarray]
    disliked: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class CoLLMData:
    """Splits "train"/"valid"/"test"; ``titles[i]`` is item i's title ("" for ids never seen).
    ``cf_train``: the rows the collaborative model pretrains on (all training rows, also when the LLM
    stages are limited to fewer); None means splits["train"]."""

    splits: dict[str, CTRRows]
    titles: list[str]
    num_users: int
    num_items: int
    cf_train: CTRRows | None = None


@dataclass
class ChoiceRows:
    """N pick-the-next-item examples. users (N,) int64 (0-based); histories[n] (≤max_history,) int64 item
    ids, oldest first; candidates (N, C) int64; targets (N,) int64, each in its candidate row."""

    users: np.ndarray
    histories: list[np.ndarray]
    candidates: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class CandidateData:
    """Splits of ChoiceRows; items are 1..num_items (0 pads) with ``titles[i]``; ``train_sequences`` are the
    users' sequences without their valid/test targets (for pretraining SASRec)."""

    splits: dict[str, ChoiceRows]
    titles: list[str]
    num_items: int
    train_sequences: list[np.ndarray] = field(default_factory=list)


# --- CoLLM ML-1M --------------------------------------------------------------------------------------------

def _read_pickles(path: Path) -> dict:
    """split -> DataFrame from the zip, a folder holding the pickles, or a folder holding ml-1m/."""
    import pandas as pd  # optional dependency: the llm extra

    frames = {}
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = {Path(n).name: n for n in zf.namelist()}
            for split, fname in COLLM_SPLITS.items():
                if fname not in names:
                    raise FileNotFoundError(f"{path} holds no {fname}")
                frames[split] = pd.read_pickle(io.BytesIO(zf.read(names[fname])))
        return frames
    for folder in (path, path / "ml-1m"):
        if all((folder / f).is_file() for f in COLLM_SPLITS.values()):
            return {s: pd.read_pickle(folder / f) for s, f in COLLM_SPLITS.items()}
    if (path / "ml-1m.zip").is_file():
        return _read_pickles(path / "ml-1m.zip")
    raise FileNotFoundError(f"{path} is neither CoLLM's ml-1m.zip nor a folder holding {sorted(COLLM_SPLITS.values())}")


def _disliked_before(users: np.ndarray, items: np.ndarray, labels: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
    """For every row: the user's label-0 items rated strictly earlier (all splits together), oldest first."""
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(users)
    order = np.lexsort((ts, users))
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        neg = group[labels[group] == 0]
        neg_ts = ts[neg]
        for row in group:
            k = int(np.searchsorted(neg_ts, ts[row], side="left"))
            out[row] = items[neg[:k]]
    return out


def load_collm_ml1m(path: str | os.PathLike) -> CoLLMData:
    """CoLLM's ML-1M split (train 33,891 / valid 10,401 / test 7,331 rows) from ``path``."""
    frames = _read_pickles(Path(path))
    cols = {s: {c: df[c].to_numpy() for c in ("uid", "iid", "label", "timestamp")} for s, df in frames.items()}
    sizes = [len(cols[s]["uid"]) for s in COLLM_SPLITS]
    cat = {c: np.concatenate([cols[s][c] for s in COLLM_SPLITS]).astype(np.int64) for c in ("uid", "iid", "label", "timestamp")}
    disliked = _disliked_before(cat["uid"], cat["iid"], cat["label"], cat["timestamp"])
    num_items = int(max(cat["iid"].max(), max(max(h) for df in frames.values() for h in df["his"]))) + 1
    titles = [""] * num_items
    for df in frames.values():
        for iid, title in zip(df["iid"].to_numpy(), df["title"].to_numpy()):
            titles[int(iid)] = str(title)
        for his, his_title in zip(df["his"], df["his_title"]):
            for i, t in zip(his, his_title):
                if i and not titles[int(i)]:
                    titles[int(i)] = str(t)
    splits, start = {}, 0
    for s, n in zip(COLLM_SPLITS, sizes):
        sl = slice(start, start + n)
        liked = [np.asarray([i for i in h if i != 0], dtype=np.int64) for h in frames[s]["his"]]
        splits[s] = CTRRows(cat["uid"][sl], cat["iid"][sl], cat["label"][sl], cat["timestamp"][sl], liked,
                            disliked[sl])
        start += n
    return CoLLMData(splits, titles, num_users=int(cat["uid"].max()) + 1, num_items=num_items)


# --- MovieLens-100K candidates ------------------------------------------------------------------------------

def movielens_candidates(path: str | os.PathLike, *, num_candidates: int = 20, max_history: int = 10,
                         train_targets_per_user: int = 10, seed: int = 0) -> CandidateData:
    """Pick-the-next-movie examples from MovieLens-100K (``u.data`` + ``u.item`` in the folder ``path``).

    Each user's ratings in time order; test target = last item, valid = second to last, train = up to
    ``train_targets_per_user`` targets before those (most recent first, each needing one item of history).
    Negatives are drawn uniformly from the items the user never rated."""
    from recsys_kernels.data import load_movielens, load_movielens_titles, ratings_to_sequences

    ratings = load_movielens(path)
    seqs = ratings_to_sequences(ratings)
    by_original = load_movielens_titles(path)
    original = ratings.item_ids if ratings.item_ids is not None else np.arange(1, ratings.num_items + 1)
    titles = [""] + [by_original.get(int(o), f"movie {int(o)}") for o in original]
    num_items = seqs.num_items
    rng = np.random.default_rng(seed)
    rows: dict[str, tuple[list, list, list, list]] = {s: ([], [], [], []) for s in ("train", "valid", "test")}
    train_sequences = []

    def add(split: str, user: int, seq: np.ndarray, end: int) -> None:
        seen = np.zeros(num_items + 1, dtype=bool)
        seen[seq] = True
        seen[0] = True
        pool = np.flatnonzero(~seen)
        negs = rng.choice(pool, size=num_candidates - 1, replace=False)
        cands = rng.permutation(np.append(negs, seq[end]))
        users, hist, cand, tgt = rows[split]
        users.append(user)
        hist.append(seq[max(0, end - max_history):end].astype(np.int64))
        cand.append(cands)
        tgt.append(seq[end])

    for u, seq in enumerate(seqs.sequences):
        n = len(seq)
        if n < 4:
            continue
        add("test", u, seq, n - 1)
        add("valid", u, seq, n - 2)
        for end in range(n - 3, max(0, n - 3 - train_targets_per_user), -1):
            add("train", u, seq, end)
        train_sequences.append(seq[:n - 2].astype(np.int64))
    splits = {s: ChoiceRows(np.asarray(r[0], dtype=np.int64), r[1], np.asarray(r[2], dtype=np.int64).reshape(-1, num_candidates),
                            np.asarray(r[3], dtype=np.int64)) for s, r in rows.items()}
    return CandidateData(splits, titles, num_items, train_sequences)


def subset(rows, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` rows (all rows, in order, when n is None or >= len)."""
    if n is None or n >= len(rows):
        return rows
    idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    out = {}
    for name, value in vars(rows).items():
        out[name] = value[idx] if isinstance(value, np.ndarray) else [value[i] for i in idx]
    return type(rows)(**out)


# --- text embeddings ----------------------------------------------------------------------------------------

def encode_texts(texts: Sequence[str], folder: str | os.PathLike, *, batch_size: int = 128,
                 device: str = "cpu") -> np.ndarray:
    """(N, D) float32 l2-normalised mean-pooled embeddings of ``texts`` from the encoder in ``folder``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
