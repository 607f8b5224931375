"""LLM-based recommenders on a pluggable Hugging Face causal LM (``recsys_kernels.models.llm``).

    TALLRec  (tallrec.py)  Yes/No instruction tuning with LoRA; AUC
    CoLLM    (collm.py)    TALLRec's prompt + PMF/SASRec user and item tokens through an MLP mapper; AUC, UAUC
    LLaRA    (llara.py)    next item out of 20 candidates, titles + projected SASRec tokens, text->hybrid
                           curriculum; HitRatio@1, ValidRatio
    A-LLMRec (allmrec.py)  frozen LLM; SASRec/text autoencoders aligned, then user/item soft tokens through
                           trained projectors; HitRatio@1

Shared pieces: backbone.py (loading, LoRA via peft, no 8-bit), prompts.py (text + soft-token slots, left
padding), base.py (splicing, answer loss, scoring, generation), collab.py (this package's PMF and SASRec as
frozen collaborative encoders), ctr.py / choice.py (the two task shapes), data.py, trainer.py (stages,
DistributedDataParallel), evaluate.py, pipeline.py, cli.py.

Needs the optional extra ``llm`` (transformers, peft; pandas for the CoLLM pickles; gguf for GGUF
backbones). Names are resolved lazily so ``import recsys_kernels.models.llm`` works without them.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Backbone": ".backbone", "LoraSettings": ".backbone", "load_backbone": ".backbone", "smollm2_path": ".backbone",
    "minilm_path": ".backbone", "TALLRec": ".tallrec", "CoLLM": ".collm", "LLaRA": ".llara", "ALLMRec": ".allmrec",
    "Stage": ".trainer", "run_stage": ".trainer", "load_collm_ml1m": ".data", "movielens_candidates": ".data",
    "encode_texts": ".data", "train_and_evaluate": ".pipeline", "save_checkpoint": ".pipeline",
    "load_checkpoint": ".pipeline", "MODELS": ".pipeline",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
