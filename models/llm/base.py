"""What the four LLM recommenders share: soft-token splicing, the answer loss, Yes/No scoring, generation.

A recommender subclasses ``LLMRecommender`` and implements ``soft_vectors(kind, refs, batch)``. The training
forward is the language-model loss of the answer tokens only (the prompt is context, as in TALLRec's and
LLaRA's instruction tuning), so ``forward(batch) -> loss`` is all that DistributedDataParallel wraps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .prompts import PromptBatch

__all__ = ["LLMRecommender", "MLPProjector"]


def _to_cpu(value):
    """A CPU copy of a state-dict entry (tensors, or a module's extra state holding tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class MLPProjector(torch.nn.Sequential):
    """in_dim -> hidden -> out_dim with GELU: the mapper/projector shape CoLLM, LLaRA and A-LLMRec use."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        hidden = hidden or out_dim
        super().__init__(torch.nn.Linear(in_dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, out_dim))


class LLMRecommender(torch.nn.Module):
    """Backbone + the model's own modules. ``soft_kinds`` lists the slot kinds it fills."""

    soft_kinds: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    # -- soft tokens -------------------------------------------------------------------------------------------
    def soft_vectors(self, kind: str, refs: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        """refs (S,) int64 -> (S, H) input embeddings for the slots of ``kind``."""
        raise NotImplementedError(f"{type(self).__name__} has no soft tokens of kind {kind!r}")

    def input_embeddings(self, batch: PromptBatch) -> torch.Tensor:
        """(B, T, H) token embeddings with every slot overwritten by its soft vector."""
        embeds = self.backbone.embed(batch.input_ids)
        if not batch.slots:
            return embeds
        B, T, H = embeds.shape
        flat = embeds.reshape(B * T, H)
        for kind, (pos, refs) in batch.slots.items():
            vectors = self.soft_vectors(kind, refs, batch).to(flat.dtype)
            flat = flat.index_copy(0, pos, vectors)  # out of place: the gradient reaches ``vectors``
        return flat.view(B, T, H)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: PromptBatch) -> torch.Tensor:
        """Scalar mean cross-entropy of the answer tokens (batch.labels (B, A))."""
        if batch.labels is None:
            raise ValueError("a training batch needs answers (labels)")
        A = batch.labels.shape[1]
        logits = self.backbone.logits(self.input_embeddings(batch), batch.attention_mask, batch.position_ids, A + 1)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels.reshape(-1),
                               ignore_index=-100)

    # -- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_logits(self, batch: PromptBatch) -> torch.Tensor:
        """(B, V) float32 logits of the token after each prompt."""
        return self.backbone.logits(self.input_embeddings(batch), batch.attention_mask, batch.position_ids, 1)[:, -1]

    @torch.no_grad()
    def generate(self, batch: PromptBatch, max_new_tokens: int) -> list[str]:
        return self.backbone.generate(self.input_embeddings(batch), batch.attention_mask, max_new_tokens)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """State dict without the backbone's pretrained weights (LoRA adapters kept), on the CPU: Gaudi
        refuses to serialise device tensors, and a checkpoint should load anywhere."""
        skip = {f"backbone.{k}" for k in self.backbone.base_state_names()}
        return {k: _to_cpu(v) for k, v in self.state_dict().items() if k not in skip}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        skip = {f"backbone.{k}" for k in self.backbone.base_state_names()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in skip]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit {type(self).__name__}: missing {missing[:5]}, "
                               f"unexpected {list(unexpected)[:5]}")
