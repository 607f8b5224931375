"""SASRec, BERT4Rec, GRU4Rec and HSTU: shapes, loss falls, reference and fused backends agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recsys_kernels as rk
from recsys_kernels.models import HSTU, SequenceBatch
from recsys_kernels.train.sequence_batches import causal_batch, cloze_batch, eval_batch

from .sequential_helpers import SEQUENTIAL, loss_curve, one_thread, tiny_task

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    previous = one_thread()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("model_name", SEQUENTIAL)
def test_forward_shapes_and_scores(model_name):
    task = tiny_task(model_name)
    model = task.build_model(task.config).eval()
    batch = next(iter(task.train_batches(0, "cpu")))
    hidden = model(batch)
    assert hidden.shape == (batch.total_len, model.dim)
    scores = model.scores(hidden.index_select(0, batch.last))
    assert scores.shape == (batch.batch_size, task.num_items + 1) and scores.dtype == torch.float32
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("model_name,item_optimizer", [(m, "adam") for m in SEQUENTIAL] +
                         [("hstu", "rowwise_adagrad"), ("sasrec", "rowwise_adagrad")])
def test_loss_falls_and_backends_agree(model_name, item_optimizer):
    task = tiny_task(model_name, lr=1e-2, item_optimizer=item_optimizer)
    default = loss_curve(task, steps=10)
    first, last = np.mean(default[:3]), np.mean(default[-3:])
    assert last < first, f"{model_name}: loss did not fall: {default}"
    with rk.use_backend("reference"):
        reference = loss_curve(task, steps=10)
    np.testing.assert_allclose(default, reference, rtol=2e-4, atol=1e-5)


def test_sparse_item_table_gets_rowwise_adagrad():
    task = tiny_task("hstu", item_optimizer="rowwise_adagrad")
    model = task.build_model(task.config)
    optimizers = task.make_optimizers(model, task.config)
    assert [type(o).__name__ for o in optimizers] == ["AdamW", "RowWiseAdagrad"]
    assert model.sparse_parameters() == [model.items.weight]
    batch = next(iter(task.train_batches(0, "cpu")))
    task.loss(model, batch).backward()
    assert model.items.weight.grad.is_sparse


def test_bert4rec_rejects_sparse_items():
    with pytest.raises(ValueError, match="full softmax"):
        tiny_task("bert4rec", item_optimizer="rowwise_adagrad").build_model(
            dict(tiny_task("bert4rec").config, item_optimizer="rowwise_adagrad"))


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="embeding_dim"):
        tiny_task("sasrec", embeding_dim=8)


def test_hstu_padding_rows_do_not_leak():
    """Appending another sequence (or rounding the jagged length up) leaves a sequence's output unchanged."""
    torch.manual_seed(0)
    model = HSTU(30, embedding_dim=16, dqk=8, dv=8, max_len=8, dropout=0.0).eval()
    seqs = [np.array([3, 4, 5, 6]), np.array([7, 8])]
    ts = [np.array([10, 20, 30, 40]), np.array([5, 6])]
    alone = model(eval_batch(seqs[:1], ts[:1], max_len=8))
    both = model(eval_batch(seqs, ts, max_len=8))
    padded = model(eval_batch(seqs, ts, max_len=8, pad_to_max_len=True))
    torch.testing.assert_close(both[:4], alone)
    torch.testing.assert_close(padded[:6], both)


def test_hstu_host_offsets_and_device_offsets_agree():
    """A batch's CPU offsets (the sync-free path) and offsets computed from its lengths give the same states."""
    torch.manual_seed(0)
    model = HSTU(30, embedding_dim=16, dqk=8, dv=8, max_len=8, dropout=0.0).eval()
    batch = eval_batch([np.array([3, 4, 5, 6]), np.array([7, 8]), np.array([9])], None, max_len=8,
                       pad_to_max_len=True)
    assert batch.host_offsets is not None
    without = SequenceBatch(**{**batch.__dict__, "host_offsets": None})
    torch.testing.assert_close(model(batch), model(without), rtol=0, atol=0)


def test_collation():
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    ts = [np.array([1, 2, 3, 4]), np.array([7, 8])]
    b = causal_batch(seqs, ts, max_len=2)
    assert b.items.tolist() == [[2, 3], [5, 0]] and b.lengths.tolist() == [2, 1]  # keeps the most recent
    assert b.labels.tolist() == [3, 4, 6] and b.last.tolist() == [1, 2] and b.total_len == 3
    assert b.timestamps.tolist() == [[2, 3], [7, 0]]
    assert b.host_offsets.tolist() == [0, 2, 3]  # the jagged offsets, kept on the CPU by .to()
    assert b.to("meta").host_offsets.device.type == "cpu" and b.to("meta").items.device.type == "meta"
    c = cloze_batch(seqs, None, max_len=4, rng=np.random.default_rng(0), mask_token=99, mask_prob=0.5)
    flat = np.concatenate([seqs[0], seqs[1]])
    assert (c.items.flatten()[c.items.flatten() != 0] == 99).sum() == len(c.labels) >= 2
    assert c.labels.tolist() == flat[c.label_index.numpy()].tolist()
    e = eval_batch([np.array([1, 2, 3]), np.array([], dtype=np.int64)], None, max_len=3, mask_token=9)
    assert e.items.tolist() == [[2, 3, 9], [9, 0, 0]] and e.labels is None
    assert isinstance(e, SequenceBatch)
