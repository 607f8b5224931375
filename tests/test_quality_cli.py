"""The quality and PMF cross-validation commands keep every --set, repeated or not (argparse's plain nargs="*"
kept only the last flag's entries, silently)."""

from __future__ import annotations

from benchmarks.models import quality
from recsys_kernels.train import ratings_task, registry


def test_quality_keeps_repeated_sets():
    args = quality.parse_args(["--set", "hstu:weight_decay=0.1", "--set", "hstu:seed=1", "sasrec:seed=1"])
    assert args.set == ["hstu:weight_decay=0.1", "hstu:seed=1", "sasrec:seed=1"]
    registry.load_all()
    cfg = quality._config(args, "hstu-ml-100k-fast", "hstu")
    assert cfg["weight_decay"] == 0.1 and cfg["seed"] == 1


def test_quality_set_by_model_reaches_rows_named_otherwise():
    """`sasrec:seed=1` reaches the Beauty row named sasrec-ssm (it used to apply to nothing there, silently)."""
    registry.load_all()
    args = quality.parse_args(["--set", "sasrec:seed=1", "beauty/sasrec-ssm:num_blocks=3", "hstu:seed=5"])
    cfg = quality._config(args, "sasrec-beauty-fast", "beauty/sasrec-ssm", "sasrec")
    assert cfg["seed"] == 1 and cfg["num_blocks"] == 3
    assert registry.CONFIGS["sasrec-beauty-fast"].get("seed", 0) == 0  # the registry itself is left alone
    other = quality._config(args, "sasrec-beauty", "beauty/sasrec", "sasrec")
    assert other["seed"] == 1 and other["num_blocks"] == registry.CONFIGS["sasrec-beauty"]["num_blocks"]


def test_pmf_cross_validation_keeps_repeated_sets():
    args = ratings_task.parse_args(["--set", "lr=0.01", "--set", "batch_size=64"])
    assert args.set == ["lr=0.01", "batch_size=64"]
