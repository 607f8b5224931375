"""LLaRA (Liao et al., SIGIR 2024): pick the next movie from 20 candidates, each item in the prompt written
as its title followed by one token projected from its SASRec embedding (the hybrid prompt).

    stage "cf"          pretrain SASRec on the users' training sequences, then freeze it
    stage "curriculum"  LoRA + projector; a training prompt is hybrid with probability = training progress
                        (0 -> 1), so the model first learns the task from text alone, then from both
    mode "text": text-only prompts throughout and no projector (the comparison the paper makes)
    metrics: HitRatio@1 and ValidRatio of the generated title over 20 candidates (MovieLens-100K)
"""

from __future__ import annotations

import numpy as np
import torch

from .backbone import Backbone, LoraSettings
from .base import MLPProjector
from .choice import ChoiceRecommender, titled_items
from .collab import SASRecEncoder, train_sasrec
from .data import CandidateData, ChoiceRows
from .prompts import PromptBatch, Segments
from .tallrec import lora_settings
from .trainer import DistContext, Stage, broadcast_module

__all__ = ["LLaRA", "DEFAULTS", "build", "stages", "evaluate", "pretrain_sasrec"]

DATA = "ml-100k"
MODES = ("hybrid", "text")
DEFAULTS = dict(mode="hybrid", max_history=10, batch_size=8, eval_batch_size=32, lr=3e-4, epochs=1.0,
                max_steps=None, lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_targets=["q_proj", "v_proj"],
                cf_dim=64, cf_epochs=30, seed=0)


def llara_prompt(titles: list[str], history, candidates, *, hybrid: bool) -> Segments:
    return (["This user has watched "] + titled_items(titles, history, slots=hybrid)
            + [" in the past. Predict the movie the user will watch next. The candidates are: "]
            + titled_items(titles, candidates, slots=hybrid)
            + [". Answer with exactly one title from the candidates.\nAnswer:"])


class LLaRA(ChoiceRecommender):
    soft_kinds = ("item",)

    def __init__(self, backbone: Backbone, titles: list[str], sasrec: SASRecEncoder, *, mode: str = "hybrid",
                 max_history: int = 10, lora: LoraSettings | None = None):
        super().__init__(backbone, titles, max_history=max_history)
        if mode not in MODES:
            raise ValueError(f"LLaRA mode must be one of {MODES}, got {mode!r}")
        if backbone.lora is None:
            backbone.add_lora(lora or LoraSettings())
        self.mode = mode
        self.cf = sasrec
        self.projector = MLPProjector(sasrec.dim, backbone.hidden_size)

    def prompt(self, rows: ChoiceRows, n: int, b: int, hybrid: bool) -> Segments:
        return llara_prompt(self.titles, rows.histories[n][-self.max_history:], rows.candidates[n],
                            hybrid=hybrid and self.mode == "hybrid")

    def soft_vectors(self, kind: str, refs: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        if kind != "item":
            return super().soft_vectors(kind, refs, batch)
        return self.projector(self.cf.item_vectors(refs).float())

    def trainable(self) -> list[torch.nn.Parameter]:
        extra = list(self.projector.parameters()) if self.mode == "hybrid" else []
        return self.backbone.lora_parameters() + extra


def pretrain_sasrec(data: CandidateData, config: dict, device: torch.device, *, pretrain: bool = True) -> SASRecEncoder:
    epochs = int(config["cf_epochs"]) if pretrain else 0
    return SASRecEncoder(train_sasrec(data.train_sequences, data.num_items, dim=int(config["cf_dim"]), epochs=epochs,
                                      seed=int(config["seed"]), device=device))


def build(backbone: Backbone, data: CandidateData, config: dict, device: torch.device, ctx: DistContext | None = None,
          *, pretrain: bool = True) -> LLaRA:
    cf = pretrain_sasrec(data, config, device, pretrain=pretrain)
    if ctx is not None:
        broadcast_module(cf, ctx)
    return LLaRA(backbone, data.titles, cf, mode=config["mode"], max_history=int(config["max_history"]),
                 lora=lora_settings(config)).to(device)


def stages(model: LLaRA, data: CandidateData, config: dict) -> list[Stage]:
    train, seed = data.splits["train"], int(config["seed"])

    def batch(idx: np.ndarray, progress: float) -> PromptBatch:
        # The curriculum: each prompt is hybrid with probability ``progress`` (seeded by the examples).
        rng = np.random.default_rng([seed, int(progress * 1e6), *idx[:4].tolist()])
        return model.make_batch(train, idx, answers=True, hybrid=rng.random(len(idx)) < progress)

    return [Stage("curriculum", lambda m: m.trainable(), batch, len(train), batch_size=int(config["batch_size"]),
                  epochs=float(config["epochs"]), max_steps=config["max_steps"], lr=float(config["lr"]), seed=seed)]


def evaluate(model: LLaRA, data: CandidateData, split: str, config: dict, device: torch.device,
             ctx: DistContext | None = None, keep_answers: int = 0) -> dict[str, float]:
    return model.evaluate(data.splits[split], device, hybrid=model.mode == "hybrid",
                          batch_size=int(config["eval_batch_size"]), ctx=ctx, keep_answers=keep_answers)
