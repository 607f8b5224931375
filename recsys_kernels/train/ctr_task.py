"""The click-through task for DLRM and DQRM (registered as "dlrm" and "dqrm").

Protocol: the rows are split at random into train / valid / test (``split`` fractions, the config's seed);
metrics are AUC and log-loss on the split, and, on synthetic data with a planted model, ``planted_AUC`` — the
AUC of the generator's own click probabilities on the same rows, the best any model can do in expectation.
The tables' sizes come from the data (capped at ``max_table_rows``, ids hashed by modulo); the architecture
comes from the config. Optimizers: the MLPs by Adam (or SGD, DLRM's original); DLRM's tables update inside
their backward (fused row-wise Adagrad); DQRM's QAT tables by recsys_kernels.optim.RowWiseAdagrad over their
sparse gradients, with the same ``sparse_lr``.

Quality (CPU, seed 0; ``recsys-kernels train dlrm --data synthetic-ctr --config dlrm-synthetic --device cpu``,
and the same for dqrm / dqrm-synthetic; about 3 minutes each on two cores):
  DLRM  test AUC 0.8656 (best epoch 3), planted model 0.8689 on the same rows: 0.0033 below
  DQRM  test AUC 0.8656 with "row" qparams (within 0.0001 of DLRM)
  tables at D = 256: 1024 bytes a row in fp32, 144 in FBGEMM's INT4 rows (4 bytes of scale and bias, 128 of
        nibbles, padded to 16 bytes): 7.1x. The 16-byte row alignment caps the ratio below 7x for D < 224 (4.0x at
        D = 16, 6.4x at D = 128), hence D = 256. At D = 256 the model has ~250k parameters: on 1M rows it
        overfits (train loss below the planted log-loss; test AUC 0.8544, 0.0077 below planted, and lower sparse
        lr or more sparse weight decay did not close it), on 4M rows it does not.
  At D = 16 on 1M rows (``--set embedding_dim=16 --set bottom_mlp=[64,16]`` and ``data_args``): DLRM 0.8582, 0.0039
        below planted; DQRM 0.8580; "table" qparams (DQRM's per-table scale) 0.8561.
On synthetic_ctr's defaults (200k rows, 8 tables of 1000 ids) the planted AUC (0.867) was out of reach of every
model we fitted to the 160k training rows: DLRM 0.782, a logistic regression on one-hot ids and dense features
(the planted model less its interaction terms) 0.790, a factorization machine of the planted dim 4 at most 0.79
before overfitting — the gap there is estimation noise, which is why the quality config uses 100-id tables (1M
rows were enough at D = 16; on 400k rows of 100-id tables without interaction terms, that logistic regression came
within 0.0015 of the planted AUC, DLRM within 0.0035). DLRM has no first-order sparse term, so the planted per-id
effects must be learned through dots with the bottom MLP's output; a low sparse lr matters most (test AUC at 1M
rows: sparse lr 0.03 0.8582, 0.05 0.8577, 0.1 0.8568, 0.3 0.849) and a little l2 (3e-5) helps.
"""

from __future__ import annotations

import inspect
from typing import Iterator, NamedTuple

import numpy as np
import torch

from recsys_kernels.data import CTRData
from recsys_kernels.metrics import auc, log_loss
from recsys_kernels.models.dlrm import CONFIGS as ARCHS
from recsys_kernels.models.dlrm import DLRM
from recsys_kernels.models.dqrm import DQRM
from recsys_kernels.train import registry

__all__ = ["CONFIGS", "CTRBatch", "CTRTask", "MODEL_CLASSES"]

MODEL_CLASSES: dict[str, type[DLRM]] = {"dlrm": DLRM, "dqrm": DQRM}
TASK_KEYS = frozenset({"model", "epochs", "batch_size", "eval_batch_size", "seed", "lr", "optimizer", "split",
                       "patience", "data_args", "max_batches_per_epoch"})
OPTIMIZERS = ("adam", "sgd")

