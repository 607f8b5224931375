"""Benchmarks of recsys_kernels (see DESIGN.md, "Benchmarks"); shared code in ``harness.py``."""
