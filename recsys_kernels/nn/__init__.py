"""Modules built on recsys_kernels.ops."""

from recsys_kernels.nn.interaction import DotInteraction

__all__ = ["DotInteraction"]
