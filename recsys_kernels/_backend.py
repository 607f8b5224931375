"""The one place that decides which kernel runs an op, per call, from the input's device.

For an input on
  cuda: the CUDA C++ kernel if compiled, else the Triton kernel, else the reference (Triton first for the ops
        in TRITON_FIRST, where it measured faster);
  cpu:  the C++ CPU kernel if compiled, else the reference;
  hpu:  the reference, inline (plain aten ops that Gaudi's graph compiler lowers to TPC kernels);
  anything else: the reference.
``use_backend(name)`` and the environment variable RECSYS_KERNELS_BACKEND override the choice; asking for
a backend that cannot run the op on that device raises, the automatic choice never does.

Nothing here touches torch.cuda, Triton or the HPU at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Iterator

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")

# CUDA C++ before Triton on GPUs, except the ops in TRITON_FIRST. Measured for dot_interaction (H100, RESULTS.md:
# CUDA 1.05-1.44x faster than Triton at the benchmark shapes), rowwise_adagrad (CUDA 1.2-1.4x) and hstu_attention
# (CUDA faster at the model's shapes with the bias on, Triton at long sequences without it).
#
# int4_embedding_bag: Triton 1.2-1.6x faster than CUDA at 6 of the 7 benchmark rows (H100, RESULTS.md, eighth
# session: 0.144 vs 0.183 ms one table L = 32, 0.39 vs 0.62 ms 26 tables L = 1, 2.40 vs 3.00 ms L = 32). Its
# host cost is higher (a Python launch), which only shows for lookups that take well under 0.1 ms.
TRITON_FIRST = frozenset({"int4_embedding_bag"})
#
# op name -> module that registers its Triton ops (imported only when Triton is chosen or probed).
TRITON_MODULES: dict[str, str] = {
    "dot_interaction": "recsys_kernels.triton.dot_interaction",
    "rowwise_adagrad_update_": "recsys_kernels.triton.rowwise_adagrad",
    "embedding_bag_backward_rowwise_adagrad_": "recsys_kernels.triton.rowwise_adagrad",
    "quantize_int4_rows": "recsys_kernels.triton.int4_embedding_bag",
    "dequantize_int4_rows": "recsys_kernels.triton.int4_embedding_bag",
    "int4_embedding_bag": "recsys_kernels.triton.int4_embedding_bag",
    "qat_embedding_bag": "recsys_kernels.triton.qat_embedding_bag",
    "lengths_to_offsets": "recsys_kernels.triton.jagged",
    "jagged_to_padded_dense": "recsys_kernels.triton.jagged",
    "padded_dense_to_jagged": "recsys_kernels.triton.jagged",
    "hstu_attention": "recsys_kernels.triton.hstu_attention",
}
OPS = tuple(TRITON_MODULES)


def _load_extension() -> bool:
    try:
        importlib.import_module("recsys_kernels._C")
        return True
    except ImportError as e:
        warnings.warn(f"recsys_kernels._C is not built ({e}); ops run through the references and Triton. "
                      "Build it with `pip install --no-build-isolation -e .`.", RuntimeWarning, stacklevel=3)
        return False


EXTENSION_LOADED = _load_extension()


def _env_override() -> str | None:
    name = os.environ.get("RECSYS_KERNELS_BACKEND", "").strip().lower() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"RECSYS_KERNELS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_override: str | None = _env_override()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every op called inside the block onto backend ``name`` ("reference", "cpu", "cuda",
    "triton"); ``None`` restores the automatic choice. Under torch.compile the choice is made at trace time."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    previous, _override = _override, name
    try:
        yield
    finally:
        _override = previous


def _constant_under_compile(fn):
    """What torch.compiler.assume_constant_result does (Dynamo calls ``fn`` at trace time and bakes in its
    result), without importing torch._dynamo here: that import pulls in Triton, and this module must stay
    lean at import."""
    fn._dynamo_marked_constant = True
    return fn


def _interpreting_triton() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@_constant_under_compile
def _has_cpp_kernel(op: str, dispatch_key: str) -> bool:
    return EXTENSION_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"recsys::{op}", dispatch_key)


_warned_no_cuda_kernel: set[str] = set()


@_constant_under_compile
def _triton_ready(op: str) -> bool:
    """Triton is installed; importing the op's Triton module registers its ops (no compilation happens)."""
    if importlib.util.find_spec("triton") is None:
        return False
    importlib.import_module(TRITON_MODULES[op])
    return True


