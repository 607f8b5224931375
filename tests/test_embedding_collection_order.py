"""The embedding collections return each table's pooled columns in the order of their ``tables`` even when
tables of different dims (hence different groups) interleave, and gradients reach the right table."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_kernels.nn import EmbeddingBagConfig, FusedEmbeddingBagCollection, QATEmbeddingBagCollection
from recsys_kernels.nn.embedding_config import pooled_in_table_order
from recsys_kernels.optim.rowwise_adagrad import RowWiseAdagradConfig

INTERLEAVED = [EmbeddingBagConfig("a", 7, 4), EmbeddingBagConfig("b", 5, 8), EmbeddingBagConfig("c", 6, 4)]
GROUPED = [INTERLEAVED[0], INTERLEAVED[2], INTERLEAVED[1]]  # the order the collections group them in


def _features(B: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for t in INTERLEAVED:
        lengths = torch.randint(0, 4, (B,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        out[t.name] = (torch.randint(0, t.num_embeddings, (int(offsets[-1]),), generator=g), offsets)
    return out


def test_pooled_in_table_order_gathers_columns_only_when_groups_interleave():
    outs = [torch.arange(8.0).repeat(2, 1), 100 + torch.arange(8.0).repeat(2, 1)]  # group (a, c), group (b)
    got = pooled_in_table_order(outs, [[GROUPED[0], GROUPED[1]], [GROUPED[2]]], INTERLEAVED)
    want = torch.cat([outs[0][:, :4], outs[1], outs[0][:, 4:]], dim=1)
    assert torch.equal(got, want)
    same = pooled_in_table_order(outs, [[GROUPED[0], GROUPED[1]], [GROUPED[2]]], GROUPED)
    assert torch.equal(same, torch.cat(outs, dim=1))


def test_fused_collection_interleaved_tables_match_per_table_lookups_and_update_the_same_rows():
    feats = _features()
    opt = RowWiseAdagradConfig(lr=0.5)
    inter = FusedEmbeddingBagCollection(INTERLEAVED, optimizer=opt, seed=3)
    grouped = FusedEmbeddingBagCollection(GROUPED, optimizer=opt, seed=3)
    weights = inter.split_embedding_weights()
    out = inter(feats)
    col = 0
    for t in INTERLEAVED:
        want = F.embedding_bag(feats[t.name][0], weights[t.name], feats[t.name][1][:-1], mode="sum")
        torch.testing.assert_close(out[:, col:col + t.embedding_dim], want)
        col += t.embedding_dim
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    grouped_grad = torch.cat([grad[:, :4], grad[:, 12:], grad[:, 4:12]], dim=1)  # columns a, c, b
    grouped(feats).backward(grouped_grad)
    for name, w in inter.split_embedding_weights().items():
        torch.testing.assert_close(w, grouped.split_embedding_weights()[name], rtol=0, atol=0)


def test_qat_collection_interleaved_tables_follow_table_order():
    feats = _features()
    inter = QATEmbeddingBagCollection(INTERLEAVED, seed=3)
    grouped = QATEmbeddingBagCollection(GROUPED, seed=3)
    out, out_grouped = inter(feats), grouped(feats)
    torch.testing.assert_close(out, torch.cat([out_grouped[:, :4], out_grouped[:, 8:], out_grouped[:, 4:8]], 1),
                               rtol=0, atol=0)
