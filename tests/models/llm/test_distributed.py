"""The DistributedDataParallel path of the trainer and evaluators, on a process group of one (gloo)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from recsys_kernels.models.llm import pipeline  # noqa: E402
from recsys_kernels.models.llm.trainer import context  # noqa: E402

from . import tiny  # noqa: E402


@pytest.fixture
def group_of_one(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield context()
    finally:
        dist.destroy_process_group()


def test_stages_and_evaluation_under_ddp(group_of_one):
    ctx = group_of_one
    assert ctx.active and ctx.world == 1
    data = pipeline.limit_splits(tiny.choice_data(), train=6)
    config = pipeline.resolve_config("llara", dict(batch_size=6, epochs=6.0, lr=5e-2, lora_r=4, lora_dropout=0.0,
                                                   cf_dim=8, cf_epochs=1, eval_batch_size=8))
    model, report = pipeline.train_and_evaluate("llara", tiny.backbone("llama"), data, config, torch.device("cpu"),
                                                ctx=ctx, splits=("test",))
    losses = report["stages"][0]["losses"]
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert report["test"]["n"] == len(data.splits["test"])
    assert not any(p.requires_grad for p in model.parameters()), "a stage leaves everything frozen"



@pytest.mark.parametrize("model,extra", [
    ("collm", ["--set", "cf_epochs=1", "--set", "cf_dim=8", "--set", "mapper_max_steps=2"]),
    ("allmrec", ["--set", "align_max_steps=2", "--set", "cf_epochs=1", "--set", "cf_dim=8", "--set", "latent_dim=8"]),
])
def test_torchrun_with_two_ranks(model, extra, tmp_path):
    """Real multi-process DistributedDataParallel: ``torchrun --nproc-per-node 2 -m recsys_kernels train ...`` on
    the CPU (gloo). collm has two stages (LoRA, then the mapper), allmrec an alignment stage that never calls the
    LM; evaluation shards the rows over the ranks and gathers every one of them."""
    import json
    import subprocess
    import sys

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    setup = tiny.command_line_setup(model, tmp_path)
    folder = tmp_path / "tiny"
    bb = tiny.backbone("llama")
    bb.lm.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    rows = 8 if model == "allmrec" else 64  # AUC needs both labels among the evaluated rows
    args = ["--backbone", str(folder), "--dtype", "float32", "--train-limit", "8", "--eval-limit", str(rows),
            "--set", "max_steps=2", "--set", "batch_size=2", "--set", "eval_batch_size=8", "--log-every", "0",
            "--out", str(tmp_path / "run"), *setup, *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recsys_kernels", "train", model, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["n"] == rows
    assert [stage["steps"] for stage in results["stages"]] == [2] * len(results["stages"]) and results["stages"]
