"""Embedding-bag tables trained by row-wise Adagrad inside their backward (FBGEMM-style optimizer in backward).

    ebc = FusedEmbeddingBagCollection([EmbeddingBagConfig("user", 10**6, 128), ...],
                                      optimizer=RowWiseAdagradConfig(lr=0.01))
    pooled = ebc({"user": (indices, offsets), ...})     # (B, sum of D) in table order
    loss.backward()                                       # the tables are updated here; no .grad, no opt.step()

Tables with the same (embedding_dim, pooling) share one concatenated weight (a Parameter, fp32/fp16/bf16) and
one float32 row accumulator (a buffer), and run as one op: the forward is a pooled lookup, the backward is
recsys_kernels.ops.embedding_bag_backward_rowwise_adagrad_, which updates the rows in place straight from the
pooled gradient and passes no gradient on (the weights' ``.grad`` stays None, so a dense optimizer over
``model.parameters()`` skips them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from recsys_kernels.nn.embedding_config import EmbeddingBagConfig, check_features, pooled_in_table_order
from recsys_kernels.ops.rowwise_adagrad import embedding_bag_rowwise_adagrad
from recsys_kernels.optim.rowwise_adagrad import RowWiseAdagradConfig

__all__ = ["FusedEmbeddingBagCollection"]

Features = Mapping[str, tuple[torch.Tensor, ...]]


class FusedEmbeddingBagCollection(torch.nn.Module):
    """Pooled embedding-bag lookups for ``tables`` whose backward applies row-wise Adagrad.

    forward(features): features[name] = (indices (N_t,) int32|int64, offsets (B + 1,) int32|int64 from 0 to N_t)
    or (indices, offsets, per_sample_weights (N_t,)) for "sum" tables; every table needs the same B. Returns
    (B, sum of embedding_dim) with table t's pooled rows in its columns, in the order of ``tables``.
    Rows are initialised uniform in ±sqrt(1 / num_embeddings) (torchrec's default); ``seed`` fixes them.
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], optimizer: RowWiseAdagradConfig | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 seed: int | None = None):
        super().__init__()
        if not tables:
            raise ValueError("tables must name at least one EmbeddingBagConfig")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be unique, got {names}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.tables = list(tables)
        self.optimizer = optimizer or RowWiseAdagradConfig()
        self._sr_step = 0
        groups: dict[tuple[int, str], list[EmbeddingBagConfig]] = {}
        for t in self.tables:
            groups.setdefault((t.embedding_dim, t.pooling), []).append(t)
        self._groups = list(groups.values())
        self._where: dict[str, tuple[int, int]] = {}  # table -> (group, position in group)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for g, members in enumerate(self._groups):
            rows = [t.num_embeddings for t in members]
            starts = [0]
            for n in rows:
                starts.append(starts[-1] + n)
            weight = torch.empty(starts[-1], members[0].embedding_dim, dtype=torch.float32)
            for k, (t, lo, hi) in enumerate(zip(members, starts[:-1], starts[1:])):
                bound = (1.0 / t.num_embeddings) ** 0.5
                weight[lo:hi].uniform_(-bound, bound, generator=gen)
                self._where[t.name] = (g, k)
            self.register_parameter(f"weights_{g}", torch.nn.Parameter(weight.to(device=device, dtype=dtype)))
            self.register_buffer(f"momentum_{g}", torch.zeros(starts[-1], dtype=torch.float32, device=device))
            self.register_buffer(f"table_offsets_{g}", torch.tensor(starts, dtype=torch.int64, device=device),
                                 persistent=False)

    @property
    def output_dim(self) -> int:
        return sum(t.embedding_dim for t in self.tables)

    def parameter_name(self, table: str) -> str:
        """Name of the Parameter holding ``table`` (shared with the other tables of its group)."""
        return f"weights_{self._where[table][0]}"

    def _table_slice(self, table: str) -> tuple[int, slice]:
        g, k = self._where[table]
        starts = [0]
        for t in self._groups[g]:
            starts.append(starts[-1] + t.num_embeddings)
        return g, slice(starts[k], starts[k + 1])

    def split_embedding_weights(self) -> dict[str, torch.Tensor]:
        """table name -> (num_embeddings, embedding_dim) view of its rows (detached)."""
        out = {}
        for t in self.tables:
            g, rows = self._table_slice(t.name)
            out[t.name] = getattr(self, f"weights_{g}").detach()[rows]
        return out

    def split_optimizer_states(self) -> dict[str, torch.Tensor]:
        """table name -> (num_embeddings,) view of its float32 row accumulators."""
        out = {}
        for t in self.tables:
            g, rows = self._table_slice(t.name)
            out[t.name] = getattr(self, f"momentum_{g}")[rows]
        return out

    def _next_seed(self, weight: torch.Tensor) -> int | None:
        if not self.optimizer.stochastic_rounding or weight.dtype == torch.float32:
            return None
        self._sr_step += 1
        return self._sr_step

    def forward(self, features: Features) -> torch.Tensor:
        features = check_features(self.tables, features)
        outs: list[torch.Tensor] = []
        opt = self.optimizer
        for g, members in enumerate(self._groups):
            weight = getattr(self, f"weights_{g}")
            indices, offsets, psw = [], [torch.zeros(1, dtype=torch.int64, device=weight.device)], []
            total = 0
            has_psw = any(len(features[t.name]) == 3 for t in members)
            for t in members:
                idx, off = features[t.name][0], features[t.name][1].to(torch.int64)
                indices.append(idx.to(torch.int64))
                offsets.append(off[1:] + total)
                total += idx.shape[0]
                if has_psw:
                    psw.append(features[t.name][2] if len(features[t.name]) == 3
                               else torch.ones(idx.shape[0], dtype=torch.float32, device=idx.device))
            outs.append(embedding_bag_rowwise_adagrad(
                weight, getattr(self, f"momentum_{g}"), torch.cat(indices), torch.cat(offsets),
                table_offsets=getattr(self, f"table_offsets_{g}"), pooling=members[0].pooling,
                per_sample_weights=torch.cat(psw).to(weight.dtype) if has_psw else None, lr=opt.lr, eps=opt.eps,
                weight_decay=opt.weight_decay, weight_decay_mode=opt.weight_decay_mode,
                stochastic_rounding_seed=self._next_seed(weight)))
        return pooled_in_table_order(outs, self._groups, self.tables)

    def get_extra_state(self) -> dict[str, Any]:
        return {"stochastic_rounding_step": self._sr_step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._sr_step = int(state.get("stochastic_rounding_step", 0))

    def extra_repr(self) -> str:
        tables = ", ".join(f"{t.name}({t.num_embeddings}x{t.embedding_dim}, {t.pooling})" for t in self.tables)
        return f"tables=[{tables}], optimizer={self.optimizer}"
