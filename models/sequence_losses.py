"""Training losses of the sequential models, on the M labelled positions of a batch.

    sampled_softmax_loss   generative-recommenders' SampledSoftmaxLoss: the positive against K uniformly
                           sampled negatives, logits / temperature (HSTU; SASRec and GRU4Rec optionally)
    bce_loss               SASRec's paper loss: binary cross-entropy, one sampled negative per position
    bpr_max_loss           GRU4Rec's BPR-max (Hidasi & Karatzoglou 2018), with its score regulariser
    full_softmax_loss      cross-entropy over every item (BERT4Rec)

Negatives are drawn uniformly from 1..num_items with the global torch generator (so a seeded run repeats),
either one set per position ((M, K) ids) or one set shared by the batch ((K,) ids, scored with one matmul, as
GRU4Rec's shared mini-batch sampling). A negative equal to its position's positive is masked out rather
than redrawn, which keeps shapes static. Logits are formed in float32 (bf16 autocast would otherwise round
1/temperature-scaled scores badly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_kernels.train.loop import no_autocast

__all__ = ["bce_loss", "bpr_max_loss", "full_softmax_loss", "negative_logits", "negative_logits_by_id",
           "sample_negatives", "sampled_softmax_from_logits", "sampled_softmax_loss"]


def sample_negatives(num_items: int, num_positions: int, k: int, shared: bool, device: torch.device) -> torch.Tensor:
    """Uniform item ids in [1, num_items]: (num_positions, k) int64, or (k,) when ``shared``."""
    shape = (k,) if shared else (num_positions, k)
    return torch.randint(1, num_items + 1, shape, device=device)


def negative_logits(query: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """query (M, D), neg (K, D) shared or (M, K, D) per position -> (M, K) float32 dot products."""
    with no_autocast(query.device):
        query = query.float()
        neg = neg.float()
        if neg.dim() == 2:
            return query @ neg.t()
        return torch.bmm(neg, query.unsqueeze(-1)).squeeze(-1)


def negative_logits_by_id(query: torch.Tensor, table: torch.Tensor, neg_ids: torch.Tensor) -> torch.Tensor:
    """query (M, D), table (V, D) every item's row, neg_ids (K,) shared or (M, K) per position -> (M, K) float32
    dot products of each query with its sampled rows. Per-position negatives are scored as every item's logit
    and a gather of the sampled columns when the (M, V) logits are no larger than the (M, K, D) gathered rows
    (V <= K D, e.g. MovieLens-1M's 3.7k items against 128 negatives of 50 dims): one GEMM instead of gathering
    M K rows, and a backward without scattering M K rows into the table (atomics on a few thousand rows)."""
    K = neg_ids.shape[-1]
    if neg_ids.dim() == 2 and table.shape[0] <= K * table.shape[1]:
        with no_autocast(query.device):
            return (query.float() @ table.float().t()).gather(1, neg_ids)
    neg = table.index_select(0, neg_ids.reshape(-1)).view(*neg_ids.shape, table.shape[1])
    return negative_logits(query, neg)


def _collisions(pos_ids: torch.Tensor, neg_ids: torch.Tensor) -> torch.Tensor:
    """(M, K) bool: negative k of position m is that position's positive."""
    return neg_ids.view(-1, neg_ids.shape[-1]) == pos_ids.view(-1, 1)


def sampled_softmax_loss(query: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_ids: torch.Tensor,
                         neg_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """query, pos (M, D); neg (K, D) | (M, K, D); pos_ids (M,); neg_ids (K,) | (M, K) -> mean over M of
    -log softmax([q·p, q·n_1, ..., q·n_K] / temperature)[0]."""
    return sampled_softmax_from_logits(query, pos, negative_logits(query, neg), pos_ids, neg_ids, temperature)


def sampled_softmax_from_logits(query: torch.Tensor, pos: torch.Tensor, neg_logit: torch.Tensor,
                                pos_ids: torch.Tensor, neg_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """sampled_softmax_loss given the negatives' (M, K) logits (e.g. from negative_logits_by_id)."""
    pos_logit = (query.float() * pos.float()).sum(-1, keepdim=True)
    neg_logit = neg_logit.float().masked_fill(_collisions(pos_ids, neg_ids), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def bce_loss(query: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_ids: torch.Tensor,
             neg_ids: torch.Tensor) -> torch.Tensor:
    """query, pos (M, D); neg (M, 1, D), neg_ids (M, 1) -> mean over M of
    -log σ(q·p) - log(1 - σ(q·n)) (the negative term dropped where n is the positive)."""
    pos_logit = (query.float() * pos.float()).sum(-1)
    neg_logit = negative_logits(query, neg)[:, 0]
    keep = (~_collisions(pos_ids, neg_ids)[:, 0]).float()
    return (F.softplus(-pos_logit) + keep * F.softplus(neg_logit)).mean()


def bpr_max_loss(query: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_ids: torch.Tensor,
                 neg_ids: torch.Tensor, reg: float = 1.0) -> torch.Tensor:
    """query, pos (M, D); neg (K, D) | (M, K, D) -> mean over M of
    -log Σ_j s_j σ(r_i - r_j) + reg Σ_j s_j r_j², s = softmax over the negatives' scores r_j."""
    pos_logit = (query.float() * pos.float()).sum(-1, keepdim=True)
    neg_logit = negative_logits(query, neg)
    collide = _collisions(pos_ids, neg_ids)
    weights = torch.softmax(neg_logit.masked_fill(collide, float("-inf")), dim=1)
    ranking = (weights * torch.sigmoid(pos_logit - neg_logit)).sum(1)
    regulariser = (weights * neg_logit.masked_fill(collide, 0.0).square()).sum(1)
    return (-torch.log(ranking + 1e-24) + reg * regulariser).mean()


def full_softmax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (M, V + 1) (column 0 = padding, already -inf), labels (M,) in [1, V] -> mean cross-entropy."""
    return F.cross_entropy(logits.float(), labels)
