"""DLRM dot interaction, reference implementation (also the HPU path and the test oracle).

T = [dense; sparse] is (B, n, D) with n = F + 1; S = T Tᵀ is (B, n, n). Each unordered pair of rows is kept
once: "lower" takes S[r, c] for c < r in row-major order of the lower triangle (dlrm / NVIDIA DLRM),
"upper" takes S[c, r] for c < r in row-major order of the upper triangle (torchrec InteractionArch);
``self_interaction`` adds the diagonal. The output is concat(dense, pairs) zero-padded on the right to a
multiple of ``pad_to_multiple``.
"""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("lower", "upper")


def num_pairs(n: int, self_interaction: bool) -> int:
    """Number of kept pairs P for n = F + 1 rows."""
    return n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2


def output_columns(D: int, n: int, self_interaction: bool, pad_to_multiple: int) -> int:
    """D + P rounded up to a multiple of pad_to_multiple."""
    cols = D + num_pairs(n, self_interaction)
    return (cols + pad_to_multiple - 1) // pad_to_multiple * pad_to_multiple


def pair_rows_cols(n: int, self_interaction: bool, layout: str) -> tuple[list[int], list[int]]:
    """Row and column of S for each output pair, in output order."""
    offset = 0 if self_interaction else 1
    if layout == "lower":
        pairs = [(r, c) for r in range(n) for c in range(r + 1 - offset)]
    else:
        pairs = [(r, c) for r in range(n) for c in range(r + offset, n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def check_inputs(dense: torch.Tensor, sparse: torch.Tensor, self_interaction: bool, layout: str,
                 pad_to_multiple: int) -> None:
    """Raise ValueError naming the argument when the inputs do not describe a dot interaction."""
    if dense.dim() != 2:
        raise ValueError(f"dense must have shape (B, D), got {tuple(dense.shape)}")
    if sparse.dim() != 3:
        raise ValueError(f"sparse must have shape (B, F, D), got {tuple(sparse.shape)}")
    if dense.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dense must be float32, float16 or bfloat16, got {dense.dtype}")
    if sparse.dtype != dense.dtype:
        raise ValueError(f"dense and sparse must have the same dtype, got {dense.dtype} and {sparse.dtype}")
    if sparse.device != dense.device:
        raise ValueError(f"dense and sparse must be on the same device, got {dense.device} and {sparse.device}")
    if dense.shape[0] != sparse.shape[0]:
        raise ValueError(f"dense and sparse must have the same batch size, got {dense.shape[0]} and {sparse.shape[0]}")
    if dense.shape[1] != sparse.shape[2]:
        raise ValueError(f"dense (B, D) and sparse (B, F, D) must have the same D, got {dense.shape[1]} and {sparse.shape[2]}")
    if sparse.shape[1] < 1:
        raise ValueError(f"sparse must have at least one feature (F >= 1), got F = {sparse.shape[1]}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'lower' or 'upper', got {layout!r}")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")


def check_backward_inputs(grad_output: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor,
                          self_interaction: bool, layout: str) -> None:
    """Raise ValueError naming the argument when grad_output does not match the forward inputs."""
    check_inputs(dense, sparse, self_interaction, layout, 1)
    B, D = dense.shape
    needed = D + num_pairs(sparse.shape[1] + 1, self_interaction)
    if grad_output.dim() != 2 or grad_output.shape[0] != B or grad_output.shape[1] < needed:
        raise ValueError(f"grad_output must have shape ({B}, >= {needed}), got {tuple(grad_output.shape)}")
    if grad_output.dtype != dense.dtype:
        raise ValueError(f"grad_output and dense must have the same dtype, got {grad_output.dtype} and {dense.dtype}")
    if grad_output.device != dense.device:
        raise ValueError(f"grad_output and dense must be on the same device, got {grad_output.device} and {dense.device}")


def _flat_pair_index(n: int, self_interaction: bool, layout: str, device: torch.device) -> torch.Tensor:
    rows, cols = pair_rows_cols(n, self_interaction, layout)
    return torch.tensor([r * n + c for r, c in zip(rows, cols)], dtype=torch.int64, device=device)


def dot_interaction(dense: torch.Tensor, sparse: torch.Tensor, self_interaction: bool = False,
                    layout: str = "lower", pad_to_multiple: int = 1) -> torch.Tensor:
    """dense (B, D), sparse (B, F, D) -> (B, out_cols) in the input dtype, float32 accumulation."""
    check_inputs(dense, sparse, self_interaction, layout, pad_to_multiple)
    B, D = dense.shape
    n = sparse.shape[1] + 1
    acc = torch.float64 if dense.dtype == torch.float64 else torch.float32
    t = torch.cat([dense.unsqueeze(1), sparse], dim=1).to(acc)
    s = torch.bmm(t, t.transpose(1, 2)).reshape(B, n * n)
    pairs = s.index_select(1, _flat_pair_index(n, self_interaction, layout, dense.device)).to(dense.dtype)
    out = torch.cat([dense, pairs], dim=1)
    pad = output_columns(D, n, self_interaction, pad_to_multiple) - out.shape[1]
    return torch.nn.functional.pad(out, (0, pad)) if pad else out


def dot_interaction_backward(grad_output: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor,
                             self_interaction: bool, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_output (B, >= D + P) -> grad_dense (B, D), grad_sparse (B, F, D); padding columns are ignored."""
    check_backward_inputs(grad_output, dense, sparse, self_interaction, layout)
    B, D = dense.shape
    n = sparse.shape[1] + 1
    P = num_pairs(n, self_interaction)
    acc = torch.float64 if dense.dtype == torch.float64 else torch.float32
    g_pairs = grad_output[:, D:D + P].to(acc)
    flat = _flat_pair_index(n, self_interaction, layout, dense.device)
    # Scatter each pair gradient into S's gradient at (r, c); G + Gᵀ then makes it symmetric and doubles
    # the diagonal, which is exactly d(t_i · t_i)/dt_i = 2 t_i.
    g = torch.zeros(B, n * n, dtype=acc, device=dense.device)
    g = g.index_add(1, flat, g_pairs).reshape(B, n, n)
    g = g + g.transpose(1, 2)
    t = torch.cat([dense.unsqueeze(1), sparse], dim=1).to(acc)
    grad_t = torch.bmm(g, t)
    grad_dense = (grad_output[:, :D].to(acc) + grad_t[:, 0]).to(dense.dtype)
    return grad_dense, grad_t[:, 1:].to(sparse.dtype)
