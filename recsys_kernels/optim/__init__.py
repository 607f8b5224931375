"""Optimizers for sparse embedding tables."""

from recsys_kernels.optim.rowwise_adagrad import RowWiseAdagrad, RowWiseAdagradConfig

__all__ = ["RowWiseAdagrad", "RowWiseAdagradConfig"]
