"""Sampled-softmax negatives scored by id: the every-item-logits route and the gather route give the same
logits and gradients, and the HSTU loss is the plain sampled softmax over the gathered rows."""

from __future__ import annotations

import pytest
import torch

from recsys_kernels.models.sequence_losses import (negative_logits, negative_logits_by_id,
                                                   sampled_softmax_from_logits, sampled_softmax_loss)


@pytest.mark.parametrize("V,K,D", [(30, 8, 4), (300, 4, 8)])  # V <= K D: logits route; V > K D: gather route
def test_negative_logits_by_id_equals_gathered_rows(V, K, D):
    g = torch.Generator().manual_seed(0)
    query = torch.randn(12, D, generator=g, requires_grad=True)
    table = torch.randn(V, D, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (12, K), generator=g)
    ids[0] = ids[0, 0]  # duplicates inside a row
    got = negative_logits_by_id(query, table, ids)
    want = negative_logits(query, table[ids])
    torch.testing.assert_close(got, want)
    upstream = torch.randn(got.shape, generator=g)
    g_got = torch.autograd.grad(got, (query, table), upstream)
    g_want = torch.autograd.grad(want, (query, table), upstream)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def test_sampled_softmax_from_logits_is_the_sampled_softmax():
    g = torch.Generator().manual_seed(1)
    query, pos = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    table = torch.randn(40, 6, generator=g)
    pos_ids = torch.randint(0, 40, (10,), generator=g)
    neg_ids = torch.randint(0, 40, (10, 5), generator=g)
    neg_ids[:, 0] = pos_ids  # a collision, masked out
    want = sampled_softmax_loss(query, pos, table[neg_ids], pos_ids, neg_ids, temperature=0.05)
    got = sampled_softmax_from_logits(query, pos, negative_logits_by_id(query, table, neg_ids), pos_ids, neg_ids,
                                      temperature=0.05)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("V,K,D", [(30, 8, 4), (300, 4, 8)])
def test_negative_logits_stay_float32_under_bf16_autocast(V, K, D):
    g = torch.Generator().manual_seed(2)
    query, table = torch.randn(12, D, generator=g), torch.randn(V, D, generator=g)
    ids = torch.randint(0, V, (12, K), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_id = negative_logits_by_id(query, table, ids)
        shared = negative_logits(query, table[:K])
    assert by_id.dtype == shared.dtype == torch.float32
    torch.testing.assert_close(by_id, negative_logits(query, table[ids]))
