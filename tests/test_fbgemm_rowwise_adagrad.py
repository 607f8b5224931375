"""Cross-check against FBGEMM: k steps of SplitTableBatchedEmbeddingBagsCodegen with
OptimType.EXACT_ROWWISE_ADAGRAD on the CPU (fbgemm-gpu-cpu==1.9.0, the ``test`` extra) equal k steps of our
fused op, of FusedEmbeddingBagCollection and of RowWiseAdagrad on sparse nn.EmbeddingBag tables (same tables,
inputs and hyper-parameters; float32 within 1e-5 relative).

fbgemm-gpu-cpu 1.9.0's CPU kernel ignores ``weight_decay`` (it applies the plain update for every
WeightDecayMode: checked by calling fbgemm::split_embedding_backward_codegen_rowwise_adagrad_cpu directly),
so the weight-decay modes are compared only when the installed FBGEMM is found to apply them; otherwise
that test skips saying so, and the modes are covered by the formula tests in tests/ops/test_rowwise_adagrad.py
(FBGEMM's definition: fbgemm_gpu/codegen/genscript/optimizers.py, rowwise_adagrad).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import import_peer

fbgemm_gpu = import_peer("fbgemm_gpu", "pip install fbgemm-gpu-cpu==1.9.0")

import recsys_kernels as rk  # noqa: E402
from recsys_kernels.nn import EmbeddingBagConfig, FusedEmbeddingBagCollection  # noqa: E402
from recsys_kernels.optim import RowWiseAdagrad, RowWiseAdagradConfig  # noqa: E402
from tests.conftest import backend_params, require_backend  # noqa: E402

from fbgemm_gpu.split_embedding_configs import EmbOptimType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (  # noqa: E402
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)

try:  # fbgemm_gpu >= 1.1 keeps the enums under tbe.config
    from fbgemm_gpu.tbe.config.embedding_config import PoolingMode
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
except ImportError:  # pragma: no cover - older layouts
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode, WeightDecayMode

ROWS = (50, 7, 300)  # a table smaller than the batch (many duplicates), and a larger one
D = 16
B = 8
STEPS = 3
LR, EPS = 0.05, 1e-6
_MODES = {"none": WeightDecayMode.NONE, "l2": WeightDecayMode.L2, "decoupled": WeightDecayMode.DECOUPLE}


def make_tbe(pooling: str, weight_decay: float = 0.0, mode: str = "none", seed: int = 0):
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(E, D, EmbeddingLocation.HOST, ComputeDevice.CPU) for E in ROWS],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=LR, eps=EPS, weight_decay=weight_decay,
        weight_decay_mode=_MODES[mode], pooling_mode=PoolingMode.SUM if pooling == "sum" else PoolingMode.MEAN)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in tbe.split_embedding_weights():
            w.copy_(torch.rand(w.shape, generator=g) * 0.2 - 0.1)
    return tbe


def tbe_state(tbe) -> tuple[torch.Tensor, torch.Tensor]:
    weights = torch.cat([w.detach().clone() for w in tbe.split_embedding_weights()])
    momentum = torch.cat([s[0].detach().clone() for s in tbe.split_optimizer_states()])
    return weights, momentum


def batch(step: int, weighted: bool):
    """Table-major bags with empty bags and a heavy head (row = floor(E u³)), plus per-sample weights."""
    g = torch.Generator().manual_seed(100 + step)
    lengths = torch.randint(0, 7, (len(ROWS) * B,), generator=g)
    lengths[3] = 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    parts = []
    for k, n in enumerate(lengths.tolist()):
        E = ROWS[k // B]
        parts.append((E * torch.rand(n, generator=g, dtype=torch.float64) ** 3).long().clamp(max=E - 1))
    indices = torch.cat(parts)
    psw = torch.rand(indices.shape[0], generator=g) if weighted else None
    return indices, offsets, psw


def table_offsets() -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(ROWS).cumsum(0).tolist()])


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours.detach().cpu(), theirs, rtol=1e-5, atol=1e-7, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("pooling,weighted,index_dtype", [("sum", False, torch.int64), ("mean", False, torch.int32),
                                                           ("sum", True, torch.int64)])
def test_fused_op_matches_fbgemm_tbe(device, backend, pooling, weighted, index_dtype):
    require_backend("embedding_bag_backward_rowwise_adagrad_", device, backend)
    tbe = make_tbe(pooling)
    weight, momentum = (t.to(device) for t in tbe_state(tbe))
    for step in range(STEPS):
        indices, offsets, psw = batch(step, weighted)
        out = tbe(indices, offsets, per_sample_weights=psw)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(step))
        out.backward(grad)
        with rk.use_backend(backend):
            rk.ops.embedding_bag_backward_rowwise_adagrad_(
                weight, momentum, indices.to(device, index_dtype), offsets.to(device, index_dtype), grad.to(device),
                table_offsets=table_offsets().to(device), pooling=pooling,
                per_sample_weights=None if psw is None else psw.to(device), lr=LR, eps=EPS)
        w_ref, m_ref = tbe_state(tbe)
        assert_matches(weight, w_ref, f"weights after step {step + 1}")
        assert_matches(momentum, m_ref, f"momentum after step {step + 1}")


def test_fused_collection_matches_fbgemm_tbe():
    tables = [EmbeddingBagConfig(f"t{k}", E, D, "mean") for k, E in enumerate(ROWS)]
    ebc = FusedEmbeddingBagCollection(tables, optimizer=RowWiseAdagradConfig(lr=LR, eps=EPS))
    tbe = make_tbe("mean")
    with torch.no_grad():
        ebc.weights_0.copy_(tbe_state(tbe)[0])
    for step in range(STEPS):
        indices, offsets, _ = batch(step, False)
        out_ref = tbe(indices, offsets)
        features = {}
        for k, t in enumerate(tables):
            lo, hi = offsets[k * B], offsets[(k + 1) * B]
            features[t.name] = (indices[lo:hi], offsets[k * B:(k + 1) * B + 1] - lo)
        out = ebc(features)
        assert_matches(out, out_ref.detach(), f"pooled output at step {step + 1}")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(step))
        out_ref.backward(grad)
        out.backward(grad)
        w_ref, m_ref = tbe_state(tbe)
        assert_matches(ebc.weights_0, w_ref, f"weights after step {step + 1}")
        assert_matches(ebc.momentum_0, m_ref, f"momentum after step {step + 1}")


def test_optimizer_on_sparse_embedding_bags_matches_fbgemm_tbe():
    tbe = make_tbe("sum")
    w0 = tbe_state(tbe)[0].split(list(ROWS))
    bags = [torch.nn.EmbeddingBag(E, D, mode="sum", sparse=True) for E in ROWS]
    for bag, w in zip(bags, w0):
        bag.weight.data.copy_(w)
    opt = RowWiseAdagrad([b.weight for b in bags], lr=LR, eps=EPS)
    for step in range(STEPS):
        indices, offsets, _ = batch(step, False)
        out_ref = tbe(indices, offsets)
        outs = []
        for k, bag in enumerate(bags):
            lo, hi = offsets[k * B], offsets[(k + 1) * B]
            outs.append(bag(indices[lo:hi], offsets[k * B:(k + 1) * B] - lo))
        out = torch.cat(outs, dim=1)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(step))
        out_ref.backward(grad)
        opt.zero_grad()
        out.backward(grad)
        opt.step()
        w_ref, m_ref = tbe_state(tbe)
        assert_matches(torch.cat([b.weight for b in bags]), w_ref, f"weights after step {step + 1}")
        assert_matches(torch.cat([opt.state[b.weight]["momentum"] for b in bags]), m_ref, f"momentum, step {step + 1}")


def _fbgemm_applies_weight_decay() -> bool:
    plain, decayed = make_tbe("sum"), make_tbe("sum", weight_decay=0.5, mode="decoupled")
    indices, offsets, _ = batch(0, False)
    for tbe in (plain, decayed):
        out = tbe(indices, offsets)
        out.backward(torch.ones_like(out))
    return not torch.equal(tbe_state(plain)[0], tbe_state(decayed)[0])


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_modes_match_fbgemm_tbe(mode):
    if not _fbgemm_applies_weight_decay():
        pytest.skip(f"fbgemm_gpu {fbgemm_gpu.__version__}'s CPU TBE ignores weight_decay (its rowwise_adagrad CPU "
                    "kernel applies the plain update), so it cannot arbitrate the weight-decay modes here")
    tbe = make_tbe("sum", weight_decay=0.1, mode=mode)
    weight, momentum = tbe_state(tbe)
    for step in range(STEPS):
        indices, offsets, _ = batch(step, False)
        out = tbe(indices, offsets)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(step))
        out.backward(grad)
        rk.ops.embedding_bag_backward_rowwise_adagrad_(weight, momentum, indices, offsets, grad,
                                                       table_offsets=table_offsets(), lr=LR, eps=EPS,
                                                       weight_decay=0.1, weight_decay_mode=mode)
        w_ref, m_ref = tbe_state(tbe)
        assert_matches(weight, w_ref, f"weights after step {step + 1}")
        assert_matches(momentum, m_ref, f"momentum after step {step + 1}")
