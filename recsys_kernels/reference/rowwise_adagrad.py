"""Exact row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD), reference implementation (also the HPU path
and the test oracle).

For every distinct row r touched by a step, with g the sum of the gradient rows of its occurrences:

    g' = g + weight_decay * w_r            ("l2"; g' = g for "none" and "decoupled")
    m_r += mean_d(g'²)
    multiplier = lr / (sqrt(m_r) + eps)
    correction = 1 - multiplier * weight_decay ("l2"), 1 - lr * weight_decay ("decoupled"), 1 ("none")
    w_r = correction * w_r - multiplier * g

(fbgemm_gpu/codegen/genscript/optimizers.py, ``rowwise_adagrad``, weight_decay_mode 0 / 1 / 2.)
Rows not touched are neither read nor written.

Static shapes (DESIGN.md, Gaudi TPC rules): the N occurrences are sorted by row with a stable sort of fixed
length N, runs of equal rows get a segment id by a cumulative sum, gradients are summed per segment with
``index_add_`` into an (N, D) buffer, and every occurrence then computes its row's new value; duplicates of a
row compute bit-identical values, so ``index_put_`` with the duplicated indices writes a well-defined result.
No ``unique``, ``nonzero`` or ``.item()`` on this path. Value checks (index range, offsets) run eagerly on
CPU/CUDA tensors only, before anything is written, and are skipped under tracing (torch.compile / export).
On CUDA the segment sums use ``index_add_``, whose float atomics make the reference bit-reproducible only
under ``torch.use_deterministic_algorithms(True)``; the fused kernels are always deterministic.
"""

from __future__ import annotations

import torch

from recsys_kernels.reference.int4_embedding_bag import bag_ids  # noqa: F401 (re-exported)

WEIGHT_DECAY_MODES = ("none", "l2", "decoupled")
POOLINGS = ("sum", "mean")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MASK32 = 0xFFFFFFFF

__all__ = [
    "POOLINGS",
    "WEIGHT_DECAY_MODES",
    "embedding_bag_backward_rowwise_adagrad_",
    "embedding_bag_grad_rows",
    "rowwise_adagrad_update_",
]


# ----------------------------------------------------------------------------------------------- checks

