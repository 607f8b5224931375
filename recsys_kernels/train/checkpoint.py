"""Checkpoints and run metadata.

A checkpoint is one ``torch.save`` file holding CPU copies of everything (Gaudi cannot serialise device
tensors, and a CPU checkpoint loads anywhere): model and optimizer state dicts, the config, the data set
argument, the finished epoch count, the metric history and best result, and the torch RNG states (so a
resumed run draws the same negatives and dropout masks as an uninterrupted one).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint", "to_cpu", "versions"]

FORMAT = 1


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) detached and copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (tensors moved to the CPU) atomically: a crash mid-save leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(to_cpu(dict(payload, format=FORMAT)), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The payload of a checkpoint written by ``save_checkpoint``, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # weights_only=False: the payload holds plain Python config dicts and metric histories beside tensors
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a recsys-kernels checkpoint (format {FORMAT})")
    return ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _git_rev() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                           text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    import numpy

    import recsys_kernels

    return {"recsys_kernels": recsys_kernels.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "git": _git_rev(), "cuda": torch.version.cuda}
