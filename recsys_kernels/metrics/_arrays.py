"""Input normalisation shared by the metrics: numpy or torch in, float64/int64 numpy out."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(x, name: str, dtype=np.float64) -> np.ndarray:
    """A 1-D numpy copy of ``x`` (numpy array, torch tensor on any device and dtype, or sequence)."""
    if isinstance(x, torch.Tensor):
        # through float64/int64 first: bfloat16 has no numpy dtype
        x = x.detach().to("cpu", torch.float64 if np.dtype(dtype).kind == "f" else torch.int64).numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{', '.join(lengths)} are empty")
    return n


def binary_labels(labels, name: str = "labels") -> np.ndarray:
    y = as_numpy(labels, name)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be 0 or 1")
    return y
