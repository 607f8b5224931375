"""CoLLM (Zhang et al. 2023): TALLRec's prompt plus a user token and an item token whose input embeddings
are collaborative embeddings (this package's PMF or SASRec) mapped by an MLP into the LLM's token space.

    stage "cf"      pretrain the collaborative model on the training clicks, then freeze it
    stage "lora"    LoRA on the text-only prompt (the collaborative tokens left out), as TALLRec
    stage "mapper"  the full prompt; only the mapper trains (LoRA and the collaborative model frozen)
    metrics: AUC and UAUC of P(Yes) on the CoLLM ML-1M split
"""

from __future__ import annotations

import numpy as np
import torch

from .backbone import Backbone, LoraSettings
from .base import MLPProjector
from .collab import CollaborativeEncoder, PMFEncoder, SASRecEncoder, train_pmf, train_sasrec
from .ctr import CTRRecommender
from .data import CoLLMData, CTRRows
from .prompts import PromptBatch
from .tallrec import DEFAULTS as TALLREC_DEFAULTS, lora_settings
from .trainer import DistContext, Stage, broadcast_module

__all__ = ["CoLLM", "DEFAULTS", "build", "stages", "evaluate", "liked_sequences"]

DATA = "collm"
DEFAULTS = dict(TALLREC_DEFAULTS, cf="pmf", cf_dim=64, cf_epochs=20, cf_lr=0.05, cf_batch_size=1024,
                mapper_lr=1e-3, mapper_epochs=1.0, mapper_max_steps=None)


class CoLLM(CTRRecommender):
    """CTRRecommender whose prompt carries Slot("user") and Slot("item"), filled by mapper(cf vectors)."""

    soft_kinds = ("user", "item")
    uses_slots = True

    def __init__(self, backbone: Backbone, titles: list[str], cf: CollaborativeEncoder, *, max_history: int = 10,
                 lora: LoraSettings | None = None):
        super().__init__(backbone, titles, max_history=max_history)
        if backbone.lora is None:
            backbone.add_lora(lora or LoraSettings())
        self.cf = cf
        self.mapper = MLPProjector(cf.dim, backbone.hidden_size)

    def soft_vectors(self, kind: str, refs: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        if kind == "item":
            vec = self.cf.item_vectors(refs)
        elif kind == "user":
            rows = refs.cpu().numpy()
            users = torch.as_tensor(batch.extra["users"][rows], device=refs.device)
            vec = self.cf.user_vectors(users, [batch.extra["liked"][r] for r in rows])
        else:
            return super().soft_vectors(kind, refs, batch)
        return self.mapper(vec.float())


def liked_sequences(rows: CTRRows) -> list[np.ndarray]:
    """Each user's clicked items in time order (SASRec's training sequences)."""
    order = np.lexsort((rows.timestamps, rows.users))
    order = order[rows.labels[order] == 1]
    bounds = np.flatnonzero(np.diff(rows.users[order])) + 1
    return [rows.items[g] for g in np.split(order, bounds) if len(g) >= 2]


def pretrain_cf(data: CoLLMData, config: dict, device: torch.device, *, pretrain: bool = True) -> CollaborativeEncoder:
    """The collaborative model of ``config["cf"]``, trained on the training rows (untrained shell when
    ``pretrain`` is False: a checkpoint is about to fill it)."""
    train = data.cf_train if data.cf_train is not None else data.splits["train"]
    kind, dim, seed = config["cf"], int(config["cf_dim"]), int(config["seed"])
    epochs = int(config["cf_epochs"]) if pretrain else 0
    if kind == "pmf":
        return PMFEncoder(train_pmf(train.users, train.items, train.labels, data.num_users, data.num_items, dim=dim,
                                    epochs=epochs, batch_size=int(config["cf_batch_size"]),
                                    lr=float(config["cf_lr"]), seed=seed, device=device))
    if kind == "sasrec":
        seqs = liked_sequences(train)
        return SASRecEncoder(train_sasrec(seqs, data.num_items - 1, dim=dim, epochs=epochs, seed=seed, device=device))
    raise ValueError(f"cf must be 'pmf' or 'sasrec', got {kind!r}")


def build(backbone: Backbone, data: CoLLMData, config: dict, device: torch.device, ctx: DistContext | None = None,
          *, pretrain: bool = True) -> CoLLM:
    cf = pretrain_cf(data, config, device, pretrain=pretrain)
    if ctx is not None:
        broadcast_module(cf, ctx)
    return CoLLM(backbone, data.titles, cf, max_history=int(config["max_history"]), lora=lora_settings(config)).to(device)


def stages(model: CoLLM, data: CoLLMData, config: dict) -> list[Stage]:
    train = data.splits["train"]
    common = dict(batch_size=int(config["batch_size"]), seed=int(config["seed"]))
    return [
        Stage("lora", lambda m: m.backbone.lora_parameters(),
              lambda idx, progress: model.make_batch(train, idx, answers=True, with_slots=False), len(train),
              epochs=float(config["epochs"]), max_steps=config["max_steps"], lr=float(config["lr"]), **common),
        Stage("mapper", lambda m: list(m.mapper.parameters()),
              lambda idx, progress: model.make_batch(train, idx, answers=True, with_slots=True), len(train),
              epochs=float(config["mapper_epochs"]), max_steps=config["mapper_max_steps"],
              lr=float(config["mapper_lr"]), **common),
    ]


def evaluate(model: CoLLM, data: CoLLMData, split: str, config: dict, device: torch.device,
             ctx: DistContext | None = None) -> dict[str, float]:
    return model.evaluate(data.splits[split], device, batch_size=int(config["eval_batch_size"]), ctx=ctx)
