"""Row-wise Adagrad for sparse embedding tables (FBGEMM's EXACT_ROWWISE_ADAGRAD), as a torch optimizer and
as the config of the optimizer-in-backward embedding-bag collection.

    opt = RowWiseAdagrad(embedding.parameters(), lr=0.01)   # nn.Embedding(..., sparse=True) etc.
    loss.backward(); opt.step()

Each parameter is an (E, D) table with a sparse COO gradient (``nn.Embedding(sparse=True)``,
``nn.EmbeddingBag(sparse=True)``); its state is one float32 accumulator per row (``state["momentum"]``, (E,)).
A step updates only the rows present in the gradient; duplicate rows in an uncoalesced gradient are summed by
the op (no ``coalesce()`` needed). The update is recsys_kernels.ops.rowwise_adagrad_update_, which picks its
backend from the parameter's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from recsys_kernels.ops.rowwise_adagrad import rowwise_adagrad_update_
from recsys_kernels.reference.rowwise_adagrad import check_hyper

__all__ = ["RowWiseAdagrad", "RowWiseAdagradConfig"]


@dataclass(frozen=True)
class RowWiseAdagradConfig:
    """Hyper-parameters of row-wise Adagrad, for modules that apply it inside their backward
    (recsys_kernels.nn.FusedEmbeddingBagCollection). ``stochastic_rounding`` rounds fp16/bf16 weights
    stochastically (a new deterministic seed every step)."""

    lr: float = 0.01
    eps: float = 1e-8
    weight_decay: float = 0.0
    weight_decay_mode: str = "none"
    stochastic_rounding: bool = False

    def __post_init__(self) -> None:
        check_hyper(self.lr, self.eps, self.weight_decay, self.weight_decay_mode, -1)


class RowWiseAdagrad(torch.optim.Optimizer):
    """Exact row-wise Adagrad for (E, D) embedding tables with sparse gradients.

    For every row r in the gradient, with g its summed gradient row:
    ``m_r += mean(g'²)``, ``w_r = correction · w_r − lr / (sqrt(m_r) + eps) · g``; weight_decay_mode "none",
    "l2" (g' = g + weight_decay · w_r, correction = 1 − multiplier · weight_decay) or "decoupled"
    (correction = 1 − lr · weight_decay), as FBGEMM defines them. Rows absent from the gradient are untouched.
    Dense gradients raise a ValueError (use ``sparse=True`` on the embedding module).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, eps: float = 1e-8, weight_decay: float = 0.0,
                 weight_decay_mode: str = "none"):
        check_hyper(lr, eps, weight_decay, weight_decay_mode, -1)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad: parameters must be 2-D embedding tables (E, D), got shape "
                                     f"{tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            check_hyper(group["lr"], group["eps"], group["weight_decay"], group["weight_decay_mode"], -1)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise ValueError(f"RowWiseAdagrad takes sparse gradients (nn.Embedding(sparse=True), "
                                     f"nn.EmbeddingBag(sparse=True)); the parameter of shape {tuple(p.shape)} has a "
                                     f"dense gradient")
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                values = grad._values()
                if values.dtype not in (p.dtype, torch.float32):
                    values = values.to(p.dtype)
                rowwise_adagrad_update_(p, state["momentum"], grad._indices()[0], values, lr=group["lr"],
                                        eps=group["eps"], weight_decay=group["weight_decay"],
                                        weight_decay_mode=group["weight_decay_mode"])
        return loss
