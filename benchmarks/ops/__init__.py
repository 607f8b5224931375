"""Per-op benchmarks: ``python -m benchmarks.ops.bench_<op>``."""
