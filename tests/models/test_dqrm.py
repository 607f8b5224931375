"""DQRM: INT4 QAT tables train through sparse gradients and row-wise Adagrad, the reference backend follows the
C++ CPU loss curve, ``to_int4()`` gives exactly the QAT forward with tables ≈ 8× smaller, and state_dict
round-trips for both the QAT and the INT4 model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from recsys_kernels.models.dlrm import DLRM
from recsys_kernels.models.dqrm import DQRM, table_bytes
from recsys_kernels.nn import Int4EmbeddingBagCollection
from tests.models.test_dlrm import TINY, _data, train_curve

QPARAMS = ["row", "table"]


def _trained(qparams: str, steps: int = 6) -> DQRM:
    dense, ids, labels = _data()
    model = DQRM(seed=0, qparams=qparams, scale_refresh_every=2, sparse_lr=0.1, **TINY)
    opts = [torch.optim.Adam(model.dense_parameters(), lr=1e-2), model.make_sparse_optimizer()]
    for step in range(steps):
        b = slice((step % 4) * 128, (step % 4) * 128 + 128)
        loss = model.loss(model(dense[b], ids[b]), labels[b])
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
    return model


@pytest.mark.parametrize("qparams", QPARAMS)
def test_loss_falls_with_sparse_gradients(qparams):
    losses = train_curve(DQRM, qparams=qparams)
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    dense, ids, labels = _data(32)
    model = DQRM(seed=0, qparams=qparams, **TINY)
    model.loss(model(dense, ids), labels).backward()
    (weight,) = model.sparse_parameters()
    assert weight.grad is not None and weight.grad.is_sparse  # never a dense (E, D) gradient


@pytest.mark.parametrize("qparams", QPARAMS)
def test_reference_backend_gives_the_same_loss_curve(qparams):
    np.testing.assert_allclose(train_curve(DQRM, backend="reference", qparams=qparams),
                               train_curve(DQRM, qparams=qparams), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qparams", QPARAMS)
def test_to_int4_equals_the_qat_forward(qparams):
    model = _trained(qparams).eval()
    int4 = model.to_int4()
    assert isinstance(int4, DLRM) and isinstance(int4.embedding, Int4EmbeddingBagCollection) and not int4.training
    dense, ids, _ = _data(256)
    with torch.no_grad():
        torch.testing.assert_close(int4(dense, ids), model(dense, ids), rtol=0, atol=0)
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # the QAT model is untouched


def test_int4_tables_are_smaller():
    model = DQRM((1000, 300), embedding_dim=128, bottom_mlp=(128,), top_mlp=(1,), seed=0)
    sizes = model.table_bytes()
    assert sizes["fp32"] == 1300 * 128 * 4
    # FBGEMM's row: fp16 scale + bias (4 bytes) and 64 bytes of codes, padded to 80 bytes
    assert sizes["int4"] == 1300 * 80 == table_bytes(model.to_int4().embedding)
    assert sizes["int4_unpadded"] == 1300 * 68
    assert sizes["fp32"] / sizes["int4"] == pytest.approx(6.4)  # 7.5x without FBGEMM's 16-byte row alignment


@pytest.mark.parametrize("qparams", QPARAMS)
def test_state_dict_round_trip(qparams):
    a = _trained(qparams).eval()
    dense, ids, _ = _data(64)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = DQRM(seed=1, qparams=qparams, scale_refresh_every=2, **TINY).eval()
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    with torch.no_grad():
        torch.testing.assert_close(b(dense, ids), a(dense, ids), rtol=0, atol=0)
    # the INT4 inference model saves and loads by itself too
    int4 = a.to_int4()
    buf = io.BytesIO()
    torch.save(int4.state_dict(), buf)
    fresh = DQRM(seed=2, qparams=qparams, **TINY).to_int4()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    with torch.no_grad():
        torch.testing.assert_close(fresh(dense, ids), a(dense, ids), rtol=0, atol=0)
