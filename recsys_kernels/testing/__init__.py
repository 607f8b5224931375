"""Hypothesis strategies and helpers shared by the tests."""
