"""Comparison against the float64 reference, with tolerances relative to the reference's own error.

A kernel running in dtype X may be at most twice as far from the float64 result as the reference run in
dtype X (DESIGN.md), plus a small floor for summation-order differences.
"""

from __future__ import annotations

import torch

_FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def relative_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    """‖x − exact‖₂ / ‖exact‖₂ in float64 (absolute error when exact is all zeros); NaN/inf give inf."""
    x64, e64 = x.detach().to("cpu", torch.float64), exact.detach().to("cpu", torch.float64)
    if not torch.isfinite(x64).all():
        return float("inf")
    diff = torch.linalg.vector_norm(x64 - e64).item()
    scale = torch.linalg.vector_norm(e64).item()
    return diff / scale if scale > 0 else diff


def assert_close_to_reference(out: torch.Tensor, exact: torch.Tensor, same_dtype_reference: torch.Tensor,
                              what: str = "output") -> None:
    """out: the kernel's result; exact: the float64 reference; same_dtype_reference: the reference run in
    out's dtype. Shapes must match exactly."""
    assert out.shape == exact.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(exact.shape)}"
    assert out.dtype == same_dtype_reference.dtype, f"{what}: dtype {out.dtype} != {same_dtype_reference.dtype}"
    err = relative_error(out, exact)
    budget = 2 * relative_error(same_dtype_reference, exact) + _FLOOR[out.dtype]
    assert err <= budget, f"{what}: relative error {err:.3g} > budget {budget:.3g} (dtype {out.dtype})"
