"""TALLRec (Bao et al., RecSys 2023): LoRA instruction tuning of an LLM to answer "Yes"/"No" to
"will the user like this item?", given the titles the user liked and disliked.

    one stage: "lora"   LoRA adapters on the attention projections, answer-token LM loss
    metric: AUC (and UAUC) of P(Yes) = softmax over the " Yes"/" No" logits, on the CoLLM ML-1M split
"""

from __future__ import annotations

import torch

from .backbone import Backbone, LoraSettings
from .ctr import CTRRecommender
from .data import CoLLMData
from .trainer import DistContext, Stage

__all__ = ["TALLRec", "DEFAULTS", "build", "stages", "evaluate"]

DATA = "collm"
DEFAULTS = dict(max_history=10, batch_size=16, eval_batch_size=64, lr=3e-4, epochs=1.0, max_steps=None,
                lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_targets=["q_proj", "v_proj"], seed=0)


def lora_settings(config: dict) -> LoraSettings:
    return LoraSettings(r=int(config["lora_r"]), alpha=int(config["lora_alpha"]),
                        dropout=float(config["lora_dropout"]), targets=tuple(config["lora_targets"]))


class TALLRec(CTRRecommender):
    """CTRRecommender with LoRA adapters on the backbone and a text-only prompt."""

    def __init__(self, backbone: Backbone, titles: list[str], *, max_history: int = 10,
                 lora: LoraSettings | None = None):
        super().__init__(backbone, titles, max_history=max_history)
        if backbone.lora is None:
            backbone.add_lora(lora or LoraSettings())


def build(backbone: Backbone, data: CoLLMData, config: dict, device: torch.device, ctx: DistContext | None = None,
          *, pretrain: bool = True) -> TALLRec:
    return TALLRec(backbone, data.titles, max_history=int(config["max_history"]), lora=lora_settings(config)).to(device)


def stages(model: TALLRec, data: CoLLMData, config: dict) -> list[Stage]:
    train = data.splits["train"]
    return [Stage("lora", lambda m: m.backbone.lora_parameters(),
                  lambda idx, progress: model.make_batch(train, idx, answers=True), len(train),
                  batch_size=int(config["batch_size"]), epochs=float(config["epochs"]), max_steps=config["max_steps"],
                  lr=float(config["lr"]), seed=int(config["seed"]))]


def evaluate(model: TALLRec, data: CoLLMData, split: str, config: dict, device: torch.device,
             ctx: DistContext | None = None) -> dict[str, float]:
    return model.evaluate(data.splits[split], device, batch_size=int(config["eval_batch_size"]), ctx=ctx)
