"""Tiny offline backbones and data for the LLM-recommender tests.

The tokenizer is a ``tokenizers`` WordLevel model trained in memory on every word the prompts can hold
(whitespace and punctuation split), so " Yes" and " No" are single tokens and nothing is downloaded. The
backbones are randomly initialised LLaMA and OPT configs (hidden 32, 2 layers).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys_kernels.models.llm.data import CandidateData, ChoiceRows, CoLLMData, CTRRows  # noqa: E402

ADJECTIVES = ["Red", "Silent", "Lost", "Golden", "Dark", "Happy"]
NOUNS = ["River", "Star", "Garden", "Empire", "Night"]
TITLES = [""] + [f"{a} {n} ({1990 + k})" for k, (a, n) in enumerate((a, n) for a in ADJECTIVES for n in NOUNS)]
NUM_ITEMS = len(TITLES) - 1  # 30

# Every word of every prompt template, so no test prompt meets [UNK] (it would still run if one did).
PROMPT_TEXT = """You recommend movies. Decide whether the user will enjoy the target movie.
Movies the user liked: none. Movies the user disliked: The user's collaborative feature:
Target movie: with collaborative feature: Will the user enjoy the target movie? Answer Yes or No. Answer:
This user has watched in the past. Predict the movie the user will watch next. The candidates are:
Answer with exactly one title from the candidates. is a user representation.
Recommend the movie this user will watch next from these candidates: " , ."""


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"])
    tok.train_from_iterator([PROMPT_TEXT] + TITLES[1:], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]")


def backbone(kind: str = "llama", seed: int = 0):
    """A Backbone over a random tiny ``kind`` ("llama" | "opt") model, float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from recsys_kernels.models.llm import Backbone

    tok = tokenizer()
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
        model = LlamaForCausalLM(config)
    elif kind == "opt":
        config = OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=1024, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0, init_std=0.2,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
        model = OPTForCausalLM(config)
    else:
        raise ValueError(kind)
    return Backbone(model.eval(), tok, source=f"tiny-{kind}")


def ctr_data(num_users: int = 8, rows_per_user: int = 6, seed: int = 0) -> CoLLMData:
    """Clicks with a planted rule (a user likes the titles of its own adjective), time-ordered per user."""
    rng = np.random.default_rng(seed)
    splits = {}
    for s, split in enumerate(("train", "valid", "test")):
        users, items, labels, ts, liked, disliked = [], [], [], [], [], []
        for u in range(num_users):
            seen_l, seen_d = [], []
            for k in range(rows_per_user if split == "train" else 2):
                # alternate liked / disliked rows so every user has both labels in every split (UAUC)
                block = u % len(ADJECTIVES) if k % 2 == 0 else (u + 1 + int(rng.integers(len(ADJECTIVES) - 1))) % len(ADJECTIVES)
                i = 1 + block * len(NOUNS) + int(rng.integers(len(NOUNS)))
                y = int(k % 2 == 0)
                users.append(u); items.append(i); labels.append(y); ts.append(1000 * s + k)
                liked.append(np.asarray(seen_l, dtype=np.int64)); disliked.append(np.asarray(seen_d, dtype=np.int64))
                (seen_l if y else seen_d).append(i)
        splits[split] = CTRRows(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
                                np.asarray(labels, dtype=np.int64), np.asarray(ts, dtype=np.int64), liked, disliked)
    return CoLLMData(splits, list(TITLES), num_users=num_users, num_items=NUM_ITEMS + 1)


def choice_data(num_users: int = 6, num_candidates: int = 20, seed: int = 0) -> CandidateData:
    """Sequences that walk the catalogue (item i is followed by i + 1), 20 candidates per example."""
    rng = np.random.default_rng(seed)
    seqs = [((np.arange(8) + 3 * u) % NUM_ITEMS + 1).astype(np.int64) for u in range(num_users)]
    splits = {}
    for split, ends in (("train", (4, 5)), ("valid", (6,)), ("test", (7,))):
        users, hist, cands, tgts = [], [], [], []
        for u, s in enumerate(seqs):
            for end in ends:
                pool = np.setdiff1d(np.arange(1, NUM_ITEMS + 1), s)
                c = rng.permutation(np.append(rng.choice(pool, num_candidates - 1, replace=False), s[end]))
                users.append(u); hist.append(s[max(0, end - 3):end]); cands.append(c); tgts.append(s[end])
        splits[split] = ChoiceRows(np.asarray(users, dtype=np.int64), hist, np.stack(cands), np.asarray(tgts, dtype=np.int64))
    return CandidateData(splits, list(TITLES), NUM_ITEMS, [s[:6] for s in seqs])


def text_embeddings(dim: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((NUM_ITEMS + 1, dim)).astype(np.float32)
    emb[0] = 0
    return emb


def command_line_setup(model: str, folder) -> list[str]:
    """What a command-line test of ``model`` needs beyond the backbone: skips unless the shared data holds the
    model's data set; for allmrec, writes random title embeddings (one row per ML-100K title) into ``folder``
    and returns the ``--text-embeddings`` arguments."""
    import pytest

    from recsys_kernels.models.llm import pipeline

    try:
        data_path = pipeline.default_data_path(model)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    if not data_path.exists():
        pytest.skip(f"{data_path} is not in the shared data folder")
    if model != "allmrec":
        return []
    path = folder / "titles.npy"
    rows = len(pipeline.load_data(model).titles)
    np.save(path, np.random.default_rng(0).standard_normal((rows, 12)).astype(np.float32))
    return ["--text-embeddings", str(path)]