COMMON = dict(epochs=1, batch_size=128, eval_batch_size=16384, seed=0, lr=1e-3, optimizer="adam", sparse_lr=0.01,
              split=(0.8, 0.1, 0.1), patience=0, max_batches_per_epoch=0, data_args={})
_KAGGLE = {k: v for k, v in ARCHS["dlrm-criteo-kaggle"].items() if k != "table_sizes"}
_MLPERF = {k: v for k, v in ARCHS["dlrm-mlperf"].items() if k != "table_sizes"}
_TINY = {k: v for k, v in ARCHS["dlrm-tiny"].items() if k != "table_sizes"}
# The quality run (see the module docstring): synthetic_ctr's planted logistic model on 4M rows of 8 tables of
# 100 ids, D = 256 (the smallest D where FBGEMM's INT4 rows are >= 7x smaller than fp32) with small MLPs; tuned on
# the CPU. The best validation epoch was 3 of 8 at D = 256, so 4 epochs.
_SYNTH = dict(COMMON, embedding_dim=256, bottom_mlp=(64, 256), top_mlp=(64, 1), epochs=4, batch_size=1024, lr=1e-3,
              sparse_lr=0.03, sparse_weight_decay=3e-5,
              data_args=dict(num_samples=4_000_000, table_sizes=(100,) * 8, seed=0))
_TINY_RUN = dict(COMMON, **_TINY, epochs=2, batch_size=64, lr=1e-2, sparse_lr=0.05,
                 data_args=dict(num_samples=2000, table_sizes=(50, 40, 30, 20), seed=0))

CONFIGS: dict[str, dict[str, dict]] = {
    "dlrm": {
        "dlrm-synthetic": dict(_SYNTH, model="dlrm"),
        "dlrm-criteo-kaggle": dict(COMMON, **_KAGGLE, model="dlrm", batch_size=128, optimizer="sgd", lr=0.1,
                                   sparse_lr=0.1),
        "dlrm-mlperf": dict(COMMON, **_MLPERF, model="dlrm", batch_size=65536),
        "dlrm-tiny": dict(_TINY_RUN, model="dlrm"),
    },
    "dqrm": {
        "dqrm-synthetic": dict(_SYNTH, model="dqrm", qparams="row", scale_refresh_every=100),
        "dqrm-criteo-kaggle": dict(COMMON, **_KAGGLE, model="dqrm", qparams="table", scale_refresh_every=100),
        "dqrm-tiny": dict(_TINY_RUN, model="dqrm", qparams="row", scale_refresh_every=10),
    },
}


class CTRBatch(NamedTuple):
    """dense (B, num_dense) float32; ids (B, T) int64 one id per table; labels (B,) float32 in {0, 1}."""

    dense: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "CTRBatch":
        return CTRBatch(*(t.to(device) for t in self))


def model_kwargs(model_name: str, config: dict) -> dict:
    """The config entries that are arguments of the model class; unknown keys raise (typos)."""
    params = set(inspect.signature(MODEL_CLASSES[model_name].__init__).parameters)
    params -= {"self", "table_sizes", "embedding", "seed"}
    unknown = set(config) - params - TASK_KEYS
    if unknown:
        raise ValueError(f"unknown config keys for {model_name}: {sorted(unknown)} (model arguments: "
                         f"{sorted(params)}; task keys: {sorted(TASK_KEYS)})")
    if config.get("optimizer", "adam") not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config['optimizer']!r}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in params}


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


