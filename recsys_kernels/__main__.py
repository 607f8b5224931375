"""The ``recsys-kernels`` command (also ``python -m recsys_kernels``).

    recsys-kernels                      what is live on this machine, and a quick timing of the ops' backends
    recsys-kernels info                 the same
    recsys-kernels demo                 train HSTU on built-in synthetic data; HR@10 / NDCG@10 beside a
                                        popularity baseline, then the op timings
    recsys-kernels train MODEL --data NAME|PATH [--config NAME|file.json] [--epochs N] [--device D] [--amp]
                                        [--compile] [--out DIR] [--resume CKPT] [--set KEY=JSON ...]
    recsys-kernels eval MODEL --checkpoint CKPT [--data NAME|PATH] [--device D]
    recsys-kernels models               models and their named configs

``train`` writes DIR/best.pt, DIR/last.pt and DIR/results.json (DIR defaults to runs/MODEL-DATA-TIME).
``--config`` takes a named config or a JSON file whose keys override the model's default config; ``--set``
overrides single keys (values parsed as JSON, else taken as strings). The LLM recommenders (tallrec, collm,
llara, allmrec) have their own argument parsing: ``train``/``eval`` of those hand the whole command line to
recsys_kernels.models.llm.cli.main(argv).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import recsys_kernels as rk
from recsys_kernels import benchmarking


def _default_device(arg: str | None) -> torch.device:
    return torch.device(arg or ("cuda" if torch.cuda.is_available() else "cpu"))


# --- info: live backends and quick op timings ---------------------------------------------------------------

def _time_backends(op: str, device: torch.device, label: str, forward, forward_backward) -> list[tuple]:
    rows = []
    for backend in rk._backend.live_backends(op, device.type):
        with rk.use_backend(backend):
            rows.append((label, backend, benchmarking.time_ms(forward, device=device, warmup=2, rep=10),
                         benchmarking.time_ms(forward_backward, device=device, warmup=2, rep=10)))
    return rows


def _quick_dot_interaction(device: torch.device) -> list[tuple[str, str, float, float]]:
    """(op, backend, forward ms, forward+backward ms) for every backend live on ``device``."""
    B = 65536 if device.type == "cuda" else 2048
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    dense = torch.randn(B, 128, device=device, dtype=dtype, requires_grad=True)
    sparse = torch.randn(B, 26, 128, device=device, dtype=dtype, requires_grad=True)

    def forward():
        with torch.no_grad():
            rk.ops.dot_interaction(dense, sparse)

    def forward_backward():
        rk.ops.dot_interaction(dense, sparse).sum().backward()

    return _time_backends("dot_interaction", device, f"dot_interaction B={B} F=26 D=128 {str(dtype)[6:]}",
                          forward, forward_backward)


def _quick_hstu_attention(device: torch.device) -> list[tuple[str, str, float, float]]:
    """hstu_attention with the relative position + time bias at the demo's shape (CPU) or ML-1M's (CUDA)."""
    if device.type == "cuda":
        B, N, H, D, dtype = 128, 200, 1, 50, torch.bfloat16
    else:
        B, N, H, D, dtype = 64, 50, 1, 32, torch.float32
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(N // 4, N + 1, (B,), generator=gen)
    L = int(lengths.sum())
    offsets = rk.ops.lengths_to_offsets(lengths).to(device)
    q, k, v = (torch.randn(L, H, D, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
    ts = torch.cumsum(torch.randint(1, 10**5, (L,), generator=gen), 0).to(device)
    pos_bias = torch.zeros(2 * N - 1, device=device, dtype=dtype, requires_grad=True)
    time_bias = torch.zeros(129, device=device, dtype=dtype, requires_grad=True)

    def call():
        return rk.ops.hstu_attention(q, k, v, offsets, max_seq_len=N, alpha=1.0, timestamps=ts, pos_bias=pos_bias,
                                     time_bias=time_bias)

    def forward():
        with torch.no_grad():
            call()

    def forward_backward():
        call().sum().backward()

    return _time_backends("hstu_attention", device, f"hstu_attention B={B} N<={N} H={H} D={D} {str(dtype)[6:]}",
                          forward, forward_backward)


def print_op_timings(device: torch.device) -> None:
    print(f"\nquick timings on {device.type} (median ms):")
    print(f"  {'op':44s} {'backend':10s} {'fwd':>9s} {'fwd+bwd':>9s}")
    for op, backend, fwd, fwd_bwd in _quick_dot_interaction(device) + _quick_hstu_attention(device):
        print(f"  {op:44s} {backend:10s} {fwd:9.3f} {fwd_bwd:9.3f}")


def info(args: argparse.Namespace) -> int:
    device = _default_device(args.device)
    print(f"recsys_kernels {rk.__version__}, torch {torch.__version__}, device {benchmarking.device_name(device)}")
    print("\nbackends live per op:")
    for op, live in rk.capabilities().items():
        print(f"  {op:24s} " + "  ".join(f"{b}={'yes' if ok else 'no'}" for b, ok in live.items()))
    print_op_timings(device)
    return 0


# --- demo ---------------------------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    from recsys_kernels.train import demo as demo_run

    device = _default_device(args.device)
    print(f"recsys_kernels {rk.__version__}, torch {torch.__version__}, device {benchmarking.device_name(device)}")
    result = demo_run.run(device, epochs=args.epochs, quick=args.quick, progress=not args.no_progress)
    if not args.quick:
        print_op_timings(device)
    if result["hstu"]["NDCG@10"] <= result["popularity"]["NDCG@10"]:
        print("HSTU did not beat the popularity baseline: something is wrong", file=sys.stderr)
        return 1
    return 0


# --- train / eval -------------------------------------------------------------------------------------------

def _registry():
    from recsys_kernels.train import registry

    registry.load_all()
    return registry


def _check_model(registry, model: str) -> None:
    if model not in registry.MODELS:
        errors = "".join(f"\n  ({mod} did not import: {err})" for mod, err in registry.IMPORT_ERRORS.items())
        raise SystemExit(f"unknown model {model!r}; known: {', '.join(sorted(registry.MODELS))}{errors}")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_config(model: str, config_arg: str | None, sets: list[str] | None = None) -> dict:
    """The model's default config, replaced by a named config or updated by a JSON file, then ``--set``."""
    registry = _registry()
    _check_model(registry, model)
    default_name = registry.DEFAULT_CONFIG.get(model)
    config = dict(registry.CONFIGS[default_name]) if default_name else {}
    if config_arg is not None:
        path = Path(config_arg)
        if config_arg in registry.CONFIGS:
            if config_arg not in registry.MODEL_CONFIGS.get(model, []):
                raise SystemExit(f"config {config_arg!r} is not a config of {model}; its configs: "
                                 f"{', '.join(registry.MODEL_CONFIGS.get(model, []))}")
            config = dict(registry.CONFIGS[config_arg])
        elif path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise SystemExit(f"config file {path} does not exist")
            overrides = json.loads(path.read_text())
            if not isinstance(overrides, dict):
                raise SystemExit(f"config file {path} must hold a JSON object")
            config.update(overrides)
        else:
            raise SystemExit(f"--config {config_arg!r} is neither a named config of {model} "
                             f"({', '.join(registry.MODEL_CONFIGS.get(model, []))}) nor a JSON file")
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        config[key] = _parse_value(value)
    return config


