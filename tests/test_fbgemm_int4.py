"""Cross-check against FBGEMM (fbgemm-gpu-cpu==1.9.0, the ``test`` extra): our INT4 rows are FBGEMM's.

- quantize_int4_rows writes byte for byte what torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf writes
  (FBGEMM puts the fp16 scale and bias after the codes there; the TBE row puts them first);
- tables quantized by us and loaded into IntNBitTableBatchedEmbeddingBagsCodegen (INT4, row_alignment 16,
  CPU) pool to what int4_embedding_bag gives on the same indices, and tables written by FBGEMM and read raw
  from its weights pool the same in our op — T tables of different rows and dims in one call, sum and mean,
  with per-sample weights;
- the tables a QATEmbeddingBagCollection exports pool in FBGEMM to the QAT forward.
FBGEMM runs on the CPU; our side runs on every backend this machine has (CUDA ones on a GPU machine).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import import_peer

fbgemm_gpu = import_peer("fbgemm_gpu", "pip install fbgemm-gpu-cpu==1.9.0")

import recsys_kernels as rk  # noqa: E402
from recsys_kernels.nn import EmbeddingBagConfig, QATEmbeddingBagCollection  # noqa: E402
from recsys_kernels.reference import int4_embedding_bag as ref  # noqa: E402
from recsys_kernels.testing.int4_strategies import random_table  # noqa: E402
from recsys_kernels.testing.tolerances import assert_close_to_reference  # noqa: E402
from tests.conftest import backend_params, require_backend  # noqa: E402

from fbgemm_gpu.split_embedding_configs import SparseType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_common import (  # noqa: E402
    BoundsCheckMode,
    EmbeddingLocation,
    PoolingMode,
)
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (  # noqa: E402
    IntNBitTableBatchedEmbeddingBagsCodegen,
)

ROWS = (50, 7, 300, 20)
DIMS = (16, 8, 128, 36)  # FBGEMM's TBE takes dims that are multiples of 4
B = 6


def make_tbe(pooling: str, rows=ROWS, dims=DIMS) -> IntNBitTableBatchedEmbeddingBagsCodegen:
    tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
        [(f"t{t}", E, D, SparseType.INT4, EmbeddingLocation.HOST) for t, (E, D) in enumerate(zip(rows, dims))],
        device="cpu", row_alignment=16, output_dtype=SparseType.FP32, bounds_check_mode=BoundsCheckMode.FATAL,
        pooling_mode=PoolingMode.SUM if pooling == "sum" else PoolingMode.MEAN)
    tbe.initialize_weights()
    return tbe


def raw_rows(tbe) -> list[torch.Tensor]:
    """FBGEMM's tables as (E, row_bytes) uint8 rows: [scale][bias][codes][pad]."""
    return [w for w, _ in tbe.split_embedding_weights(split_scale_shifts=False)]


