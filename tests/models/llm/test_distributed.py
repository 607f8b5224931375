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
