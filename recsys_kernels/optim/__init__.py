"""Optimizers for sparse embedding tables."""
