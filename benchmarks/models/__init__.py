"""Model-level benchmarks: ``quality.py`` (issue 6's quality targets) and ``speed.py`` (fused vs reference)."""
