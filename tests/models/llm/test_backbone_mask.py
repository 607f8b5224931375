"""Backbone.logits builds its own attention mask: no fully masked query row (left pads see themselves), and
every real token's logits are the ones it gets without padding."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from recsys_kernels.models.llm.backbone import Backbone  # noqa: E402
from recsys_kernels.models.llm.prompts import PromptEncoder  # noqa: E402

from . import tiny  # noqa: E402


def test_additive_mask_has_no_empty_row_and_hides_pads_from_real_tokens():
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    m = Backbone.additive_causal_mask(pad, torch.bfloat16)
    assert m.shape == (2, 1, 4, 4) and m.dtype == torch.bfloat16
    seen = m[:, 0] == 0
    assert seen.any(-1).all()                                     # no query row without a key
    assert torch.equal(seen[0, :2], torch.eye(4, dtype=torch.bool)[:2])   # pads see only themselves
    assert not seen[0, 2:, :2].any()                              # real tokens never see pads
    assert torch.equal(seen[1], torch.ones(4, 4, dtype=torch.bool).tril())


def _lora_backbone(kind: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backbone:
    torch.manual_seed(0)
    bb = tiny.backbone(kind)
    bb.lm.to(device=device, dtype=dtype)
    bb.add_lora()
    bb.lora_parameters_trainable(True)
    return bb


def _left_padded_loss_grads(bb: Backbone, device: str) -> list[torch.Tensor]:
    """One training forward/backward of a left-padded batch -> the LoRA gradients."""
    enc = PromptEncoder(bb.tokenizer)
    batch = enc.collate([["Answer:"], ["A much longer prompt than the other one, to force padding:"]],
                        [[5], [6]]).to(device)
    bb.lm.train()
    logits = bb.logits(bb.embed(batch.input_ids), batch.attention_mask, batch.position_ids, 2)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels.reshape(-1)).backward()
    return [p.grad for p in bb.lora_parameters()]


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_left_padded_logits_match_the_unpadded_prompt_and_gradients_are_finite(kind):
    bb = _lora_backbone(kind)
    enc = PromptEncoder(bb.tokenizer)
    short, long = ["Answer:"], ["A much longer prompt than the other one, to force padding:"]
    both = enc.collate([short, long], [[5], [6]])
    alone = enc.collate([short], [[5]])
    assert both.attention_mask[0, 0] == 0                          # the short row is left padded

    def logits(batch):
        return bb.logits(bb.embed(batch.input_ids), batch.attention_mask, batch.position_ids, 2)

    padded = logits(both)
    torch.testing.assert_close(padded[0], logits(alone)[0], rtol=1e-4, atol=1e-4)
    padded.sum().backward()
    grads = [p.grad for p in bb.lora_parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_bf16_lora_gradients_are_finite_on_cuda_with_left_padding(kind):
    """The H100 regression: with transformers' own 2-D mask, fully masked pad rows made CUDA SDPA's backward
    return NaN LoRA gradients."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    grads = _left_padded_loss_grads(_lora_backbone(kind, "cuda", torch.bfloat16), "cuda")
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_flash_attention_is_refused_with_a_clear_error():
    bb = tiny.backbone("llama")
    bb.lm.config._attn_implementation = "flash_attention_2"
    batch = PromptEncoder(bb.tokenizer).collate([["Answer:"]])
    with pytest.raises(ValueError, match="flash"):
        bb.logits(bb.embed(batch.input_ids), batch.attention_mask, batch.position_ids, 1)
