"""Thin recommender models built on recsys_kernels.ops and recsys_kernels.nn (imported as ``recsys_kernels.models``).

    from recsys_kernels.models import HSTU, SASRec, BERT4Rec, GRU4Rec      # next-item (sequential) models
    from recsys_kernels.models import PMF, DLRM, DQRM                      # ratings and CTR models

Names are resolved lazily, so importing one model does not import the others.

Sequential models (sasrec.py, bert4rec.py, gru4rec.py, hstu.py; shared pieces in sequence_common.py,
sequence_losses.py, transformer_blocks.py) all read a right-padded ``SequenceBatch`` and return one hidden
state per valid position in jagged order (ops.padded_dense_to_jagged); HSTU runs its whole stack on the jagged
rows with ``nn.HSTUAttention`` (ops.hstu_attention and its fused relative position/time bias).

Item tables of the sequential models — the choice and why:
  * The item table is tied: the same (num_items + 1, D) rows embed the input and score the output
    (sampled softmax, BPR-max, BCE, or BERT4Rec's full softmax), and full-ranking evaluation reads all of it.
    An optimizer-in-backward collection (nn.FusedEmbeddingBagCollection) cannot serve it: it updates rows
    inside backward and exposes no gradient, while the output side needs the gradient of the very same
    rows from the loss. Pooled bags of one item would also add nothing over a plain lookup.
  * So the table is ``ItemTable``, a plain parameter looked up with ``F.embedding``. With config
    ``item_optimizer: "rowwise_adagrad"`` lookups produce sparse gradients (only the rows a batch touched:
    inputs, positives, sampled negatives) and ``optim.RowWiseAdagrad`` (``ops.rowwise_adagrad_update_``)
    updates them, with no dense (E, D) gradient — the setting for large catalogues. The default is
    ``"adam"`` on a dense gradient, because that is what the published configs (SASRec, BERT4Rec, and
    generative-recommenders' HSTU) train with, and these catalogues (3.7K-12K items) are small.
    BERT4Rec's full softmax touches every row each step, so it is always dense.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "BERT4Rec": ".bert4rec",
    "GRU4Rec": ".gru4rec",
    "HSTU": ".hstu",
    "SASRec": ".sasrec",
    "SequenceBatch": ".sequence_common",
    "SequentialModel": ".sequence_common",
    "PMF": ".pmf",
    "DLRM": ".dlrm",
    "DQRM": ".dqrm",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
