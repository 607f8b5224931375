"""Click prediction as a Yes/No question (TALLRec, CoLLM): the prompt, the batch, P(Yes), AUC/UAUC.

The score is softmax over the two next-token logits of " Yes" and " No" after "Answer:" (TALLRec's
scoring); training is the language-model loss of the one answer token.
"""

from __future__ import annotations

import numpy as np
import torch

from .backbone import Backbone
from .base import LLMRecommender
from .data import CTRRows
from .evaluate import evaluate_ctr
from .prompts import PromptBatch, PromptEncoder, Segments, Slot, quote_titles
from .trainer import DistContext

__all__ = ["CTRRecommender", "ctr_prompt"]


def ctr_prompt(liked: list[str], disliked: list[str], target: str, *, user_slot: Slot | None = None,
               item_slot: Slot | None = None) -> Segments:
    """The instruction; with slots, the collaborative user/item tokens follow their descriptions (CoLLM)."""
    segs: list = ["You recommend movies. Decide whether the user will enjoy the target movie.\n",
                  f"Movies the user liked: {quote_titles(liked) or 'none'}.\n",
                  f"Movies the user disliked: {quote_titles(disliked) or 'none'}.\n"]
    if user_slot is not None:
        segs += ["The user's collaborative feature:", user_slot, ".\n"]
    segs.append(f'Target movie: "{target}"')
    if item_slot is not None:
        segs += [" with collaborative feature:", item_slot]
    segs.append(".\nWill the user enjoy the target movie? Answer Yes or No.\nAnswer:")
    return segs


class CTRRecommender(LLMRecommender):
    """A Yes/No recommender over ``titles`` (item id -> title) reading at most ``max_history`` liked and
    disliked titles (the most recent)."""

    uses_slots = False

    def __init__(self, backbone: Backbone, titles: list[str], *, max_history: int = 10, max_prompt_tokens: int = 1024):
        super().__init__(backbone)
        self.titles = titles
        self.max_history = max_history
        self.encoder = PromptEncoder(backbone.tokenizer, max_prompt_tokens=max_prompt_tokens)
        self.yes_id = backbone.single_token(" Yes")
        self.no_id = backbone.single_token(" No")
        if self.yes_id == self.no_id:
            raise ValueError("the tokenizer gives ' Yes' and ' No' the same first token")

    def prompt(self, rows: CTRRows, n: int, b: int, with_slots: bool) -> Segments:
        liked = [self.titles[i] for i in rows.liked[n][-self.max_history:]]
        disliked = [self.titles[i] for i in rows.disliked[n][-self.max_history:]]
        user = item = None
        if with_slots:
            user = Slot("user", b)  # the batch row: the encoder reads the user id or history from ``extra``
            item = Slot("item", int(rows.items[n]))
        return ctr_prompt(liked, disliked, self.titles[rows.items[n]], user_slot=user, item_slot=item)

    def make_batch(self, rows: CTRRows, idx: np.ndarray, *, answers: bool, with_slots: bool | None = None) -> PromptBatch:
        with_slots = self.uses_slots if with_slots is None else with_slots
        prompts = [self.prompt(rows, int(n), b, with_slots) for b, n in enumerate(idx)]
        ans = [[self.yes_id if rows.labels[n] else self.no_id] for n in idx] if answers else None
        extra = {"users": rows.users[idx], "liked": [rows.liked[n] for n in idx]}
        return self.encoder.collate(prompts, ans, extra)

    @torch.no_grad()
    def yes_probability(self, batch: PromptBatch) -> torch.Tensor:
        """(B,) float32 P(Yes) = softmax over the " Yes" / " No" logits."""
        logits = self.next_token_logits(batch)
        pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=-1)
        return pair.softmax(-1)[:, 1]

    def evaluate(self, rows: CTRRows, device: torch.device, *, batch_size: int = 32,
                 ctx: DistContext | None = None) -> dict[str, float]:
        self.eval()
        return evaluate_ctr(self.yes_probability, lambda idx: self.make_batch(rows, idx, answers=False),
                            rows.users, rows.labels, device, batch_size=batch_size, ctx=ctx)
