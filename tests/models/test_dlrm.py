"""DLRM: shapes and named architectures, training lowers the loss with the fused row-wise Adagrad tables, the
reference backend follows the C++ CPU loss curve, state_dict round-trips, and the CTR task runs end to end."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import recsys_kernels
from recsys_kernels.data import synthetic_ctr
from recsys_kernels.models.dlrm import CONFIGS as ARCHS
from recsys_kernels.models.dlrm import DLRM, single_hot_features
from recsys_kernels.train.ctr_task import CONFIGS, CTRTask

TINY = ARCHS["dlrm-tiny"]


def _data(n: int = 512):
    d = synthetic_ctr(n, table_sizes=TINY["table_sizes"], seed=0)
    return torch.from_numpy(d.dense), torch.from_numpy(d.sparse), torch.from_numpy(d.labels)


def train_curve(model_cls=DLRM, steps: int = 12, backend: str | None = None, **kwargs) -> list[float]:
    """Losses of ``steps`` Adam (MLPs) + row-wise Adagrad (tables) steps over 4 fixed batches of 128."""
    dense, ids, labels = _data()
    model = model_cls(seed=0, sparse_lr=0.1, **TINY, **kwargs)
    opts = [torch.optim.Adam(model.dense_parameters(), lr=1e-2)]
    if model.sparse_parameters():
        opts.append(model.make_sparse_optimizer())
    losses = []
    with recsys_kernels.use_backend(backend):
        for step in range(steps):
            b = slice((step % 4) * 128, (step % 4) * 128 + 128)
            loss = model.loss(model(dense[b], ids[b]), labels[b])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            losses.append(loss.item())
    return losses


def test_forward_shape_and_feature_forms():
    dense, ids, _ = _data(16)
    model = DLRM(seed=0, **TINY)
    out = model(dense, ids)
    assert out.shape == (16,) and out.dtype == torch.float32
    # the same batch as a features dict (what a KeyedJaggedTensor gives) gives the same logits
    torch.testing.assert_close(model(dense, single_hot_features(ids, model.table_names)), out, rtol=0, atol=0)


@pytest.mark.parametrize("name, top_in", [("dlrm-criteo-kaggle", 16 + 27 * 26 // 2), ("dlrm-mlperf", 480)])
def test_named_architectures(name, top_in):
    arch = dict(ARCHS[name], table_sizes=(7,) * 26)  # the real tables are gigabytes; the MLPs are what we check
    model = DLRM(**arch)
    widths = [m.out_features for m in model.bottom_mlp if isinstance(m, torch.nn.Linear)]
    assert [13, *widths] == [13, *arch["bottom_mlp"]]
    tops = [m for m in model.top_mlp if isinstance(m, torch.nn.Linear)]
    assert tops[0].in_features == top_in and [m.out_features for m in tops] == list(arch["top_mlp"])


def test_capped_tables_hash_ids():
    model = DLRM((100, 10), embedding_dim=4, bottom_mlp=(4,), top_mlp=(1,), max_table_rows=8, seed=0)
    assert model.num_rows == [8, 8]
    ids = torch.tensor([[99, 9], [3, 1]])
    torch.testing.assert_close(model(torch.zeros(2, 13), ids), model(torch.zeros(2, 13), ids % 8), rtol=0, atol=0)


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match="bottom_mlp"):
        DLRM((5,), embedding_dim=8, bottom_mlp=(16, 4), top_mlp=(1,))
    with pytest.raises(ValueError, match="top_mlp"):
        DLRM((5,), embedding_dim=4, bottom_mlp=(4,), top_mlp=(8, 2))


def test_loss_falls_and_tables_train_in_backward():
    dense, ids, labels = _data()
    model = DLRM(seed=0, sparse_lr=0.1, **TINY)
    before = [p.detach().clone() for p in model.embedding.parameters()]
    losses = train_curve()
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    assert model.sparse_parameters() == []
    model.loss(model(dense[:64], ids[:64]), labels[:64]).backward()
    assert all(p.grad is None for p in model.embedding.parameters())  # updated in place, no gradient kept
    assert any(not torch.equal(b, p) for b, p in zip(before, model.embedding.parameters()))


def test_reference_backend_gives_the_same_loss_curve():
    np.testing.assert_allclose(train_curve(backend="reference"), train_curve(), rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip():
    dense, ids, labels = _data(64)
    a = DLRM(seed=0, **TINY)
    a.loss(a(dense, ids), labels).backward()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = DLRM(seed=1, **TINY)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(b(dense, ids), a(dense, ids), rtol=0, atol=0)
    for key, value in a.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("model_name", ["dlrm", "dqrm"])
def test_ctr_task_trains_and_evaluates(model_name):
    cfg = dict(CONFIGS[model_name][f"{model_name}-tiny"], epochs=1)
    task = CTRTask(model_name, synthetic_ctr(**cfg["data_args"]), cfg)
    model = task.build_model(cfg)
    opts = task.make_optimizers(model, cfg)
    assert len(opts) == (2 if model_name == "dqrm" else 1)
    losses = []
    for epoch in range(3):
        for batch in task.train_batches(epoch, "cpu"):
            loss = task.loss(model, batch)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            losses.append(loss.item())
    metrics = task.evaluate(model, "test", "cpu")
    assert {"AUC", "LogLoss", "planted_AUC", "planted_LogLoss"} <= set(metrics)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) and metrics["AUC"] > 0.6, (losses, metrics)


def test_unknown_config_key_is_named():
    cfg = dict(CONFIGS["dlrm"]["dlrm-tiny"], mlp_bot=(4,))
    with pytest.raises(ValueError, match="mlp_bot"):
        CTRTask("dlrm", synthetic_ctr(**cfg["data_args"]), cfg)
