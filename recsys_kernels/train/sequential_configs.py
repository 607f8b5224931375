"""Named configs of the sequential models (flat dicts; ``recsys-kernels train MODEL --config NAME``).

Keys every sequential config has (the trainer's and the task's): model, epochs, batch_size, eval_batch_size,
lr, weight_decay, betas (AdamW), seed, item_optimizer ("adam" | "rowwise_adagrad"), item_lr (RowWiseAdagrad's
lr), max_len, pad_to_max_len, max_batches_per_epoch (0 = all), patience (epochs without a better validation
metric before stopping, 0 = never), data_args (keyword arguments of a synthetic generator); cloze models add
mask_prob and last_mask_prob. Every other key is a keyword argument of the model class.

Where the numbers come from:
  hstu-ml-1m, hstu-large-ml-1m, sasrec-ml-1m  generative-recommenders configs/ml-1m/*-sampled-softmax-n128-*.gin
                       (batch 128, length 200, lr 1e-3, AdamW betas (0.9, 0.98), wd 0, 101 epochs, 128 local
                       negatives, temperature 0.05, l2-normalised embeddings)
  sasrec, sasrec-beauty  Kang & McAuley 2018 (D 50, 2 blocks, 1 head, dropout 0.2 ML-1M / 0.5 Beauty,
                       length 200 / 50, lr 1e-3, batch 128, Adam betas (0.9, 0.98), BCE with one negative)
  bert4rec, bert4rec-beauty  Sun et al. 2019 (D 64, 2 blocks, 2 heads, dropout 0.1, mask 0.2 ML-1M / 0.6 Beauty,
                       length 200 / 50, lr 1e-4, batch 256, weight decay 0.01)
  gru4rec              Hidasi & Karatzoglou 2018 (one GRU layer, BPR-max, shared sampled negatives); hidden size
                       100, Adam lr 1e-3 and batch 128 are this project's choices (the paper tunes per data set)
  hstu-beauty          the ML-1M HSTU settings at Beauty's length 50: not a published config
  *-tiny, hstu-demo    small settings for tests and ``recsys-kernels demo``
"""

from __future__ import annotations

COMMON = dict(epochs=100, batch_size=128, eval_batch_size=256, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98),
              seed=0, item_optimizer="adam", item_lr=0.05, pad_to_max_len=False, max_batches_per_epoch=0,
              patience=0, data_args={})

HSTU_ML_1M = dict(COMMON, model="hstu", epochs=101, embedding_dim=50, num_blocks=2, num_heads=1, dqk=50, dv=50,
                  max_len=200, dropout=0.2, linear_dropout=0.2, alpha=1.0, num_buckets=128, num_negatives=128,
                  shared_negatives=False, temperature=0.05)
SASREC_PAPER = dict(COMMON, model="sasrec", epochs=200, embedding_dim=50, num_blocks=2, num_heads=1, ffn_dim=50,
                    max_len=200, dropout=0.2, loss="bce")
BERT4REC_PAPER = dict(COMMON, model="bert4rec", epochs=200, batch_size=256, lr=1e-4, betas=(0.9, 0.999),
                      weight_decay=0.01, embedding_dim=64, num_blocks=2, num_heads=2, ffn_dim=256, max_len=200,
                      dropout=0.1, mask_prob=0.2, last_mask_prob=0.1)
GRU4REC_DEFAULT = dict(COMMON, model="gru4rec", epochs=50, embedding_dim=100, num_layers=1, max_len=50,
                       dropout=0.0, embedding_dropout=0.0, loss="bpr_max", num_negatives=128,
                       shared_negatives=True, bpr_reg=1.0, temperature=1.0)

_TINY_DATA = dict(num_users=200, num_items=60, min_length=5, max_length=20, seed=0)
_TINY = dict(epochs=2, batch_size=32, eval_batch_size=128, max_len=20, data_args=_TINY_DATA)

CONFIGS: dict[str, dict[str, dict]] = {
    "hstu": {
        "hstu-ml-1m": HSTU_ML_1M,
        "hstu-large-ml-1m": dict(HSTU_ML_1M, num_blocks=8, num_heads=2, dqk=25, dv=25),
        "hstu-beauty": dict(HSTU_ML_1M, max_len=50),
        "hstu-tiny": dict(HSTU_ML_1M, **_TINY, embedding_dim=16, dqk=8, dv=8, num_negatives=16, dropout=0.1,
                          linear_dropout=0.1),
        # the demo: 2000 synthetic users; 8 epochs train in ~10 s on two idle CPU cores (HR@10 ~0.84)
        "hstu-demo": dict(HSTU_ML_1M, epochs=8, batch_size=64, embedding_dim=32, dqk=32, dv=32, max_len=50,
                          num_negatives=64, dropout=0.1, linear_dropout=0.1, eval_batch_size=512, lr=2e-3),
    },
    "sasrec": {
        "sasrec": SASREC_PAPER,
        "sasrec-beauty": dict(SASREC_PAPER, max_len=50, dropout=0.5),
        "sasrec-ml-1m": dict(SASREC_PAPER, epochs=101, loss="sampled_softmax", num_negatives=128,
                             shared_negatives=False, temperature=0.05),
        "sasrec-tiny": dict(SASREC_PAPER, **_TINY, embedding_dim=16, ffn_dim=16, dropout=0.1),
    },
    "bert4rec": {
        "bert4rec": BERT4REC_PAPER,
        "bert4rec-beauty": dict(BERT4REC_PAPER, max_len=50, mask_prob=0.6),
        "bert4rec-tiny": dict(BERT4REC_PAPER, **_TINY, lr=1e-3, embedding_dim=16, num_heads=2, ffn_dim=32),
    },
    "gru4rec": {
        "gru4rec": GRU4REC_DEFAULT,
        "gru4rec-tiny": dict(GRU4REC_DEFAULT, **_TINY, embedding_dim=16, num_negatives=16),
    },
}

# the config a model trains with when --config is not given
DEFAULTS = {"hstu": "hstu-ml-1m", "sasrec": "sasrec", "bert4rec": "bert4rec", "gru4rec": "gru4rec"}