def check_hyper(lr: float, eps: float, weight_decay: float, weight_decay_mode: str,
                stochastic_rounding_seed: int) -> None:
    """Raise ValueError naming the argument for a bad hyper-parameter."""
    for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        if not (value >= 0 and value < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be 'none', 'l2' or 'decoupled', got {weight_decay_mode!r}")
    if stochastic_rounding_seed < -1:
        raise ValueError(f"stochastic_rounding_seed must be -1 (off) or >= 0, got {stochastic_rounding_seed}")


def check_state(weight: torch.Tensor, momentum: torch.Tensor) -> None:
    """weight (E, D) contiguous float; momentum (E,) float32 (float64 allowed beside a float64 weight)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (E, D), got {tuple(weight.shape)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"weight must be float32, float16, bfloat16 (or float64), got {weight.dtype}")
    if weight.shape[1] < 1:
        raise ValueError(f"weight must have at least one column (D >= 1), got {tuple(weight.shape)}")
    if not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous (it is updated in place), got strides {weight.stride()}")
    if momentum.dim() != 1:
        raise ValueError(f"momentum must have shape (E,), got {tuple(momentum.shape)}")
    if not (momentum.dtype == torch.float32 or (weight.dtype == torch.float64 and momentum.dtype == torch.float64)):
        raise ValueError(f"momentum must be float32 (float64 only beside a float64 weight), got {momentum.dtype}")
    if momentum.shape[0] != weight.shape[0]:
        raise ValueError(f"momentum must have shape (E,) = ({weight.shape[0]},) like weight's rows, "
                         f"got {tuple(momentum.shape)}")
    if not momentum.is_contiguous():
        raise ValueError("momentum must be contiguous (it is updated in place)")
    if momentum.device != weight.device:
        raise ValueError(f"weight and momentum must be on the same device, got {weight.device} and {momentum.device}")


def _check_index(t: torch.Tensor, name: str, weight: torch.Tensor, shape: str) -> None:
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.device != weight.device:
        raise ValueError(f"weight and {name} must be on the same device, got {weight.device} and {t.device}")


def _check_grad(t: torch.Tensor, name: str, weight: torch.Tensor) -> None:
    if t.dtype != weight.dtype and t.dtype != torch.float32:
        raise ValueError(f"{name} must have weight's dtype ({weight.dtype}) or float32, got {t.dtype}")
    if t.device != weight.device:
        raise ValueError(f"weight and {name} must be on the same device, got {weight.device} and {t.device}")


def check_update_inputs(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                        grad_rows: torch.Tensor) -> None:
    """Shapes, dtypes and devices of rowwise_adagrad_update_ (no data is read)."""
    check_state(weight, momentum)
    _check_index(indices, "indices", weight, "(N,)")
    if grad_rows.dim() != 2 or grad_rows.shape[0] != indices.shape[0] or grad_rows.shape[1] != weight.shape[1]:
        raise ValueError(f"grad_rows must have shape (N, D) = ({indices.shape[0]}, {weight.shape[1]}), "
                         f"got {tuple(grad_rows.shape)}")
    _check_grad(grad_rows, "grad_rows", weight)


def fused_shape(offsets: torch.Tensor, table_offsets: torch.Tensor | None) -> tuple[int, int]:
    """(T, B) of the table-major bags."""
    T = 1 if table_offsets is None else table_offsets.shape[0] - 1
    return T, (offsets.shape[0] - 1) // max(T, 1)


def check_fused_inputs(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                       grad_output: torch.Tensor | None, table_offsets: torch.Tensor | None, pooling: str,
                       per_sample_weights: torch.Tensor | None) -> tuple[int, int]:
    """Shapes, dtypes and devices of embedding_bag_backward_rowwise_adagrad_ (grad_output None: of the
    forward lookup); returns (T, B)."""
    check_state(weight, momentum)
    _check_index(indices, "indices", weight, "(N,)")
    _check_index(offsets, "offsets", weight, "(T*B + 1,)")
    if offsets.shape[0] < 1:
        raise ValueError("offsets must have at least one element (T*B + 1), got none")
    if table_offsets is not None:
        _check_index(table_offsets, "table_offsets", weight, "(T + 1,)")
        if table_offsets.shape[0] < 2:
            raise ValueError(f"table_offsets must have shape (T + 1,) with T >= 1, got {tuple(table_offsets.shape)}")
    T, B = fused_shape(offsets, table_offsets)
    if (offsets.shape[0] - 1) % T:
        raise ValueError(f"offsets must have T*B + 1 elements for T = {T} tables, got {offsets.shape[0]}")
    D = weight.shape[1]
    if grad_output is not None:
        if grad_output.dim() != 2 or grad_output.shape[0] != B or grad_output.shape[1] != T * D:
            raise ValueError(f"grad_output must have shape (B, T*D) = ({B}, {T * D}), "
                             f"got {tuple(grad_output.shape)}")
        _check_grad(grad_output, "grad_output", weight)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
    if per_sample_weights is not None:
        if pooling != "sum":
            raise ValueError("per_sample_weights is only supported with pooling='sum'")
        if per_sample_weights.dim() != 1 or per_sample_weights.shape[0] != indices.shape[0]:
            raise ValueError(f"per_sample_weights must have shape (N,) = ({indices.shape[0]},), "
                             f"got {tuple(per_sample_weights.shape)}")
        if per_sample_weights.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"per_sample_weights must be float32, float16, bfloat16 (or float64), "
                             f"got {per_sample_weights.dtype}")
        if per_sample_weights.device != weight.device:
            raise ValueError(f"weight and per_sample_weights must be on the same device, "
                             f"got {weight.device} and {per_sample_weights.device}")
    return T, B


def is_traced(t: torch.Tensor) -> bool:
    """True under torch.compile / export tracing (fake or meta tensors): data cannot be read."""
    return (torch.compiler.is_compiling() or t.device.type == "meta"
            or torch._subclasses.fake_tensor.is_fake(t))


def check_update_values(weight: torch.Tensor, indices: torch.Tensor) -> None:
    """Every index in [0, E). Reads data (one device sync): eager CPU/CUDA only."""
    E = weight.shape[0]
    if indices.numel() == 0:
        return
    bad = (indices < 0) | (indices >= E)
    if bool(bad.any()):
        p = int(torch.argmax(bad.to(torch.int8)))
        raise ValueError(f"indices[{p}] = {int(indices[p])} is out of range for weight with E = {E} rows")


def check_fused_values(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                       table_offsets: torch.Tensor | None, T: int, B: int) -> None:
    """offsets from 0 to N and non-decreasing, table_offsets within [0, E] and non-decreasing, every index
    within its table. Reads data (a few device syncs): eager CPU/CUDA only."""
    E, N = weight.shape[0], indices.shape[0]
    tabs = [0, E] if table_offsets is None else table_offsets.tolist()
    if tabs[0] < 0 or tabs[-1] > E:
        raise ValueError(f"table_offsets must lie in [0, E = {E}], got first {tabs[0]} and last {tabs[-1]}")
    for t in range(T):
        if tabs[t] > tabs[t + 1]:
            raise ValueError(f"table_offsets must be non-decreasing, got {tabs[t]} then {tabs[t + 1]} at table {t}")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != N:
        raise ValueError(f"offsets must start at 0 and end at N = {N}, got {first} and {last}")
    steps = offsets[1:] - offsets[:-1]
    if steps.numel() and bool((steps < 0).any()):
        k = int(torch.argmax((steps < 0).to(torch.int8)))
        raise ValueError(f"offsets must be non-decreasing, got {int(offsets[k])} then {int(offsets[k + 1])} at bag {k}")
    if N == 0:
        return
    table = torch.div(bag_ids(offsets, N), B, rounding_mode="floor")
    tab = torch.tensor(tabs, dtype=torch.int64, device=indices.device)
    rows_of_table = (tab[1:] - tab[:-1]).index_select(0, table)
    bad = (indices < 0) | (indices.to(torch.int64) >= rows_of_table)
    if bool(bad.any()):
        p = int(torch.argmax(bad.to(torch.int8)))
        raise ValueError(f"indices[{p}] = {int(indices[p])} is out of range for table {int(table[p])} "
                         f"with {int(rows_of_table[p])} rows")


# --------------------------------------------------------------------------------- stochastic rounding

def mix32(x):
    """The 32-bit 'lowbias32' finaliser, on Python ints or int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def sr_key(seed: int) -> int:
    """Per-call key of a stochastic-rounding seed (the same in every backend)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    return mix32((s & _MASK32) ^ mix32(s >> 32))


def stochastic_round(x: torch.Tensor, rows: torch.Tensor, key: int, dtype: torch.dtype) -> torch.Tensor:
    """x (N, D) float32 -> dtype (float16 | bfloat16), rounding up with probability equal to the dropped
    fraction; the random bits hash (key, row, column), so the result is deterministic given the seed."""
    drop = 16 if dtype == torch.bfloat16 else 13
    r = rows.to(torch.int64)
    row_key = mix32(mix32((r & _MASK32) ^ key) ^ ((r >> 32) & _MASK32))
    d = torch.arange(x.shape[1], device=x.device, dtype=torch.int64)
    rnd = mix32(row_key[:, None] ^ d[None, :])
    bits = x.contiguous().view(torch.int32).to(torch.int64) & _MASK32
    mask = (1 << drop) - 1
    rounded = ((bits + (rnd & mask)) & (_MASK32 ^ mask))
    special = (bits & 0x7F800000) == 0x7F800000
    rounded = torch.where(special, bits, rounded)
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32)
    return rounded.view(torch.float32).to(dtype)


# ------------------------------------------------------------------------------------------------ update

def _acc_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _apply(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor, g_occ: torch.Tensor, lr: float,
           eps: float, weight_decay: float, weight_decay_mode: str, stochastic_rounding_seed: int) -> None:
    """rows (N,) int64, g_occ (N, D) in the accumulation dtype: one gradient row per occurrence."""
    N, D = g_occ.shape
    acc = g_occ.dtype
    sorted_rows, perm = torch.sort(rows, stable=True)
    is_start = torch.ones(N, dtype=torch.int64, device=rows.device)
    is_start[1:] = (sorted_rows[1:] != sorted_rows[:-1]).to(torch.int64)
    segment = torch.cumsum(is_start, 0) - 1
    # Segment sums in sorted (= ascending position) order: row r's gradient, once per occurrence of r.
    g_seg = torch.zeros(N, D, dtype=acc, device=rows.device).index_add_(0, segment, g_occ.index_select(0, perm))
    g = g_seg.index_select(0, segment)
    w = weight.index_select(0, sorted_rows).to(acc)
    m = momentum.index_select(0, sorted_rows).to(acc)
    if weight_decay_mode == "l2":
        gg = g + weight_decay * w
        sum_sq = (gg * gg).sum(1)
    else:
        sum_sq = (g * g).sum(1)
    m_new = m + sum_sq / D
    multiplier = lr / (torch.sqrt(m_new) + eps)
    if weight_decay_mode == "l2":
        correction = 1.0 - multiplier * weight_decay
    elif weight_decay_mode == "decoupled":
        correction = torch.full_like(multiplier, 1.0 - lr * weight_decay)
    else:
        correction = torch.ones_like(multiplier)
    w_new = correction[:, None] * w - multiplier[:, None] * g
    if stochastic_rounding_seed >= 0 and weight.dtype in (torch.float16, torch.bfloat16):
        w_new = stochastic_round(w_new, sorted_rows, sr_key(stochastic_rounding_seed), weight.dtype)
    else:
        w_new = w_new.to(weight.dtype)
    # Duplicates of a row carry identical values, so the duplicated indices write a well-defined result.
    weight.index_put_((sorted_rows,), w_new)
    momentum.index_put_((sorted_rows,), m_new.to(momentum.dtype))


def rowwise_adagrad_update_(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                            grad_rows: torch.Tensor, *, lr: float = 0.01, eps: float = 1e-8,
                            weight_decay: float = 0.0, weight_decay_mode: str = "none",
                            stochastic_rounding_seed: int = -1) -> None:
    """weight (E, D)!, momentum (E,) float32!, indices (N,) int32|int64, grad_rows (N, D) in weight's dtype
    or float32: one row-wise Adagrad step for the rows in ``indices`` (duplicates summed first)."""
    check_update_inputs(weight, momentum, indices, grad_rows)
    check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
    if not is_traced(weight) and weight.device.type in ("cpu", "cuda"):
        check_update_values(weight, indices)
    if indices.shape[0] == 0:
        return
    g = grad_rows.to(_acc_dtype(weight))
    _apply(weight, momentum, indices.to(torch.int64), g, lr, eps, weight_decay, weight_decay_mode,
           stochastic_rounding_seed)


def embedding_bag_grad_rows(indices: torch.Tensor, offsets: torch.Tensor, grad_output: torch.Tensor,
                            table_offsets: torch.Tensor | None = None, pooling: str = "sum",
                            per_sample_weights: torch.Tensor | None = None,
                            dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled embedding-bag backward, materialised: (rows (N,) int64 into the concatenated weight,
    grad_rows (N, D)) with grad_rows[p] = grad_output[b, t*D:(t+1)*D] × per_sample_weights[p]
    (× 1 / bag length for mean pooling) for occurrence p of bag t*B + b. ``dtype`` defaults to float32
    (float64 for float64 grad_output)."""
    N = indices.shape[0]
    T, B = fused_shape(offsets, table_offsets)
    D = grad_output.shape[1] // max(T, 1)
    acc = dtype or (torch.float64 if grad_output.dtype == torch.float64 else torch.float32)
    bag = bag_ids(offsets, N)
    t = torch.div(bag, max(B, 1), rounding_mode="floor")
    b = bag - t * B
    rows = indices.to(torch.int64)
    if table_offsets is not None:
        rows = rows + table_offsets.to(torch.int64).index_select(0, t)
    g = grad_output.reshape(B * T, D).index_select(0, b * T + t).to(acc)
    if per_sample_weights is not None:
        g = g * per_sample_weights.to(acc)[:, None]
    if pooling == "mean":
        lengths = (offsets[1:] - offsets[:-1]).to(acc)
        inv = 1.0 / lengths.clamp(min=1)
        g = g * inv.index_select(0, bag)[:, None]
    return rows, g


def embedding_bag_backward_rowwise_adagrad_(
        weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
        grad_output: torch.Tensor, *, table_offsets: torch.Tensor | None = None, pooling: str = "sum",
        per_sample_weights: torch.Tensor | None = None, lr: float = 0.01, eps: float = 1e-8,
        weight_decay: float = 0.0, weight_decay_mode: str = "none", stochastic_rounding_seed: int = -1) -> None:
    """Row-wise Adagrad step from the pooled gradient of T tables' embedding bags.

    weight (E, D)!, momentum (E,) float32!, indices (N,) rows local to their table, offsets (T*B + 1,)
    table-major (bag t*B + b), grad_output (B, T*D), table_offsets (T + 1,) row offsets of the tables in
    weight (None: one table), per_sample_weights (N,) (sum pooling only). Empty bags contribute nothing."""
    T, B = check_fused_inputs(weight, momentum, indices, offsets, grad_output, table_offsets, pooling,
                              per_sample_weights)
    check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
    if not is_traced(weight) and weight.device.type in ("cpu", "cuda"):
        check_fused_values(weight, indices, offsets, table_offsets, T, B)
    if indices.shape[0] == 0:
        return
    rows, g = embedding_bag_grad_rows(indices, offsets, grad_output, table_offsets, pooling, per_sample_weights,
                                      _acc_dtype(weight))
    _apply(weight, momentum, rows, g, lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
