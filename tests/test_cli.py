"""The recsys-kernels command: train, eval, resume, configs, demo, models, the LLM hand-over."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from recsys_kernels.__main__ import main, resolve_config

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    # two shared cores: a second OpenMP thread competing with another process slows tiny runs 10-100x
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _last_json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def test_train_then_eval_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "gru4rec", "--data", "synthetic-seq", "--config", "gru4rec-tiny", "--epochs", "1",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    trained = _last_json(capsys.readouterr().out)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "gru4rec" and results["data"] == "synthetic-seq" and len(results["epochs"]) == 1

    assert main(["eval", "gru4rec", "--checkpoint", str(out / "best.pt")]) == 0
    evaluated = _last_json(capsys.readouterr().out)
    assert evaluated["test"] == pytest.approx(trained["test"])

    assert main(["train", "gru4rec", "--data", "synthetic-seq", "--config", "gru4rec-tiny", "--epochs", "2",
                 "--out", str(out), "--resume", str(out / "last.pt"), "--no-progress"]) == 0
    capsys.readouterr()
    assert [e["epoch"] for e in json.loads((out / "results.json").read_text())["epochs"]] == [1, 2]


def test_config_file_and_set_override(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"embedding_dim": 8, "epochs": 1}))
    config = resolve_config("sasrec", str(path), ["max_len=7", "loss=sampled_softmax"])
    assert config["embedding_dim"] == 8 and config["max_len"] == 7 and config["loss"] == "sampled_softmax"
    assert config["num_blocks"] == 2  # the rest from sasrec's default config
    assert resolve_config("hstu", "hstu-ml-1m")["num_negatives"] == 128
    with pytest.raises(SystemExit, match="not a config of sasrec"):
        resolve_config("sasrec", "hstu-ml-1m")
    with pytest.raises(SystemExit, match="neither a named config"):
        resolve_config("sasrec", "no-such-config")


def test_unknown_model_lists_known(capsys):
    with pytest.raises(SystemExit, match="hstu"):
        main(["train", "nosuchmodel", "--data", "synthetic-seq"])


def test_models_lists_sequential_configs(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for name in ("hstu-ml-1m (default)", "sasrec", "bert4rec", "gru4rec"):
        assert name in text


def test_llm_models_hand_over_the_command_line(monkeypatch):
    seen = []
    fake = types.ModuleType("recsys_kernels.models.llm.cli")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "recsys_kernels.models.llm.cli", fake)
    assert main(["train", "tallrec", "--data", "collm-ml-1m", "--whatever"]) == 0
    assert seen[0][1:] == ["train", "tallrec", "--data", "collm-ml-1m", "--whatever"]


def test_demo_quick(capsys):
    assert main(["demo", "--quick", "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "popularity" in text and "HSTU" in text and "HR@10" in text


def test_every_task_module_imports():
    """load_all() keeps the CLI alive past a broken module (its models just go missing), so a module that stops
    importing — e.g. a config dict built with a key given twice — must fail here."""
    from recsys_kernels.train import registry

    registry.load_all()
    assert registry.IMPORT_ERRORS == {}
    assert {"hstu-beauty-fast", "sasrec-beauty-fast", "pmf-ml-100k-fast", "dlrm-synthetic"} <= set(registry.CONFIGS)
