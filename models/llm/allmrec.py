"""A-LLMRec (Kim et al., KDD 2024): a frozen LLM reads a frozen SASRec's knowledge through two projectors.

    stage "cf"         pretrain SASRec on the users' training sequences, then freeze it
    stage "align"      two autoencoders map SASRec item embeddings e_i and sentence embeddings q_i of the
                       titles to a shared latent space:  L = L_match + alpha (L_rec_item + L_rec_text) + beta L_rec
                         L_match    = |enc_I(e) - enc_T(q)|²            (both items of a training pair)
                         L_rec_*    = |dec(enc(x)) - x|²
                         L_rec      = BCE(u · dec_I(enc_I(e⁺)), 1) + BCE(u · dec_I(enc_I(e⁻)), 0), u = SASRec(user)
    stage "projector"  prompt = [user token] + titles each followed by its item token; user token =
                       P_U(SASRec user vector), item token = P_I(enc_I(e_i)); only P_U and P_I train
    metric: HitRatio@1 of the generated title over 20 candidates (MovieLens-100K)

The sentence encoder is frozen and its title embeddings are computed once (data.encode_texts with
all-MiniLM-L6-v2, or any (num_items + 1, D) array): the paper fine-tunes SBERT in the alignment stage, which
we leave out so the encoder never has to be on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .base import MLPProjector
from .choice import ChoiceRecommender, titled_items
from .collab import SASRecEncoder
from .data import CandidateData, ChoiceRows
from .llara import pretrain_sasrec
from .prompts import PromptBatch, Segments, Slot
from .trainer import DistContext, Stage, broadcast_module

__all__ = ["ALLMRec", "AlignBatch", "DEFAULTS", "build", "stages", "evaluate"]

DATA = "ml-100k"
DEFAULTS = dict(max_history=10, latent_dim=128, alpha=0.5, beta=0.2, align_batch_size=128, align_lr=1e-3,
                align_epochs=10.0, align_max_steps=None, batch_size=8, eval_batch_size=32, lr=1e-3, epochs=1.0,
                max_steps=None, cf_dim=64, cf_epochs=30, seed=0)


@dataclass
class AlignBatch:
    """histories: b item histories (host); positives/negatives (b,) int64 item ids."""

    histories: list
    positives: torch.Tensor
    negatives: torch.Tensor

    def to(self, device) -> AlignBatch:
        return AlignBatch(self.histories, self.positives.to(device), self.negatives.to(device))


def allmrec_prompt(titles: list[str], history, candidates, user: int) -> Segments:
    return ([Slot("user", user), " is a user representation. This user has watched "]
            + titled_items(titles, history, slots=True)
            + [" in the past. Recommend the movie this user will watch next from these candidates: "]
            + titled_items(titles, candidates, slots=True)
            + [". Answer with exactly one title from the candidates.\nAnswer:"])


class ALLMRec(ChoiceRecommender):
    soft_kinds = ("user", "item")

    def __init__(self, backbone: Backbone, titles: list[str], sasrec: SASRecEncoder, text_embeddings: torch.Tensor, *,
                 latent_dim: int = 128, alpha: float = 0.5, beta: float = 0.2, max_history: int = 10):
        super().__init__(backbone, titles, max_history=max_history)
        if text_embeddings.shape[0] != len(titles):
            raise ValueError(f"text_embeddings has {text_embeddings.shape[0]} rows for {len(titles)} titles")
        self.cf = sasrec
        self.register_buffer("text", text_embeddings.float())
        d, t, h = sasrec.dim, text_embeddings.shape[1], backbone.hidden_size
        self.item_enc, self.item_dec = MLPProjector(d, latent_dim, 2 * latent_dim), MLPProjector(latent_dim, d, 2 * latent_dim)
        self.text_enc, self.text_dec = MLPProjector(t, latent_dim, 2 * latent_dim), MLPProjector(latent_dim, t, 2 * latent_dim)
        self.user_proj, self.item_proj = MLPProjector(d, h), MLPProjector(latent_dim, h)
        self.alpha, self.beta = alpha, beta

    # -- stage "align" -----------------------------------------------------------------------------------------
    def alignment_losses(self, batch: AlignBatch) -> dict[str, torch.Tensor]:
        items = torch.cat([batch.positives, batch.negatives])
        e = self.cf.item_vectors(items).float()
        q = self.text.index_select(0, items)
        z_i, z_t = self.item_enc(e), self.text_enc(q)
        e_hat = self.item_dec(z_i)
        users = torch.zeros(len(batch.histories), dtype=torch.int64, device=items.device)
        u = self.cf.user_vectors(users, batch.histories).float()
        b = len(batch.histories)
        logits = (u.repeat(2, 1) * e_hat).sum(-1)
        target = torch.cat([torch.ones(b), torch.zeros(b)]).to(logits)
        return {"match": F.mse_loss(z_i, z_t), "rec_item": F.mse_loss(e_hat, e),
                "rec_text": F.mse_loss(self.text_dec(z_t), q),
                "rec": F.binary_cross_entropy_with_logits(logits, target)}

    def forward(self, batch):
        if isinstance(batch, AlignBatch):
            parts = self.alignment_losses(batch)
            return parts["match"] + self.alpha * (parts["rec_item"] + parts["rec_text"]) + self.beta * parts["rec"]
        return super().forward(batch)

    # -- stage "projector" -------------------------------------------------------------------------------------
    def prompt(self, rows: ChoiceRows, n: int, b: int, hybrid: bool = True) -> Segments:
        return allmrec_prompt(self.titles, rows.histories[n][-self.max_history:], rows.candidates[n], b)

    def soft_vectors(self, kind: str, refs: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        if kind == "item":
            return self.item_proj(self.item_enc(self.cf.item_vectors(refs).float()))
        if kind == "user":
            rows = refs.cpu().numpy()
            users = torch.as_tensor(batch.extra["users"][rows], device=refs.device)
            return self.user_proj(self.cf.user_vectors(users, [batch.extra["histories"][r] for r in rows]).float())
        return super().soft_vectors(kind, refs, batch)


def align_batch(rows: ChoiceRows, idx: np.ndarray) -> AlignBatch:
    """(history, target, a non-target candidate) for each example: the candidates are items never rated."""
    negs = np.array([next(c for c in rows.candidates[n] if c != rows.targets[n]) for n in idx], dtype=np.int64)
    return AlignBatch([rows.histories[n] for n in idx], torch.from_numpy(rows.targets[idx].copy()), torch.from_numpy(negs))


def build(backbone: Backbone, data: CandidateData, config: dict, device: torch.device, ctx: DistContext | None = None,
          *, pretrain: bool = True, text_embeddings: np.ndarray | torch.Tensor | None = None) -> ALLMRec:
    if text_embeddings is None:
        raise ValueError("A-LLMRec needs title embeddings: (num_items + 1, D) from data.encode_texts")
    cf = pretrain_sasrec(data, config, device, pretrain=pretrain)
    if ctx is not None:
        broadcast_module(cf, ctx)
    return ALLMRec(backbone, data.titles, cf, torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32)),
                   latent_dim=int(config["latent_dim"]), alpha=float(config["alpha"]), beta=float(config["beta"]),
                   max_history=int(config["max_history"])).to(device)


def stages(model: ALLMRec, data: CandidateData, config: dict) -> list[Stage]:
    train, seed = data.splits["train"], int(config["seed"])
    align_params = lambda m: [p for mod in (m.item_enc, m.item_dec, m.text_enc, m.text_dec) for p in mod.parameters()]  # noqa: E731
    return [
        Stage("align", align_params, lambda idx, progress: align_batch(train, idx), len(train),
              batch_size=int(config["align_batch_size"]), epochs=float(config["align_epochs"]),
              max_steps=config["align_max_steps"], lr=float(config["align_lr"]), seed=seed),
        Stage("projector", lambda m: list(m.user_proj.parameters()) + list(m.item_proj.parameters()),
              lambda idx, progress: model.make_batch(train, idx, answers=True, hybrid=True), len(train),
              batch_size=int(config["batch_size"]), epochs=float(config["epochs"]), max_steps=config["max_steps"],
              lr=float(config["lr"]), seed=seed),
    ]


def evaluate(model: ALLMRec, data: CandidateData, split: str, config: dict, device: torch.device,
             ctx: DistContext | None = None, keep_answers: int = 0) -> dict[str, float]:
    return model.evaluate(data.splits[split], device, hybrid=True, batch_size=int(config["eval_batch_size"]), ctx=ctx,
                          keep_answers=keep_answers)
