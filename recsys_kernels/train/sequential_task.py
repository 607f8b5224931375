"""The next-item task for SASRec, BERT4Rec, GRU4Rec and HSTU (registered here as "sasrec", "bert4rec",
"gru4rec", "hstu").

Protocol (ICLRec / SASRec leave-one-out): per user, the last item is the test target, the second to last the
validation target, and training sees the rest; evaluation ranks the target against every item except the
items of the user's input sequence (the target itself is never excluded) — full ranking, no sampled
negatives — and reports HR@K, NDCG@K (K = 5, 10, 20) and MRR. Causal models train on every next-item pair
of the training sequence; BERT4Rec on masked items of it.
"""

from __future__ import annotations

import inspect
from typing import Iterator

import numpy as np
import torch

from recsys_kernels.data import Sequences
from recsys_kernels.metrics import rank_of_targets, ranking_metrics
from recsys_kernels.models import BERT4Rec, GRU4Rec, HSTU, SASRec
from recsys_kernels.models.sequence_common import SequenceBatch, SequentialModel
from recsys_kernels.optim import RowWiseAdagrad
from recsys_kernels.train import registry
from recsys_kernels.train.sequence_batches import causal_batch, cloze_batch, eval_batch
from recsys_kernels.train.sequential_configs import CONFIGS, DEFAULTS

__all__ = ["MODEL_CLASSES", "SequentialTask", "popularity_metrics"]

MODEL_CLASSES: dict[str, type[SequentialModel]] = {"sasrec": SASRec, "bert4rec": BERT4Rec, "gru4rec": GRU4Rec,
                                                   "hstu": HSTU}
TASK_KEYS = frozenset({"model", "epochs", "batch_size", "eval_batch_size", "lr", "weight_decay", "betas", "seed",
                       "item_optimizer", "item_lr", "pad_to_max_len", "max_batches_per_epoch", "patience",
                       "data_args", "mask_prob", "last_mask_prob", "compile", "amp"})
ITEM_OPTIMIZERS = ("adam", "rowwise_adagrad")
KS = (5, 10, 20)


def model_kwargs(model_name: str, config: dict) -> dict:
    """The config entries that are keyword arguments of the model class; unknown keys raise (typos)."""
    cls = MODEL_CLASSES[model_name]
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "num_items"}
    unknown = set(config) - params - TASK_KEYS
    if unknown:
        raise ValueError(f"unknown config keys for {model_name}: {sorted(unknown)} (model arguments: "
                         f"{sorted(params - {'sparse_items'})}; task/trainer keys: {sorted(TASK_KEYS)})")
    if config.get("item_optimizer", "adam") not in ITEM_OPTIMIZERS:
        raise ValueError(f"item_optimizer must be one of {ITEM_OPTIMIZERS}, got {config['item_optimizer']!r}")
    kwargs = {k: v for k, v in config.items() if k in params}
    kwargs["sparse_items"] = config.get("item_optimizer", "adam") == "rowwise_adagrad"
    return kwargs


