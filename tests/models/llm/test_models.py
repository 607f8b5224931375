"""Every LLM recommender on tiny random LLaMA and OPT backbones: each stage trains a few steps and its loss
falls, evaluation returns the paper's metrics, and a checkpoint reloads to the same outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

from recsys_kernels.models.llm import pipeline  # noqa: E402

from . import tiny  # noqa: E402

# Every stage sees one fixed batch (TRAIN_ROWS rows, batch_size = TRAIN_ROWS) for STEPS steps, so "the loss
# falls" measures fitting, not batch-to-batch noise.
TRAIN_ROWS, STEPS = 8, 8
FAST = dict(batch_size=TRAIN_ROWS, epochs=float(STEPS), lr=5e-2, lora_r=4, lora_dropout=0.0, eval_batch_size=16)
CONFIGS = {
    "tallrec": FAST,
    "collm": dict(FAST, cf_dim=8, cf_epochs=2, mapper_lr=3e-2, mapper_epochs=float(STEPS)),
    "llara": dict(FAST, cf_dim=8, cf_epochs=2),
    "allmrec": dict(batch_size=TRAIN_ROWS, epochs=float(STEPS), lr=1e-2, eval_batch_size=16, cf_dim=8, cf_epochs=2,
                    latent_dim=8, align_batch_size=TRAIN_ROWS, align_epochs=float(STEPS), align_lr=1e-2),
}
# Both architectures and both collaborative models are covered, each model at least once (CI time).
CASES = [("tallrec", "opt", {}), ("collm", "llama", {"cf": "pmf"}), ("collm", "opt", {"cf": "sasrec"}),
         ("llara", "llama", {}), ("llara", "opt", {"mode": "text"}), ("allmrec", "llama", {})]


def _data(name: str):
    return tiny.ctr_data() if pipeline.model_module(name).DATA == "collm" else tiny.choice_data()


def _probe(name: str, model, data) -> torch.Tensor:
    """Outputs that depend on every trained part: P(Yes) for CTR models, the first answer-token logits else."""
    rows = data.splits["test"]
    idx = np.arange(min(4, len(rows)))
    if name in ("tallrec", "collm"):
        return model.yes_probability(model.make_batch(rows, idx, answers=False))
    return model.next_token_logits(model.make_batch(rows, idx, answers=False, hybrid=True))


@pytest.mark.parametrize("name,kind,extra", CASES, ids=[f"{n}-{k}-{'-'.join(map(str, e.values())) or 'default'}"
                                                        for n, k, e in CASES])
def test_stages_train_evaluate_and_round_trip(name, kind, extra, tmp_path):
    torch.manual_seed(0)
    data = pipeline.limit_splits(_data(name), train=TRAIN_ROWS)
    config = pipeline.resolve_config(name, dict(CONFIGS[name], **extra))
    text = tiny.text_embeddings() if name == "allmrec" else None
    model, report = pipeline.train_and_evaluate(name, tiny.backbone(kind), data, config, torch.device("cpu"),
                                                text_embeddings=text, splits=("test",))
    for stage in report["stages"]:
        losses = stage["losses"]
        assert all(math.isfinite(x) for x in losses), stage["stage"]
        assert np.mean(losses[-3:]) < np.mean(losses[:3]), (stage["stage"], losses)
    metrics = report["test"]
    if name in ("tallrec", "collm"):
        assert 0.0 <= metrics["AUC"] <= 1.0 and 0.0 <= metrics["UAUC"] <= 1.0
        assert metrics["n"] == len(data.splits["test"])
    else:
        assert 0.0 <= metrics["HitRatio@1"] <= metrics["ValidRatio"] <= 1.0

    before = _probe(name, model, data)
    path = pipeline.save_checkpoint(tmp_path / "model.pt", name, model, config, report)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert all(v.device.type == "cpu" for v in saved["state"].values() if isinstance(v, torch.Tensor))
    assert not any(k.startswith("backbone.lm.") and "lora_" not in k for k in saved["state"]), "backbone weights saved"
    _, again, _ = pipeline.load_checkpoint(path, tiny.backbone(kind), data, torch.device("cpu"))
    torch.testing.assert_close(_probe(name, again, data), before, rtol=1e-5, atol=1e-5)