class CTRTask:
    """Task (recsys_kernels.train.task.Task) of click prediction on ``data`` with model ``model_name``."""

    name = "ctr"
    primary_metric = "AUC"
    higher_is_better = True

    def __init__(self, model_name: str, data: CTRData, config: dict):
        if model_name not in MODEL_CLASSES:
            raise ValueError(f"unknown CTR model {model_name!r}; known: {sorted(MODEL_CLASSES)}")
        if not isinstance(data, CTRData):
            raise TypeError(f"{model_name} trains on click logs (recsys_kernels.data.CTRData, e.g. --data "
                            f"synthetic-ctr, criteo-sample), got {type(data).__name__}")
        model_kwargs(model_name, config)
        self.model_name, self.config, self.table_sizes = model_name, dict(config), list(data.table_sizes)
        self.num_dense = int(data.dense.shape[1])
        self.splits = dict(zip(("train", "valid", "test"),
                               data.split(tuple(config.get("split", (0.8, 0.1, 0.1))), int(config.get("seed", 0)))))

    # --- Task protocol -------------------------------------------------------------------------------------
    def build_model(self, config: dict) -> DLRM:
        kwargs = model_kwargs(self.model_name, config)
        kwargs["num_dense"] = self.num_dense
        return MODEL_CLASSES[self.model_name](self.table_sizes, seed=int(config.get("seed", 0)), **kwargs)

    def num_train_batches(self) -> int:
        n = -(-len(self.splits["train"]) // int(self.config["batch_size"]))
        limit = int(self.config.get("max_batches_per_epoch", 0))
        return min(n, limit) if limit else n

    def train_batches(self, epoch: int, device) -> Iterator[CTRBatch]:
        train, bs = self.splits["train"], int(self.config["batch_size"])
        order = np.random.default_rng([int(self.config.get("seed", 0)), epoch]).permutation(len(train))
        for n in range(self.num_train_batches()):
            rows = order[n * bs:(n + 1) * bs]
            batch = CTRBatch(_tensor(train.dense[rows]), _tensor(train.sparse[rows]), _tensor(train.labels[rows]))
            yield batch.to(device)

    def loss(self, model: DLRM, batch: CTRBatch) -> torch.Tensor:
        return model.loss(model(batch.dense, batch.ids), batch.labels)

    def batch_size_of(self, batch: CTRBatch) -> int:
        return int(batch.labels.shape[0])

    def make_optimizers(self, model: DLRM, config: dict) -> list[torch.optim.Optimizer]:
        lr = float(config.get("lr", 1e-3))
        dense = model.dense_parameters()
        opts: list[torch.optim.Optimizer] = [torch.optim.SGD(dense, lr=lr) if config.get("optimizer") == "sgd"
                                             else torch.optim.Adam(dense, lr=lr)]
        if isinstance(model, DQRM):  # QAT tables with sparse gradients; DLRM's fused tables step in backward
            opts.append(model.make_sparse_optimizer())
        return opts

    @torch.no_grad()
    def evaluate(self, model: DLRM, split: str, device) -> dict[str, float]:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        data = self.splits[split]
        probs = torch.sigmoid(self.predict(model, data, device)).double()
        out = {"AUC": auc(data.labels, probs), "LogLoss": log_loss(data.labels, probs)}
        if data.planted_probs is not None:
            out["planted_AUC"] = auc(data.labels, data.planted_probs)
            out["planted_LogLoss"] = log_loss(data.labels, data.planted_probs)
        return out

    # --- helpers -------------------------------------------------------------------------------------------
    def predict(self, model: DLRM, data: CTRData, device) -> torch.Tensor:
        """(N,) float32 CPU logits of ``data``'s rows, in eval mode."""
        was_training = model.training
        model.eval()
        bs, out = int(self.config.get("eval_batch_size", 16384)), []
        try:
            for start in range(0, len(data), bs):
                b = CTRBatch(_tensor(data.dense[start:start + bs]), _tensor(data.sparse[start:start + bs]),
                             _tensor(data.labels[start:start + bs])).to(device)
                out.append(model(b.dense, b.ids).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


def _factory(model_name: str):
    def make(data, config: dict) -> CTRTask:
        return CTRTask(model_name, data, config)
    return make


for _name in MODEL_CLASSES:
    registry.register(_name, _factory(_name), CONFIGS[_name], default_config=f"{_name}-synthetic")