class SequentialTask:
    """Task (recsys_kernels.train.task.Task) of next-item prediction on ``data`` with model ``model_name``."""

    name = "next-item"
    primary_metric = "NDCG@10"
    higher_is_better = True

    def __init__(self, model_name: str, data: Sequences, config: dict):
        if model_name not in MODEL_CLASSES:
            raise ValueError(f"unknown sequential model {model_name!r}; known: {sorted(MODEL_CLASSES)}")
        if not isinstance(data, Sequences):
            raise TypeError(f"{model_name} trains on item sequences (recsys_kernels.data.Sequences, e.g. --data "
                            f"synthetic-seq, beauty, ml-100k-seq), got {type(data).__name__}")
        model_kwargs(model_name, config)  # fail early on a bad config
        self.model_name, self.config, self.num_items = model_name, dict(config), data.num_items
        self.splits = dict(zip(("train", "valid", "test"), data.leave_one_out()))
        train = self.splits["train"]
        # a training sequence is the training inputs followed by their target
        full = [np.append(x, t) for x, t in zip(train.inputs, train.targets)]
        has_ts = train.input_timestamps is not None
        full_ts = [np.append(x, t) for x, t in zip(train.input_timestamps, train.target_timestamps)] if has_ts else None
        keep = [i for i, s in enumerate(full) if len(s) >= 2]
        self.train_sequences = [full[i] for i in keep]
        self.train_timestamps = [full_ts[i] for i in keep] if has_ts else None
        if not self.train_sequences:
            raise ValueError("no training sequence has two items or more")
        self.item_counts = np.bincount(np.concatenate(full), minlength=data.num_items + 1).astype(np.float64)

    # --- Task protocol -------------------------------------------------------------------------------------
    def build_model(self, config: dict) -> SequentialModel:
        torch.manual_seed(int(config.get("seed", 0)))
        return MODEL_CLASSES[self.model_name](self.num_items, **model_kwargs(self.model_name, config))

    def train_batches(self, epoch: int, device) -> Iterator[SequenceBatch]:
        cfg = self.config
        rng = np.random.default_rng([int(cfg.get("seed", 0)), epoch])
        order = rng.permutation(len(self.train_sequences))
        bs, max_len, pad = int(cfg["batch_size"]), int(cfg["max_len"]), bool(cfg.get("pad_to_max_len", False))
        limit = int(cfg.get("max_batches_per_epoch", 0)) or None
        cloze = MODEL_CLASSES[self.model_name].objective == "cloze"
        for n, start in enumerate(range(0, len(order), bs)):
            if limit is not None and n >= limit:
                return
            rows = order[start:start + bs]
            seqs = [self.train_sequences[i] for i in rows]
            ts = [self.train_timestamps[i] for i in rows] if self.train_timestamps is not None else None
            if cloze:
                batch = cloze_batch(seqs, ts, max_len, rng, self.num_items + 1, float(cfg["mask_prob"]),
                                    float(cfg.get("last_mask_prob", 0.1)), pad)
            else:
                batch = causal_batch(seqs, ts, max_len, pad)
            yield batch.to(device)

    def num_train_batches(self) -> int:
        """Batches per epoch (for the progress bar; not part of the Task protocol)."""
        n = -(-len(self.train_sequences) // int(self.config["batch_size"]))
        limit = int(self.config.get("max_batches_per_epoch", 0))
        return min(n, limit) if limit else n

    def loss(self, model: SequentialModel, batch: SequenceBatch) -> torch.Tensor:
        return model.loss(model(batch), batch)

    def batch_size_of(self, batch: SequenceBatch) -> int:
        return batch.batch_size

    def make_optimizers(self, model: SequentialModel, config: dict) -> list[torch.optim.Optimizer]:
        sparse = model.sparse_parameters()
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
        # fused on CUDA and the CPU: one kernel for every parameter instead of a few per foreach group (CUDA, where
        # the HSTU step is bound by the host's launches: benchmarks/RESULTS.md) or per parameter (CPU)
        fused = True if dense and all(p.device.type in ("cuda", "cpu") for p in dense) else None
        opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(dense, lr=float(config["lr"]),
                                                               betas=tuple(config.get("betas", (0.9, 0.999))),
                                                               weight_decay=float(config.get("weight_decay", 0.0)),
                                                               fused=fused)]
        if sparse:
            opts.append(RowWiseAdagrad(sparse, lr=float(config.get("item_lr", 0.05))))
        return opts

    @torch.no_grad()
    def evaluate(self, model: SequentialModel, split: str, device) -> dict[str, float]:
        ranks = self.ranks(lambda batch: model.scores(model(batch).index_select(0, batch.last)), split, device,
                           mask_token=model.mask_token, model=model)
        return ranking_metrics(ranks, KS)

    # --- helpers -------------------------------------------------------------------------------------------
    def ranks(self, score_fn, split: str, device, mask_token: int | None = None,
              model: torch.nn.Module | None = None) -> torch.Tensor:
        """(U,) 0-based target ranks of ``split`` under ``score_fn(batch) -> (B, num_items + 1)``."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        data = self.splits[split]
        if len(data) == 0:
            raise ValueError(f"the {split} split is empty: sequences need three items or more")
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        bs, max_len = int(self.config.get("eval_batch_size", 256)), int(self.config["max_len"])
        pad = bool(self.config.get("pad_to_max_len", False))
        out = []
        try:
            for start in range(0, len(data), bs):
                stop = min(start + bs, len(data))
                histories = data.inputs[start:stop]
                ts = data.input_timestamps[start:stop] if data.input_timestamps is not None else None
                batch = eval_batch(histories, ts, max_len, mask_token, pad).to(device)
                scores = score_fn(batch).float()
                targets = torch.from_numpy(data.targets[start:stop]).to(scores.device)
                out.append(rank_of_targets(scores, targets, exclude=list(histories)).cpu())
        finally:
            if model is not None:
                model.train(was_training)
        return torch.cat(out)

    def popularity_scores(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, num_items + 1) training-set item counts for every user (the popularity baseline)."""
        counts = torch.from_numpy(self.item_counts).float().to(batch.items.device)
        return counts.view(1, -1).expand(batch.batch_size, -1)


def popularity_metrics(task: SequentialTask, split: str = "test") -> dict[str, float]:
    """HR@K / NDCG@K / MRR of ranking by training-set popularity, under the task's protocol."""
    return ranking_metrics(task.ranks(task.popularity_scores, split, "cpu"), KS)


def _factory(model_name: str):
    def make(data, config: dict) -> SequentialTask:
        return SequentialTask(model_name, data, config)
    return make


for _name in MODEL_CLASSES:
    registry.register(_name, _factory(_name), CONFIGS[_name], default_config=DEFAULTS[_name])
