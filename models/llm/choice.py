"""Pick the next item from candidates by generating its title (LLaRA, A-LLMRec).

Training is the language-model loss of " <target title><eos>" after the prompt; evaluation generates
greedily and matches the text to a candidate (evaluate.match_candidate): HitRatio@1 and ValidRatio.
"""

from __future__ import annotations

import numpy as np
import torch

from .backbone import Backbone
from .base import LLMRecommender
from .data import ChoiceRows
from .evaluate import evaluate_choice
from .prompts import PromptBatch, PromptEncoder, Segments, Slot
from .trainer import DistContext

__all__ = ["ChoiceRecommender", "titled_items"]


def titled_items(titles: list[str], ids, *, slots: bool) -> list:
    """'"A" [emb], "B" [emb], ...' as segments; the item's Slot follows its title when ``slots``."""
    segs: list = []
    for k, i in enumerate(ids):
        segs.append(("" if k == 0 else ", ") + f'"{titles[int(i)]}"')
        if slots:
            segs.append(Slot("item", int(i)))
    return segs


class ChoiceRecommender(LLMRecommender):
    """Base of LLaRA and A-LLMRec: subclasses implement ``prompt(rows, n, b, hybrid)``."""

    def __init__(self, backbone: Backbone, titles: list[str], *, max_history: int = 10, max_prompt_tokens: int = 1024):
        super().__init__(backbone)
        self.titles = titles
        self.max_history = max_history
        self.encoder = PromptEncoder(backbone.tokenizer, max_prompt_tokens=max_prompt_tokens)
        self.eos_id = backbone.eos_token_id
        longest = max((len(self.encoder.text_ids(" " + t)) for t in titles if t), default=8)
        self.max_new_tokens = longest + 2

    def prompt(self, rows: ChoiceRows, n: int, b: int, hybrid: bool) -> Segments:
        raise NotImplementedError

    def answer_ids(self, item: int) -> list[int]:
        return self.encoder.text_ids(" " + self.titles[item]) + [self.eos_id]

    def make_batch(self, rows: ChoiceRows, idx: np.ndarray, *, answers: bool, hybrid) -> PromptBatch:
        """``hybrid``: one bool for the batch, or a (b,) bool array (the curriculum mixes prompts)."""
        flags = np.broadcast_to(np.asarray(hybrid, dtype=bool), (len(idx),))
        prompts = [self.prompt(rows, int(n), b, bool(h)) for b, (n, h) in enumerate(zip(idx, flags))]
        ans = [self.answer_ids(int(rows.targets[n])) for n in idx] if answers else None
        extra = {"users": rows.users[idx], "histories": [rows.histories[n] for n in idx]}
        return self.encoder.collate(prompts, ans, extra)

    def evaluate(self, rows: ChoiceRows, device: torch.device, *, hybrid: bool, batch_size: int = 16,
                 ctx: DistContext | None = None, keep_answers: int = 0) -> dict[str, float]:
        self.eval()
        return evaluate_choice(lambda b: self.generate(b, self.max_new_tokens),
                               lambda idx: self.make_batch(rows, idx, answers=False, hybrid=hybrid),
                               rows.candidates, rows.targets, self.titles, device, batch_size=batch_size, ctx=ctx,
                               keep_answers=keep_answers)
