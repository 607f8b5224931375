"""Prompts with soft tokens: text pieces and ``Slot`` placeholders, tokenised and padded into a batch.

A prompt is a list of segments, ``str`` or ``Slot(kind, ref)``. Text is tokenised piece by piece (each piece
once, cached: titles repeat across thousands of prompts); a slot becomes one position holding the pad id,
whose input embedding the model overwrites with a vector it computes from ``ref`` (a user's collaborative
embedding, an item's projected SASRec embedding, ...). The batch records, per slot kind, the flat positions
(row * T + column) and the refs, so the splice is one ``index_copy`` with no data-dependent shape on the
device.

Rows are left-padded so that the answer, or the position whose next token is scored, ends every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["Slot", "Segments", "PromptBatch", "PromptEncoder", "quote_titles"]


@dataclass(frozen=True)
class Slot:
    """One soft-token position: ``kind`` names the model's embedding source, ``ref`` the row it reads."""

    kind: str
    ref: int


Segments = Sequence["str | Slot"]


def quote_titles(titles: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


@dataclass
class PromptBatch:
    """One left-padded batch.

    input_ids:      (B, T) int64; slot positions and padding hold the pad id.
    attention_mask: (B, T) int64, 0 on the left padding.
    position_ids:   (B, T) int64, 0 at each row's first real token (OPT's learned positions need it).
    labels:         (B, A) int64 or None: the answer tokens ending each row, -100 left of a shorter
                    answer; logits at positions T-A-1 .. T-2 predict them.
    slots:          kind -> (flat positions (S,) int64 into B*T, refs (S,) int64).
    extra:          host-side values the evaluators read (labels, users, candidate lists, ...).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    slots: dict[str, tuple[torch.Tensor, torch.Tensor]]
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> PromptBatch:
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PromptBatch(mv(self.input_ids), mv(self.attention_mask), mv(self.position_ids),
                           mv(self.labels) if self.labels is not None else None,
                           {k: (mv(p), mv(r)) for k, (p, r) in self.slots.items()}, self.extra)


class PromptEncoder:
    """Tokenises segment lists with ``tokenizer`` (a fast HF tokenizer) and collates them.

    ``max_prompt_tokens`` cuts prompts from the left (the instruction's opening words go first, never the
    question at the end); ``pad_to_multiple`` rounds T up so a compiled graph (Gaudi) sees few shapes.
    """

    def __init__(self, tokenizer, *, max_prompt_tokens: int = 1024, pad_to_multiple: int = 8):
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.max_prompt_tokens = max_prompt_tokens
        self.pad_to_multiple = max(1, pad_to_multiple)
        self._cache: dict[str, list[int]] = {}

    def text_ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def encode(self, segments: Segments) -> tuple[list[int], list[tuple[int, Slot]]]:
        """(token ids, [(position, slot)]) of one prompt."""
        ids: list[int] = []
        slots: list[tuple[int, Slot]] = []
        for seg in segments:
            if isinstance(seg, Slot):
                slots.append((len(ids), seg))
                ids.append(self.pad_id)
            else:
                ids.extend(self.text_ids(seg))
        cut = len(ids) - self.max_prompt_tokens
        if cut > 0:
            ids = ids[cut:]
            slots = [(p - cut, s) for p, s in slots if p >= cut]
        return ids, slots

    def collate(self, prompts: Sequence[Segments], answers: Sequence[list[int]] | None = None,
                extra: dict | None = None) -> PromptBatch:
        """Left-pad ``prompts`` (each followed by its answer token ids when ``answers`` is given)."""
        encoded = [self.encode(p) for p in prompts]
        answers = list(answers) if answers is not None else [[] for _ in encoded]
        lengths = [len(ids) + len(a) for (ids, _), a in zip(encoded, answers)]
        T = max(lengths)
        T = -(-T // self.pad_to_multiple) * self.pad_to_multiple
        B = len(encoded)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((B, T), dtype=torch.int64)
        slot_pos: dict[str, list[int]] = {}
        slot_ref: dict[str, list[int]] = {}
        for b, ((ids, slots), ans) in enumerate(zip(encoded, answers)):
            start = T - lengths[b]
            row = ids + list(ans)
            input_ids[b, start:] = torch.tensor(row, dtype=torch.int64)
            mask[b, start:] = 1
            for pos, slot in slots:
                slot_pos.setdefault(slot.kind, []).append(b * T + start + pos)
                slot_ref.setdefault(slot.kind, []).append(slot.ref)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        labels = None
        A = max((len(a) for a in answers), default=0)
        if A > 0:
            labels = torch.full((B, A), -100, dtype=torch.int64)
            for b, ans in enumerate(answers):
                if ans:
                    labels[b, A - len(ans):] = torch.tensor(ans, dtype=torch.int64)
        slot_tensors = {k: (torch.tensor(slot_pos[k], dtype=torch.int64), torch.tensor(slot_ref[k], dtype=torch.int64))
                        for k in slot_pos}
        return PromptBatch(input_ids, mask, position_ids, labels, slot_tensors, dict(extra or {}))
