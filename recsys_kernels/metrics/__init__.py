"""Evaluation metrics: full-ranking next-item (rank, HR@K, NDCG@K, MRR), CTR (AUC, UAUC, log-loss),
ratings (RMSE, MAE). Inputs may be numpy arrays or torch tensors on any device; results are Python floats
(ranks stay a tensor on the scores' device)."""

from recsys_kernels.metrics.classification import auc, log_loss, user_averaged_auc
from recsys_kernels.metrics.ranking import hit_rate_at_k, mrr, ndcg_at_k, rank_of_targets, ranking_metrics
from recsys_kernels.metrics.regression import mae, rmse

__all__ = ["auc", "hit_rate_at_k", "log_loss", "mae", "mrr", "ndcg_at_k", "rank_of_targets", "ranking_metrics",
           "rmse", "user_averaged_auc"]
