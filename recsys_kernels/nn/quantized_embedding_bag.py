"""INT4 embedding-bag collections: quantization-aware training, and the INT4 tables it exports for inference.

    qat = QATEmbeddingBagCollection([EmbeddingBagConfig("user", 10**6, 128), ...], qparams="row")
    pooled = qat({"user": (indices, offsets), ...})     # (B, sum of D) in table order; or a torchrec KJT
    loss.backward()                                      # weights get sparse COO gradients (SparseAdam, ...)
    int4 = qat.to_int4()                                 # Int4EmbeddingBagCollection: int4(features) == qat(features)

QATEmbeddingBagCollection keeps float32 master rows (a Parameter per group of tables with the same
(embedding_dim, pooling)) and looks them up with recsys_kernels.ops.qat_embedding_bag: every looked-up row is
fake-quantized to INT4 inside the kernel ("row": per-row asymmetric, FBGEMM's INT4 row format; "table": DQRM's
per-table symmetric scale max|W_t| / 7, held in a buffer and refreshed every ``scale_refresh_every`` training
forwards, and at construction and loading), and the straight-through estimator gives each weight a sparse
gradient. ``to_int4()`` writes the tables in FBGEMM's INT4 row layout; the Int4EmbeddingBagCollection it returns
groups tables the same way and pools with the same arithmetic, so its output equals the QAT forward exactly
(bit for bit, on every backend).

Int4EmbeddingBagCollection holds one (E_g, row_bytes(D)) uint8 buffer per group and looks the group's tables
up in one int4_embedding_bag launch (TBE batching). Both modules save and load through ``state_dict``; saved
tensors are moved to the CPU first (Gaudi refuses to serialise device tensors), and ``load_state_dict`` copies
them back to wherever the module lives.

Features: ``{name: (indices (N_t,), offsets (B + 1,)[, per_sample_weights (N_t,)])}`` with offsets from 0 to
N_t and the same B for every table, or a torchrec ``KeyedJaggedTensor`` (anything with ``to_dict()`` giving
jagged tensors with values(), offsets() and weights_or_none()).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from recsys_kernels.nn.embedding_config import EmbeddingBagConfig, check_features, pooled_in_table_order
from recsys_kernels.ops.int4_embedding_bag import int4_embedding_bag, quantize_int4_rows, row_bytes
from recsys_kernels.ops.qat_embedding_bag import qat_embedding_bag, table_scales
from recsys_kernels.reference.qat_embedding_bag import QPARAMS, table_int4_rows

__all__ = ["Int4EmbeddingBagCollection", "QATEmbeddingBagCollection"]

Features = Mapping[str, tuple[torch.Tensor, ...]]


def _check_tables(tables: Sequence[EmbeddingBagConfig]) -> list[EmbeddingBagConfig]:
    if not tables:
        raise ValueError("tables must name at least one EmbeddingBagConfig")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"table names must be unique, got {names}")
    for t in tables:
        if t.embedding_dim % 2:
            raise ValueError(f"embedding_dim of table {t.name!r} must be even for INT4 rows, got {t.embedding_dim}")
    return list(tables)


class _GroupedTables(torch.nn.Module):
    """Tables grouped by (embedding_dim, pooling): each group is one op call over its concatenated tables."""

    def __init__(self, tables: Sequence[EmbeddingBagConfig], device: torch.device | str | None):
        super().__init__()
        self.tables = _check_tables(tables)
        groups: dict[tuple[int, str], list[EmbeddingBagConfig]] = {}
        for t in self.tables:
            groups.setdefault((t.embedding_dim, t.pooling), []).append(t)
        self._groups = list(groups.values())
        self._where: dict[str, tuple[int, int]] = {}
        self._starts: list[list[int]] = []
        for g, members in enumerate(self._groups):
            starts = [0]
            for k, t in enumerate(members):
                starts.append(starts[-1] + t.num_embeddings)
                self._where[t.name] = (g, k)
            self._starts.append(starts)
            self.register_buffer(f"table_offsets_{g}", torch.tensor(starts, dtype=torch.int64, device=device),
                                 persistent=False)

    @property
    def output_dim(self) -> int:
        return sum(t.embedding_dim for t in self.tables)

    def _table_rows(self, name: str) -> tuple[int, slice]:
        g, k = self._where[name]
        return g, slice(self._starts[g][k], self._starts[g][k + 1])

    def _batch(self, features: Any, g: int, device: torch.device):
        """(indices, offsets (T_g*B + 1,) table-major, per_sample_weights | None) of group g, and B."""
        members = self._groups[g]
        indices, offsets, psw = [], [torch.zeros(1, dtype=torch.int64, device=device)], []
        has_psw = any(len(features[t.name]) == 3 for t in members)
        same_dtype = len({features[t.name][0].dtype for t in members}) == 1
        total = 0
        for t in members:
            idx, off = features[t.name][0], features[t.name][1]
            indices.append(idx if same_dtype else idx.to(torch.int64))
            offsets.append(off[1:].to(torch.int64) + total)
            total += idx.shape[0]
            if has_psw:
                psw.append(features[t.name][2].to(torch.float32) if len(features[t.name]) == 3
                           else torch.ones(idx.shape[0], dtype=torch.float32, device=idx.device))
        return torch.cat(indices), torch.cat(offsets), (torch.cat(psw) if has_psw else None)

    def _check_features(self, features: Any) -> dict[str, tuple[torch.Tensor, ...]]:
        return check_features(self.tables, features)

    def _assemble(self, outs: list[torch.Tensor]) -> torch.Tensor:
        return pooled_in_table_order(outs, self._groups, self.tables)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not keep_vars:  # saved tensors live on the CPU (Gaudi cannot serialise device tensors)
            for key in list(destination):
                if key.startswith(prefix) and isinstance(destination[key], torch.Tensor):
                    destination[key] = destination[key].cpu()

    def extra_repr(self) -> str:
        return ", ".join(f"{t.name}({t.num_embeddings}x{t.embedding_dim}, {t.pooling})" for t in self.tables)


class QATEmbeddingBagCollection(_GroupedTables):
    """Float32 embedding-bag tables trained with INT4 fake quantization (see the module docstring).

    tables: EmbeddingBagConfig list (even dims); qparams: "row" or "table"; scale_refresh_every: k, the number
    of training forwards between refreshes of the "table" scales; bounds_check: "error" or "ignore" (see
    int4_embedding_bag). Rows start uniform in ±sqrt(1 / num_embeddings) (torchrec's default); ``seed`` fixes
    them. forward(features) -> (B, sum of D) float32, tables in the order given.
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], qparams: str = "row", scale_refresh_every: int = 100,
                 bounds_check: str = "error", device: torch.device | str | None = None, seed: int | None = None):
        super().__init__(tables, device)
        if qparams not in QPARAMS:
            raise ValueError(f"qparams must be 'row' or 'table', got {qparams!r}")
        if scale_refresh_every < 1:
            raise ValueError(f"scale_refresh_every must be >= 1, got {scale_refresh_every}")
        self.qparams, self.scale_refresh_every, self.bounds_check = qparams, scale_refresh_every, bounds_check
        self._step = 0
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for g, members in enumerate(self._groups):
            weight = torch.empty(self._starts[g][-1], members[0].embedding_dim, dtype=torch.float32)
            for t, lo, hi in zip(members, self._starts[g][:-1], self._starts[g][1:]):
                bound = (1.0 / t.num_embeddings) ** 0.5
                weight[lo:hi].uniform_(-bound, bound, generator=gen)
            self.register_parameter(f"weights_{g}", torch.nn.Parameter(weight.to(device)))
            self.register_buffer(f"table_scale_{g}", torch.zeros(len(members), dtype=torch.float32, device=device))
        self.refresh_scales()

    def weight(self, table: str) -> torch.Tensor:
        """(num_embeddings, embedding_dim) view of ``table``'s master rows (detached)."""
        g, rows = self._table_rows(table)
        return getattr(self, f"weights_{g}").detach()[rows]

    @torch.no_grad()
    def refresh_scales(self) -> None:
        """Recompute the "table" scales max|W_t| / 7 from the current rows (reads every row)."""
        for g in range(len(self._groups)):
            weight = getattr(self, f"weights_{g}")
            getattr(self, f"table_scale_{g}").copy_(table_scales(weight, getattr(self, f"table_offsets_{g}")))

    def forward(self, features: Any) -> torch.Tensor:
        features = self._check_features(features)
        if self.qparams == "table" and self.training:
            if self._step % self.scale_refresh_every == 0:
                self.refresh_scales()
            self._step += 1
        outs = []
        for g, members in enumerate(self._groups):
            weight = getattr(self, f"weights_{g}")
            indices, offsets, psw = self._batch(features, g, weight.device)
            outs.append(qat_embedding_bag(
                weight, indices, offsets, table_offsets=getattr(self, f"table_offsets_{g}"),
                pooling=members[0].pooling, per_sample_weights=psw, qparams=self.qparams,
                table_scale=getattr(self, f"table_scale_{g}") if self.qparams == "table" else None,
                bounds_check=self.bounds_check))
        return self._assemble(outs)

    @torch.no_grad()
    def int4_rows(self, table: str) -> torch.Tensor:
        """``table`` as (num_embeddings, row_bytes(D)) uint8 INT4 rows holding its fake-quantized values."""
        g, k = self._where[table]
        w = self.weight(table)
        if self.qparams == "row":
            return quantize_int4_rows(w)
        return table_int4_rows(w, getattr(self, f"table_scale_{g}")[k])

    def to_int4(self, bounds_check: str | None = None) -> "Int4EmbeddingBagCollection":
        """Int4EmbeddingBagCollection of these tables (same device) whose output equals this module's forward."""
        device = getattr(self, "weights_0").device
        return Int4EmbeddingBagCollection(self.tables, {t.name: self.int4_rows(t.name) for t in self.tables},
                                          bounds_check=bounds_check or self.bounds_check, device=device)

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self._step, "qparams": self.qparams, "scale_refresh_every": self.scale_refresh_every}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))

    def extra_repr(self) -> str:
        return (f"tables=[{super().extra_repr()}], qparams={self.qparams!r}, "
                f"scale_refresh_every={self.scale_refresh_every}")


