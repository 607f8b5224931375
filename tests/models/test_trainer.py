"""The trainer: results JSON, best checkpoint on the CPU, resume equals an uninterrupted run, popularity."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from recsys_kernels.train.checkpoint import load_checkpoint
from recsys_kernels.train.loop import fit, load_for_eval
from recsys_kernels.train.sequential_task import popularity_metrics
from recsys_kernels.train.task import Task

from .sequential_helpers import one_thread, tiny_task

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    previous = one_thread()
    yield
    torch.set_num_threads(previous)


def _quiet(msg: str) -> None:
    pass


def _losses(result: dict) -> list[float]:
    return [e["train_loss"] for e in result["epochs"]]


def test_task_satisfies_protocol():
    assert isinstance(tiny_task("hstu"), Task)


def test_fit_writes_results_and_cpu_checkpoints(tmp_path):
    task = tiny_task("hstu", epochs=2)
    result = fit(task, task.config, out_dir=tmp_path, model_name="hstu", data_name="synthetic-seq", log=_quiet,
                 progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2]
    for e in saved["epochs"]:
        assert e["samples_per_s"] > 0 and set(e["valid"]) >= {"HR@10", "NDCG@10", "MRR"}
    assert saved["test"] == pytest.approx(result["test"])
    assert saved["versions"]["torch"] == torch.__version__ and "git" in saved["versions"]
    assert saved["config"]["embedding_dim"] == task.config["embedding_dim"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == saved["best_epoch"]
    assert all(t.device.type == "cpu" for t in best["model_state"].values())
    # the best checkpoint reloads to the same test metrics
    model = load_for_eval(task, best)
    assert task.evaluate(model, "test", "cpu") == pytest.approx(result["test"])


def test_resume_matches_uninterrupted_run(tmp_path):
    task = tiny_task("sasrec", epochs=3)
    straight = fit(task, task.config, log=_quiet, progress=False)
    first = fit(task, dict(task.config, epochs=2), out_dir=tmp_path, log=_quiet, progress=False)
    assert _losses(first) == pytest.approx(_losses(straight)[:2], rel=1e-6)
    resumed = fit(task, task.config, out_dir=tmp_path, resume=tmp_path / "last.pt", log=_quiet, progress=False)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5)


def test_resume_restores_sparse_optimizer_state(tmp_path):
    task = tiny_task("hstu", epochs=2, item_optimizer="rowwise_adagrad")
    straight = fit(task, task.config, log=_quiet, progress=False)
    fit(task, dict(task.config, epochs=1), out_dir=tmp_path, log=_quiet, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert len(ckpt["optimizer_states"]) == 2
    resumed = fit(task, task.config, out_dir=tmp_path, resume=tmp_path / "last.pt", log=_quiet, progress=False)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)


def test_patience_stops_early():
    task = tiny_task("gru4rec", epochs=6, patience=1, lr=0.0)  # lr 0: validation never improves after epoch 1
    result = fit(task, task.config, log=_quiet, progress=False)
    assert len(result["epochs"]) == 2 and result["best_epoch"] == 1


def test_popularity_baseline_and_exclusion():
    task = tiny_task("hstu")
    metrics = popularity_metrics(task, "test")
    assert 0.0 <= metrics["HR@10"] <= 1.0 and metrics["HR@5"] <= metrics["HR@10"] <= metrics["HR@20"]
    ranks = task.ranks(task.popularity_scores, "test", "cpu")
    assert ranks.shape == (len(task.splits["test"]),)
    # ranks never exceed the number of candidates: all items minus the user's distinct other input items
    for u in range(len(ranks)):
        history = set(task.splits["test"].inputs[u].tolist()) - {int(task.splits["test"].targets[u])}
        assert int(ranks[u]) <= task.num_items - 1 - len(history)


@pytest.mark.parametrize("have_tqdm", [False, True])
def test_progress_shows_loss_and_throughput(capsys, monkeypatch, have_tqdm):
    if have_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: the single-line printer
    task = tiny_task("gru4rec", epochs=1)
    fit(task, task.config, log=_quiet, progress=True)
    err = capsys.readouterr().err
    n = task.num_train_batches()
    assert "epoch 1/1" in err and f"{n}/{n}" in err and "loss=" in err and "samples_s=" in err


def test_budget_stops_before_overrunning():
    task = tiny_task("gru4rec", epochs=50)
    result = fit(task, task.config, log=_quiet, progress=False, budget_s=0.0)  # any epoch overruns a zero budget
    assert len(result["epochs"]) == 1 and result["stopped"] == "budget" and result["best_epoch"] == 1
    full = fit(task, dict(task.config, epochs=2), log=_quiet, progress=False, budget_s=1e9)
    assert len(full["epochs"]) == 2 and full["stopped"] == "epochs"
