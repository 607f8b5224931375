"""benchmarks/models/llm_quality.py: how --deadline shares the time out, the table, and --baselines-only."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "models" / "llm_quality.py"


@pytest.fixture(scope="module")
def q():
    spec = importlib.util.spec_from_file_location("llm_quality_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deadline_shares_what_is_left_after_the_expected_overheads(q):
    runs = ["tallrec", "llara", "collm"]
    clock = q.RunClock(runs, None, deadline=200.0, eval_rows={"collm": 1000, "ml-100k": 100}, start=0.0)
    guess_ctr = q.GUESS_FIXED_S + 1000 * q.GUESS_S_PER_EVAL_ROW["collm"]
    guess_choice = q.GUESS_FIXED_S + 100 * q.GUESS_S_PER_EVAL_ROW["ml-100k"]
    left = 200.0 - q.DEADLINE_RESERVE_S - 20.0 - (2 * guess_ctr + guess_choice)
    assert clock.budget("tallrec", runs, now=20.0) == pytest.approx(left * 1 / 4)
    clock.done("tallrec", wall_s=40.0, train_s=35.0)  # 5 s outside training, measured
    assert clock.expected_overhead("collm") == 5.0 and clock.expected_overhead("llara") == guess_choice
    left = 200.0 - q.DEADLINE_RESERVE_S - 60.0 - (5.0 + guess_choice)
    assert clock.budget("llara", runs[1:], now=60.0) == pytest.approx(left * 1 / 3)
    assert clock.budget("collm", runs[2:], now=500.0) == 0.0  # past the deadline: the stages take one step


def test_time_budget_caps_and_shares_can_change(q):
    runs = ["tallrec", "collm", "collm-sasrec"]
    plain = q.RunClock(runs, 100.0, None, {}, start=0.0)
    assert plain.budget("collm", runs[1:]) == pytest.approx(40.0)  # 2 of 5 shares
    reused = q.RunClock(runs, 100.0, None, {}, start=0.0, shares={"collm": 1, "collm-sasrec": 1})
    assert reused.budget("collm", runs[1:]) == pytest.approx(100.0 / 3)
    both = q.RunClock(runs, 30.0, 1000.0, {"collm": 10}, start=0.0)
    assert both.budget("tallrec", runs, now=0.0) == pytest.approx(6.0)  # the deadline leaves more: the cap rules


def test_table_lists_baselines_runs_and_random(q, capsys):
    report = {"baselines": {"pmf": {"test": {"AUC": 0.7, "UAUC": 0.6, "n": 10}}},
              "runs": {"collm": {"test": {"AUC": 0.65, "UAUC": 0.61, "n": 10}, "lora_from": "tallrec",
                                 "stages": [{"steps": 0, "seconds": 0.0}, {"steps": 7, "seconds": 3.0}]},
                       "llara": {"test": {"HitRatio@1": 0.2, "ValidRatio": 0.9, "n": 10},
                                 "stages": [{"steps": 5, "seconds": 2.0}]}}}
    q.print_table([report])
    out = capsys.readouterr().out
    assert "pmf" in out and "tallrec+7" in out and "random" in out and "0.2000" in out


def test_baselines_only_needs_no_backbone(q, tmp_path, capsys):
    pytest.importorskip("pandas")
    from recsys_kernels.data import data_root

    if data_root() is None or not (data_root() / "collm-ml-1m" / "ml-1m.zip").is_file():
        pytest.skip("CoLLM's ml-1m.zip is not in the shared data folder")
    out = tmp_path / "b.json"
    assert q.main(["--baselines-only", "--device", "cpu", "--eval-limit", "200", "--set", "cf_epochs=1",
                   "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["baselines"]) == {"pmf", "sasrec"} and "runs" in report and not report["runs"]
    assert all(0.0 <= r["test"]["AUC"] <= 1.0 and r["test"]["n"] == 200 for r in report["baselines"].values())
    assert not math.isnan(report["total_seconds"]) and "sasrec" in capsys.readouterr().out
