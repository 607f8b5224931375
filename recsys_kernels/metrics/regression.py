"""Rating-prediction errors."""

from __future__ import annotations

import numpy as np

from recsys_kernels.metrics._arrays import as_numpy, same_length


def rmse(y, yhat) -> float:
    """Root mean squared error in float64. y, yhat: (N,) numpy or torch."""
    a, b = as_numpy(y, "y"), as_numpy(yhat, "yhat")
    same_length(y=a, yhat=b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(y, yhat) -> float:
    """Mean absolute error in float64. y, yhat: (N,) numpy or torch."""
    a, b = as_numpy(y, "y"), as_numpy(yhat, "yhat")
    same_length(y=a, yhat=b)
    return float(np.mean(np.abs(a - b)))
