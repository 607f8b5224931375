"""Prompt encoding: slots, left padding, answer labels; candidate matching."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from recsys_kernels.models.llm.evaluate import match_candidate  # noqa: E402
from recsys_kernels.models.llm.prompts import PromptEncoder, Slot  # noqa: E402

from . import tiny  # noqa: E402


def test_yes_no_are_single_tokens():
    tok = tiny.tokenizer()
    assert len(tok(" Yes", add_special_tokens=False).input_ids) == 1
    assert len(tok(" No", add_special_tokens=False).input_ids) == 1


def test_collate_left_pads_and_places_slots_and_answers():
    tok = tiny.tokenizer()
    enc = PromptEncoder(tok, pad_to_multiple=1)
    prompts = [["Movies the user liked:", Slot("item", 7), "."], ["Answer:", Slot("user", 3)]]
    answers = [[5], [6, 9]]
    batch = enc.collate(prompts, answers)
    B, T = batch.input_ids.shape
    lengths = [len(enc.encode(p)[0]) + len(a) for p, a in zip(prompts, answers)]
    assert T == max(lengths)
    for b in range(B):
        assert batch.attention_mask[b].sum() == lengths[b]
        assert batch.attention_mask[b, -1] == 1 and (batch.attention_mask[b, : T - lengths[b]] == 0).all()
        assert batch.position_ids[b, -1] == lengths[b] - 1
    assert batch.labels.tolist() == [[-100, 5], [6, 9]]
    assert batch.input_ids[1, -2:].tolist() == [6, 9]
    pos, refs = batch.slots["item"]
    assert refs.tolist() == [7]
    r, c = divmod(int(pos[0]), T)
    assert r == 0 and batch.input_ids[r, c] == tok.pad_token_id and batch.attention_mask[r, c] == 1
    pos, refs = batch.slots["user"]
    assert refs.tolist() == [3] and divmod(int(pos[0]), T) == (1, T - 3)


def test_prompt_cut_from_the_left_keeps_the_question():
    tok = tiny.tokenizer()
    enc = PromptEncoder(tok, max_prompt_tokens=4)
    ids, slots = enc.encode(["Red River Star Garden", Slot("item", 1), "Answer:"])
    assert len(ids) == 4 and ids[-2:] == enc.text_ids("Answer:") and slots == [(1, Slot("item", 1))]


def test_match_candidate_prefers_the_longest_title():
    titles = ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)"]
    assert match_candidate(" toy story 2 ( 1999 )", titles) == 1
    assert match_candidate('"Heat (1995)"', titles) == 2
    assert match_candidate("no idea", titles) == -1


def test_splice_reaches_the_soft_vectors():
    from recsys_kernels.models.llm.base import LLMRecommender

    bb = tiny.backbone("llama")

    class Soft(LLMRecommender):
        def __init__(self, backbone):
            super().__init__(backbone)
            self.table = torch.nn.Parameter(torch.randn(10, backbone.hidden_size))

        def soft_vectors(self, kind, refs, batch):
            return self.table.index_select(0, refs)

    model = Soft(bb)
    enc = PromptEncoder(bb.tokenizer)
    batch = enc.collate([["Answer:", Slot("item", 4)], ["Target movie:", Slot("item", 2), "."]], [[5], [6]])
    embeds = model.input_embeddings(batch)
    pos, _ = batch.slots["item"]
    flat = embeds.reshape(-1, embeds.shape[-1])
    assert torch.equal(flat[pos[0]], model.table[4].detach()) and torch.equal(flat[pos[1]], model.table[2].detach())
    model(batch).backward()
    assert model.table.grad[[2, 4]].abs().sum() > 0 and model.table.grad[[0, 1, 3]].abs().sum() == 0
