"""Shared test setup: hypothesis profiles, the device fixture, backend parametrisation.

Profiles: ``ci`` (derandomised, few examples; chosen when CI is set), ``dev`` (default), ``gpu`` (many
examples; for the lent H100). Pick one with HYPOTHESIS_PROFILE.

Triton runs on the CPU through its interpreter unless TRITON_INTERPRET is already set: on a GPU machine
run ``TRITON_INTERPRET=0 HYPOTHESIS_PROFILE=gpu pytest -m gpu``.
"""

import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("gpu", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A device name; CUDA is probed only when a CUDA test runs, and skips cleanly without a GPU."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


@pytest.fixture(autouse=True)
def _reset_dynamo():
    yield
    torch._dynamo.reset()


def backend_params(devices=("cpu", "cuda")) -> list:
    """(device, backend) pairs every op test runs over; CUDA pairs carry the gpu mark."""
    pairs = {"cpu": ("reference", "cpu", "triton"), "cuda": ("reference", "cuda", "triton")}
    return [pytest.param(d, b, id=f"{d}-{b}", marks=[pytest.mark.gpu] if d == "cuda" else [])
            for d in devices for b in pairs[d]]


def import_peer(module: str, install: str):
    """A peer-oracle package (fbgemm_gpu): CI installs it with the [test] extra, so there a failed import is an
    error, not a silent skip of the cross-checks; elsewhere its tests skip when it is absent."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed ({install})")


def require_backend(op: str, device: str, backend: str) -> None:
    """Skip when this machine cannot run the pair: no GPU, or (outside CI) an unbuilt extension/Triton."""
    from recsys_kernels import _backend

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not _backend._can_run(op, backend, device):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run backend {backend!r} of {op!r} on {device}: build the extension / install Triton")
        pytest.skip(f"backend {backend!r} of {op!r} is not available on {device}")
