"""Host-side collation of item sequences into ``SequenceBatch`` (numpy in, CPU tensors out).

    causal_batch(seqs, ts, max_len)            inputs s[:-1], label at every position = the next item s[1:]
    cloze_batch(seqs, ts, max_len, rng, ...)   inputs s with random items replaced by the mask token, labels
                                               = the replaced items (BERT4Rec)
    eval_batch(histories, ts, max_len, mask_token)   the history (plus the mask token for cloze models), no labels

Sequences keep their most recent items when longer than the model's ``max_len``. Every index that depends on
the lengths (last positions, labelled positions) is computed here on the host, so the device never sees a
data-dependent shape. ``pad_to_max_len`` pads the width to max_len and rounds the jagged length up to a
multiple of ``_ROUND`` (the jagged ops and hstu_attention ignore rows past the last offset), which bounds the
number of distinct shapes a compiled model sees.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_kernels.models.sequence_common import SequenceBatch

__all__ = ["causal_batch", "cloze_batch", "eval_batch"]

_ROUND = 64


def _pack(seqs: list[np.ndarray], ts: list[np.ndarray] | None, max_len: int, pad_to_max_len: bool):
    """(items (B, N), timestamps (B, N) | None, lengths (B,), total_len) as numpy, right-padded."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"sequence lengths must be in [1, max_len={max_len}], got [{lengths.min()}, {lengths.max()}]")
    width = max_len if pad_to_max_len else int(lengths.max(initial=1))
    items = np.zeros((len(seqs), width), dtype=np.int64)
    times = np.zeros((len(seqs), width), dtype=np.int64) if ts is not None else None
    for b, s in enumerate(seqs):
        items[b, : len(s)] = s
        if times is not None:
            times[b, : len(s)] = ts[b]
    total = int(lengths.sum())
    if pad_to_max_len:
        total = -(-total // _ROUND) * _ROUND
    return items, times, lengths, total


def _batch(items, times, lengths, total, label_index=None, labels=None) -> SequenceBatch:
    t = torch.from_numpy
    return SequenceBatch(items=t(items), lengths=t(lengths), last=t(np.cumsum(lengths) - 1), total_len=total,
                         timestamps=t(times) if times is not None else None,
                         label_index=t(label_index) if label_index is not None else None,
                         labels=t(labels) if labels is not None else None,
                         host_offsets=t(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)))


def causal_batch(seqs: list[np.ndarray], ts: list[np.ndarray] | None, max_len: int,
                 pad_to_max_len: bool = False) -> SequenceBatch:
    """seqs: B full sequences (len >= 2, inputs followed by their last target); the model reads the last
    max_len + 1 items minus the final one and predicts each next item."""
    seqs = [s[-(max_len + 1):] for s in seqs]
    ts = [t[-(max_len + 1):] for t in ts] if ts is not None else None
    items, times, lengths, total = _pack([s[:-1] for s in seqs], [t[:-1] for t in ts] if ts is not None else None, max_len,
                                         pad_to_max_len)
    labels = np.concatenate([s[1:] for s in seqs]).astype(np.int64)
    return _batch(items, times, lengths, total, np.arange(labels.shape[0], dtype=np.int64), labels)


def cloze_batch(seqs: list[np.ndarray], ts: list[np.ndarray] | None, max_len: int, rng: np.random.Generator,
                mask_token: int, mask_prob: float, last_mask_prob: float = 0.1,
                pad_to_max_len: bool = False) -> SequenceBatch:
    """seqs: B sequences (len >= 1). Each keeps its last max_len items; with probability ``last_mask_prob``
    only its last item is masked (the evaluation pattern), otherwise each item is masked with probability
    ``mask_prob`` (at least one)."""
    seqs = [np.array(s[-max_len:], dtype=np.int64) for s in seqs]
    ts = [t[-max_len:] for t in ts] if ts is not None else None
    label_index, labels, start = [], [], 0
    for s in seqs:
        n = len(s)
        if rng.random() < last_mask_prob:
            masked = np.zeros(n, dtype=bool)
            masked[-1] = True
        else:
            masked = rng.random(n) < mask_prob
            if not masked.any():
                masked[rng.integers(n)] = True
        where = np.flatnonzero(masked)
        label_index.append(start + where)
        labels.append(s[where].copy())
        s[where] = mask_token
        start += n
    items, times, lengths, total = _pack(seqs, ts, max_len, pad_to_max_len)
    return _batch(items, times, lengths, total, np.concatenate(label_index).astype(np.int64),
                  np.concatenate(labels).astype(np.int64))


def eval_batch(histories: list[np.ndarray], ts: list[np.ndarray] | None, max_len: int,
               mask_token: int | None = None, pad_to_max_len: bool = False) -> SequenceBatch:
    """The model reads each history's last max_len items (max_len - 1 and the mask token for cloze models).
    An empty history reads the padding id 0 alone, so its scores are the model's prior."""
    keep = max_len if mask_token is None else max_len - 1
    seqs, times = [], [] if ts is not None else None
    for u, h in enumerate(histories):
        h = np.asarray(h[-keep:] if keep > 0 else h[:0], dtype=np.int64)
        t = np.asarray(ts[u][-keep:] if keep > 0 else ts[u][:0], dtype=np.int64) if ts is not None else None
        if mask_token is not None:
            h = np.append(h, mask_token)
            if t is not None:
                t = np.append(t, t[-1] if t.size else 0)  # the mask has no time of its own: repeat the last
        if h.size == 0:
            h = np.zeros(1, dtype=np.int64)
            t = np.zeros(1, dtype=np.int64) if t is not None else None
        seqs.append(h)
        if times is not None:
            times.append(t)
    items, packed_ts, lengths, total = _pack(seqs, times, max_len, pad_to_max_len)
    return _batch(items, packed_ts, lengths, total)