def inputs(seed: int, rows=ROWS, psw: bool = False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 6, (len(rows) * B,), generator=g)
    lengths[3] = 0  # an empty bag
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.cat([torch.randint(0, rows[k // B], (int(n),), generator=g) for k, n in enumerate(lengths)])
    weights = torch.rand(indices.shape[0], generator=g) if psw else None
    return indices, offsets, weights


def exact(tables: list[torch.Tensor], indices, offsets, psw, pooling) -> torch.Tensor:
    packed, to = rk.ops.concat_int4_tables(tables)
    return ref.int4_embedding_bag(packed, indices, offsets, list(DIMS), to, pooling, psw, torch.float64)


def ours(backend: str, device: str, tables: list[torch.Tensor], dims, indices, offsets, psw, pooling):
    packed, to = rk.ops.concat_int4_tables(tables)
    with rk.use_backend(backend):
        out = rk.ops.int4_embedding_bag(packed.to(device), indices.to(device), offsets.to(device), D=list(dims),
                                        table_offsets=to.to(device), pooling=pooling,
                                        per_sample_weights=None if psw is None else psw.to(device))
    return out.cpu()


def assert_matches_fbgemm(got: torch.Tensor, expected: torch.Tensor, exact: torch.Tensor) -> None:
    """Element-wise within float32 rounding of the pooled magnitudes (FBGEMM folds the per-sample weight into
    scale and bias, so the two round differently), and at most 2x FBGEMM's own distance from float64."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(exact.abs().max()) + 1e-6)
    assert_close_to_reference(got, exact, expected, "pooled vs FBGEMM")


def fbgemm_quantize(w: torch.Tensor) -> torch.Tensor:
    """FBGEMM's quantizer, moved to the TBE row layout (scale and bias first, padded to 16 bytes)."""
    q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, 4)
    D = w.shape[1]
    rows = torch.cat([q[:, D // 2:], q[:, :D // 2]], 1)
    return torch.nn.functional.pad(rows, (0, ref.row_bytes(D) - rows.shape[1]))


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] != "reference"]
                         + [pytest.param("cpu", "reference", id="cpu-reference")])
def test_quantize_bytes_match_fbgemm(device, backend):
    require_backend("quantize_int4_rows", device, backend)
    g = torch.Generator().manual_seed(0)
    for D in (4, 8, 36, 128, 512):
        w = random_table(64, D, g)
        w[5] = 1e-9  # tiny range: scale rounds to 0 in fp16 -> 1
        w[6, ::2] = 7.0
        with rk.use_backend(backend):
            got = rk.ops.quantize_int4_rows(w.to(device)).cpu()
        assert torch.equal(got, fbgemm_quantize(w)), f"D = {D}"
        back = torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(
            torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, 4), 4)
        with rk.use_backend(backend):
            assert torch.equal(rk.ops.dequantize_int4_rows(got.to(device), D).cpu(), back)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("pooling,psw", [("sum", False), ("sum", True), ("mean", False)])
def test_our_rows_pool_the_same_in_fbgemm(device, backend, pooling, psw):
    require_backend("int4_embedding_bag", device, backend)
    g = torch.Generator().manual_seed(1)
    tables = [ref.quantize_int4_rows(random_table(E, D, g)) for E, D in zip(ROWS, DIMS)]
    tbe = make_tbe(pooling)
    for dst, src in zip(raw_rows(tbe), tables):
        dst.copy_(src)
    indices, offsets, weights = inputs(2, psw=psw)
    expected = tbe(indices.int(), offsets.int(), weights)
    got = ours(backend, device, tables, DIMS, indices, offsets, weights, pooling)
    assert_matches_fbgemm(got, expected, exact(tables, indices, offsets, weights, pooling))


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("pooling,psw", [("sum", True), ("mean", False)])
def test_fbgemm_rows_pool_the_same_in_ours(device, backend, pooling, psw):
    require_backend("int4_embedding_bag", device, backend)
    g = torch.Generator().manual_seed(3)
    tbe = make_tbe(pooling)
    # FBGEMM writes its own rows: its quantizer's codes and (scale, bias) assigned through its API.
    split = []
    for E, D in zip(ROWS, DIMS):
        q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(random_table(E, D, g), 4)
        split.append((q[:, :D // 2].contiguous(), q[:, D // 2:].contiguous()))
    tbe.assign_embedding_weights(split)
    tables = [w.clone() for w in raw_rows(tbe)]
    indices, offsets, weights = inputs(4, psw=psw)
    expected = tbe(indices.int(), offsets.int(), weights)
    got = ours(backend, device, tables, DIMS, indices, offsets, weights, pooling)
    assert_matches_fbgemm(got, expected, exact(tables, indices, offsets, weights, pooling))


@pytest.mark.parametrize("qparams", ["row", "table"])
def test_qat_exported_tables_pool_in_fbgemm_like_the_qat_forward(qparams):
    tables = [EmbeddingBagConfig(f"t{t}", E, D) for t, (E, D) in enumerate(zip(ROWS, (16, 16, 16, 16)))]
    qat = QATEmbeddingBagCollection(tables, qparams=qparams, seed=5).eval()
    tbe = make_tbe("sum", dims=(16,) * 4)
    for dst, t in zip(raw_rows(tbe), tables):
        dst.copy_(qat.int4_rows(t.name))
    indices, offsets, _ = inputs(6)
    features = {}
    for k, t in enumerate(tables):
        lo, hi = int(offsets[k * B]), int(offsets[(k + 1) * B])
        features[t.name] = (indices[lo:hi], offsets[k * B:(k + 1) * B + 1] - lo)
    expected = tbe(indices.int(), offsets.int())
    torch.testing.assert_close(qat(features), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()) + 1e-6)