def _can_run(op: str, backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and _has_cpp_kernel(op, "CPU")
    if backend == "cuda":
        return device_type == "cuda" and _has_cpp_kernel(op, "CUDA")
    # Triton runs CUDA tensors, or CPU tensors under the interpreter (TRITON_INTERPRET=1).
    on_device = device_type == "cuda" or (device_type == "cpu" and _interpreting_triton())
    return on_device and _triton_ready(op)


def choose(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` for inputs on ``device``."""
    if device.type == "hpu":
        _register_hpu_kernels()
    if _override is not None:
        if not _can_run(op, _override, device.type):
            raise RuntimeError(f"backend {_override!r} cannot run recsys op {op!r} on device {device.type!r}; "
                               f"live backends: {live_backends(op, device.type)}")
        return _override
    if device.type == "cuda":
        if op in TRITON_FIRST and _can_run(op, "triton", "cuda"):
            return "triton"
        if _can_run(op, "cuda", "cuda"):
            return "cuda"
        _warn_no_cuda_kernel(op)
        return "triton" if _can_run(op, "triton", "cuda") else "reference"
    if device.type == "cpu" and _can_run(op, "cpu", "cpu"):
        return "cpu"
    return "reference"


@_constant_under_compile
def _warn_no_cuda_kernel(op: str) -> bool:
    if op not in _warned_no_cuda_kernel:
        _warned_no_cuda_kernel.add(op)
        warnings.warn(f"recsys op {op!r} has no compiled CUDA kernel (built with RECSYS_KERNELS_CUDA=0 or "
                      "without nvcc); using Triton or the reference", RuntimeWarning, stacklevel=4)
    return True


def live_backends(op: str, device_type: str) -> list[str]:
    return [b for b in BACKENDS if _can_run(op, b, device_type)]


def capabilities() -> dict[str, dict[str, bool]]:
    """Per op, which backends can run now on this machine: {"dot_interaction": {"reference": True, ...}}.
    "cuda" and "triton" need a visible CUDA device (or, for Triton, TRITON_INTERPRET=1 on the CPU)."""
    cuda = torch.cuda.is_available()
    triton_device = "cuda" if cuda else "cpu"
    return {
        op: {
            "reference": True,
            "cpu": _can_run(op, "cpu", "cpu"),
            "cuda": cuda and _can_run(op, "cuda", "cuda"),
            "triton": _can_run(op, "triton", triton_device),
        }
        for op in OPS
    }


_hpu_registered = False


@_constant_under_compile
def _register_hpu_kernels() -> bool:
    """Gaudi: once habana_frameworks.torch has been imported by the user, the references become the HPU
    kernels of the registered ops, so torch.ops.recsys.* calls on HPU tensors stay plain aten graphs."""
    global _hpu_registered
    if _hpu_registered or "habana_frameworks.torch" not in sys.modules or not EXTENSION_LOADED:
        return _hpu_registered
    from recsys_kernels import reference

    for op in OPS:
        # The reference module is the op's stem (the Triton module's name): several ops may share it.
        ref = importlib.import_module(f"{reference.__name__}.{TRITON_MODULES[op].rsplit('.', 1)[1]}")
        for name in (op, f"{op}_backward"):
            if hasattr(ref, name):
                torch.library.impl(f"recsys::{name}", "hpu")(getattr(ref, name))
    _hpu_registered = True
    return True