def load_data(name_or_path: str, config: dict):
    """load_dataset(name_or_path), with the config's ``data_args`` for the built-in synthetic generators."""
    from recsys_kernels.data import load_dataset
    from recsys_kernels.data.registry import SYNTHETIC

    kwargs = config.get("data_args") or {}
    if str(name_or_path).lower() in SYNTHETIC and kwargs:
        return load_dataset(name_or_path, **kwargs)
    return load_dataset(name_or_path)


def train(args: argparse.Namespace) -> int:
    from recsys_kernels.train.loop import fit

    registry = _registry()
    config = resolve_config(args.model, args.config, args.set)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.compile and "pad_to_max_len" in config:
        config["pad_to_max_len"] = True  # fixed widths: a compiled model then sees few distinct shapes
    device = _default_device(args.device)
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{Path(args.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = load_data(args.data, config)
    task = registry.MODELS[args.model](data, config)
    print(f"training {args.model} on {args.data} ({task.name}, primary metric {task.primary_metric}) on {device}; "
          f"writing {out}", file=sys.stderr)
    result = fit(task, config, device=device, amp=args.amp, compile=args.compile, out_dir=out, resume=args.resume,
                 model_name=args.model, data_name=args.data, progress=not args.no_progress)
    print(json.dumps({"model": args.model, "data": args.data, "best_epoch": result["best_epoch"],
                      "best_valid": result["best_valid"], "test": result["test"],
                      "results": str(out / "results.json"), "checkpoint": result["checkpoint"]}, indent=2))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from recsys_kernels.train.checkpoint import load_checkpoint
    from recsys_kernels.train.loop import autocast, load_for_eval

    registry = _registry()
    _check_model(registry, args.model)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("model_name") not in (None, args.model):
        raise SystemExit(f"{args.checkpoint} holds a {ckpt['model_name']!r} model, not {args.model!r}")
    data_name = args.data or ckpt.get("data")
    if data_name is None:
        raise SystemExit(f"{args.checkpoint} does not record its data set: pass --data")
    config = ckpt["config"]
    device = _default_device(args.device)
    task = registry.MODELS[args.model](load_data(data_name, config), config)
    model = load_for_eval(task, ckpt, device)
    metrics = {}
    with autocast(device, args.amp):
        for split in ("valid", "test"):
            metrics[split] = task.evaluate(model, split, device)
    print(json.dumps({"model": args.model, "data": data_name, "checkpoint": str(args.checkpoint),
                      "epoch": ckpt.get("epoch"), **metrics}, indent=2))
    return 0


def list_models(args: argparse.Namespace) -> int:
    registry = _registry()
    for model in sorted(registry.MODELS):
        names = registry.MODEL_CONFIGS.get(model, [])
        default = registry.DEFAULT_CONFIG.get(model)
        print(f"{model:10s} configs: " + ", ".join(n + (" (default)" if n == default else "") for n in names))
    for mod, err in registry.IMPORT_ERRORS.items():
        print(f"(not available: {mod}: {err})")
    return 0


# --- parsing ------------------------------------------------------------------------------------------------

def _hand_over_to_llm_cli(argv: list[str]) -> int | None:
    """``train``/``eval`` of an LLM recommender: its own CLI parses the whole command line."""
    from recsys_kernels.train.registry import LLM_CLI_MODULE, LLM_MODELS

    if len(argv) >= 2 and argv[0] in ("train", "eval") and argv[1] in LLM_MODELS:
        import importlib

        try:
            cli = importlib.import_module(LLM_CLI_MODULE)
        except ImportError as exc:
            raise SystemExit(f"model {argv[1]!r} needs {LLM_CLI_MODULE}, which did not import: {exc}") from exc
        return int(cli.main([sys.argv[0] if sys.argv else "recsys-kernels", *argv]) or 0)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sub = parser.add_subparsers(dest="command")
    p_info = sub.add_parser("info", help="live backends and quick op timings")
    p_info.add_argument("--device", default=argparse.SUPPRESS, help="cpu or cuda (default: cuda when available)")

    p_demo = sub.add_parser("demo", help="train HSTU on synthetic data against a popularity baseline")
    p_demo.add_argument("--device", default=argparse.SUPPRESS, help="cpu or cuda (default: cuda when available)")
    p_demo.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    p_demo.add_argument("--quick", action="store_true", help="a much smaller run (tests), no op timings")
    p_demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    p_train = sub.add_parser("train", help="train a model; best checkpoint and results JSON under --out")
    p_train.add_argument("model")
    p_train.add_argument("--data", required=True, help="a data set name (e.g. synthetic-seq, beauty) or a path")
    p_train.add_argument("--config", default=None, help="a named config or a JSON file of overrides")
    p_train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key")
    p_train.add_argument("--epochs", type=int, default=None)
    p_train.add_argument("--device", default=argparse.SUPPRESS, help="cpu or cuda (default: cuda when available)")
    p_train.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p_train.add_argument("--compile", action="store_true", help="torch.compile the model")
    p_train.add_argument("--out", default=None, help="output directory")
    p_train.add_argument("--resume", default=None, help="continue from a checkpoint (DIR/last.pt)")
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")

    p_eval = sub.add_parser("eval", help="evaluate a checkpoint on the valid and test splits")
    p_eval.add_argument("model")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--data", default=None, help="default: the data set recorded in the checkpoint")
    p_eval.add_argument("--device", default=argparse.SUPPRESS, help="cpu or cuda (default: cuda when available)")
    p_eval.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")

    sub.add_parser("models", help="list models and their named configs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    handed = _hand_over_to_llm_cli(argv)
    if handed is not None:
        return handed
    args = build_parser().parse_args(argv)
    commands = {"demo": demo, "train": train, "eval": evaluate, "models": list_models}
    return commands.get(args.command, info)(args)


if __name__ == "__main__":
    sys.exit(main())