class Int4EmbeddingBagCollection(_GroupedTables):
    """Inference tables in FBGEMM's INT4 row layout, one int4_embedding_bag launch per (dim, pooling) group.

    packed: table name -> (num_embeddings, row_bytes(embedding_dim)) uint8 rows (None: zero rows, to be filled
    by load_state_dict). ``from_float`` quantizes float tables. forward(features) -> (B, sum of D) in
    ``output_dtype`` (float32, float16 or bfloat16).
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], packed: Mapping[str, torch.Tensor] | None = None,
                 output_dtype: torch.dtype = torch.float32, bounds_check: str = "error",
                 device: torch.device | str | None = None):
        super().__init__(tables, device)
        self.output_dtype, self.bounds_check = output_dtype, bounds_check
        for g, members in enumerate(self._groups):
            rb = row_bytes(members[0].embedding_dim)
            parts = []
            for t in members:
                rows = torch.zeros(t.num_embeddings, rb, dtype=torch.uint8) if packed is None else packed[t.name]
                if rows.shape != (t.num_embeddings, rb) or rows.dtype != torch.uint8:
                    raise ValueError(f"packed[{t.name!r}] must be ({t.num_embeddings}, {rb}) uint8 INT4 rows, "
                                     f"got {tuple(rows.shape)} {rows.dtype}")
                parts.append(rows.to(device) if device is not None else rows)
            self.register_buffer(f"packed_{g}", torch.cat(parts).contiguous())

    @classmethod
    def from_float(cls, tables: Sequence[EmbeddingBagConfig], weights: Mapping[str, torch.Tensor],
                   **kwargs: Any) -> "Int4EmbeddingBagCollection":
        """Quantize float tables weights[name] (num_embeddings, embedding_dim) row-wise to INT4."""
        return cls(tables, {t.name: quantize_int4_rows(weights[t.name]) for t in tables}, **kwargs)

    def int4_rows(self, table: str) -> torch.Tensor:
        """(num_embeddings, row_bytes(D)) uint8 view of ``table``'s rows."""
        g, rows = self._table_rows(table)
        return getattr(self, f"packed_{g}")[rows]

    def forward(self, features: Any) -> torch.Tensor:
        features = self._check_features(features)
        outs = []
        for g, members in enumerate(self._groups):
            packed = getattr(self, f"packed_{g}")
            indices, offsets, psw = self._batch(features, g, packed.device)
            outs.append(int4_embedding_bag(
                packed, indices, offsets, D=members[0].embedding_dim, table_offsets=getattr(self, f"table_offsets_{g}"),
                pooling=members[0].pooling, per_sample_weights=psw, output_dtype=self.output_dtype,
                bounds_check=self.bounds_check))
        return self._assemble(outs)

    def extra_repr(self) -> str:
        return f"tables=[{super().extra_repr()}], output_dtype={self.output_dtype}"
