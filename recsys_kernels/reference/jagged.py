"""Jagged <-> padded-dense helpers, reference implementation (also the HPU path and the test oracle).

A jagged tensor is ``values (L, D)`` with ``offsets (B + 1,)`` (int32|int64): row block b is
``values[offsets[b]:offsets[b + 1]]``. ``offsets[0] == 0``, offsets never decrease and ``offsets[B] <= L``
(rows past ``offsets[B]`` belong to no sequence).

    lengths_to_offsets(lengths (B,))                       -> (B + 1,) exclusive cumsum, lengths' dtype
    jagged_to_padded_dense(values (L, D), offsets, max_len) -> (B, max_len, D); positions past a sequence's
        length hold ``padding_value``; sequences longer than max_len are truncated (fbgemm semantics)
    padded_dense_to_jagged(dense (B, N, D), offsets, total_len) -> (total_len, D); rows past N of a sequence,
        and rows past offsets[B], are zero

The two copies are each other's adjoint, so each one's backward is the other (with padding 0).
Static shapes: every output shape depends only on input shapes and the size arguments; gathers go through
``index_select`` from the input with one extra padding row appended, so no ``where``/boolean indexing.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

_INDEX_DTYPES = (torch.int32, torch.int64)
_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64)


def _eager(*tensors: torch.Tensor) -> bool:
    """True when the value checks may read the tensors: not under tracing, fake or meta, and not on the HPU
    (reading would break Gaudi's lazy graph; there the reference's clamped gathers keep bad offsets in
    bounds). On CUDA the read is a device sync per call, the price of a clear error before a kernel runs."""
    if torch.compiler.is_compiling():
        return False
    return not any(t.device.type in ("meta", "hpu") or is_fake(t) for t in tensors)


def check_offsets(offsets: torch.Tensor, total_len: int | None, name: str = "offsets") -> torch.Tensor | None:
    """Shape/dtype checks always; value checks (starts at 0, non-decreasing, last <= total_len) in eager mode
    only (they read the data: a device sync on CUDA). Returns the int64 CPU copy it read (None when it read
    nothing), so that callers with more value checks read the offsets once."""
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B + 1,), got {tuple(offsets.shape)}")
    if offsets.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {offsets.dtype}")
    if not _eager(offsets):
        return None
    o = offsets.detach().to("cpu", torch.int64)
    first, last = o[0].item(), o[-1].item()
    if first != 0:
        raise ValueError(f"{name} must start at 0, got {first}")
    if o.shape[0] > 1 and bool((o.diff() < 0).any()):
        raise ValueError(f"{name} must be non-decreasing")
    if total_len is not None and last > total_len:
        raise ValueError(f"{name}[-1] = {last} is past the number of rows L = {total_len}")
    return o


def check_lengths(lengths: torch.Tensor) -> None:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if lengths.dtype not in _INDEX_DTYPES:
        raise ValueError(f"lengths must be int32 or int64, got {lengths.dtype}")
    if _eager(lengths) and lengths.numel() and bool((lengths < 0).any()):
        raise ValueError("lengths must be non-negative")


def check_values(values: torch.Tensor, offsets: torch.Tensor, name: str, dim: int) -> None:
    if values.dim() != dim:
        shape = "(L, D)" if dim == 2 else "(B, N, D)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(values.shape)}")
    if values.dtype not in _VALUE_DTYPES:
        raise ValueError(f"{name} must be a float32|float16|bfloat16|float64|int32|int64 tensor, got {values.dtype}")
    check_index_device(values, name, offsets, "offsets")


def check_index_device(values: torch.Tensor, values_name: str, idx: torch.Tensor, idx_name: str) -> None:
    """Index tensors (offsets, num_targets) live on the values' device or on the CPU: there every backend reads
    them without a device sync and copies them up itself (index_on)."""
    if idx.device != values.device and idx.device.type != "cpu":
        raise ValueError(f"{idx_name} must be on {values_name}'s device ({values.device}) or on the CPU, got "
                         f"{idx.device}")


def index_on(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """idx on ``device``: itself when already there; from the CPU to CUDA through pinned memory, so the copy
    does not wait for the stream (a copy from pageable memory can)."""
    if idx.device == device:
        return idx
    if device.type == "cuda" and not torch.compiler.is_compiling() and not is_fake(idx):
        return idx.pin_memory().to(device, non_blocking=True)
    return idx.to(device)


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """lengths (B,) int32|int64 -> offsets (B + 1,) same dtype: [0, l0, l0 + l1, ...]."""
    check_lengths(lengths)
    zero = torch.zeros(1, dtype=lengths.dtype, device=lengths.device)
    return torch.cat([zero, torch.cumsum(lengths, 0, dtype=lengths.dtype)])


def jagged_to_padded_dense(values: torch.Tensor, offsets: torch.Tensor, max_len: int,
                           padding_value: float = 0.0) -> torch.Tensor:
    """values (L, D), offsets (B + 1,) -> (B, max_len, D) in values' dtype."""
    check_offsets(offsets, values.shape[0] if values.dim() == 2 else None)
    check_values(values, offsets, "values", 2)
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    L, D = values.shape
    B = offsets.shape[0] - 1
    o = index_on(offsets, values.device).to(torch.int64)
    t = torch.arange(max_len, device=values.device, dtype=torch.int64).view(1, max_len)
    valid = (t < (o[1:] - o[:-1]).view(B, 1)).to(torch.int64)
    # Invalid positions read row L: the appended padding row.
    idx = ((o[:-1].view(B, 1) + t) * valid + L * (1 - valid)).clamp(0, L)  # clamp: unchecked offsets stay in bounds
    pad_row = torch.full((1, D), padding_value, dtype=values.dtype, device=values.device)
    table = torch.cat([values, pad_row], 0)
    return table.index_select(0, idx.reshape(-1)).view(B, max_len, D)


def check_padded_dense_inputs(dense: torch.Tensor, offsets: torch.Tensor, total_len: int) -> None:
    """Raise ValueError naming the argument unless dense (B, N, D) and offsets (B + 1,) fit total_len rows."""
    check_offsets(offsets, total_len)
    check_values(dense, offsets, "dense", 3)
    B = dense.shape[0]
    if offsets.shape[0] != B + 1:
        raise ValueError(f"offsets must have shape (B + 1,) = ({B + 1},) for dense (B, N, D), got {tuple(offsets.shape)}")
    if total_len < 0:
        raise ValueError(f"total_len must be >= 0, got {total_len}")


def padded_dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor, total_len: int) -> torch.Tensor:
    """dense (B, N, D), offsets (B + 1,) -> (total_len, D) in dense's dtype."""
    check_padded_dense_inputs(dense, offsets, total_len)
    B, N, D = dense.shape
    o = index_on(offsets, dense.device).to(torch.int64)
    rows = torch.arange(total_len, device=dense.device, dtype=torch.int64)
    seg = (torch.searchsorted(o, rows, right=True) - 1).clamp(0, max(B - 1, 0))
    t = rows - o.index_select(0, seg)
    valid = ((t < N) & (rows < o[-1])).to(torch.int64)
    # Invalid rows read row B * N: the appended zero row.
    idx = ((seg * N + t) * valid + (B * N) * (1 - valid)).clamp(0, B * N)
    table = torch.cat([dense.reshape(B * N, D), dense.new_zeros(1, D)], 0)
    return table.index_select(0, idx)
