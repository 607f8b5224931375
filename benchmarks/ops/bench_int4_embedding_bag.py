"""Benchmark of ``recsys_kernels.ops.int4_embedding_bag`` (TBE-style INT4 lookup, FBGEMM row layout).

    python -m benchmarks.ops.bench_int4_embedding_bag                        # GPU: all shapes, output dtypes
    python -m benchmarks.ops.bench_int4_embedding_bag --dtypes fp32 --providers cuda,triton,fp16-embedding_bag
    python -m benchmarks.ops.bench_int4_embedding_bag --device cpu --quick   # small shapes, CPU smoke run

Shapes (issue 4): one table E = 4M, D = 128, B = 65536, L = 32; the Criteo Kaggle layout, 26 tables with the
Kaggle cardinalities capped at 4M rows (18.8M rows), D = 128, B = 65536, L = 1 and L = 32. Every bag holds L
indices drawn uniformly from its table (the worst case for caches); "dtype" is the output dtype.
Providers: reference (eager), reference-compiled, triton, cuda, cuda-checked (bounds_check="error": one host
sync a call), cpu, fbgemm (IntNBitTableBatchedEmbeddingBagsCodegen on the same rows, when an fbgemm_gpu build
with kernels for the device is installed), and fp16-embedding_bag: torch's F.embedding_bag on an fp16 copy of
the same tables (the dequantized rows) with the same indices, checked against its own float64 oracle. All of
ours run with bounds_check="ignore" (no sync) except cuda-checked.

GB/s (the harness column) counts the real bytes moved: every looked-up row's full row_bytes (fp16 scale and
bias and the padding included: 80 B for D = 128), the indices, the offsets and the output. After the table,
two more figures per row: FBGEMM's benchmark convention (D/2 bytes a row plus the output), and the DRAM-sector
view (each random 80-byte row starting on a 16-byte boundary touches three 32-byte sectors, 96 B) with its
fraction of the copy bandwidth measured in the same run: the sector-level limit the INT4 lookup can approach.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Sequence

import torch

from benchmarks import harness
from recsys_kernels import ops
from recsys_kernels.reference import int4_embedding_bag as reference

OP = "int4_embedding_bag"
BOUNDS = "ignore"
# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities, the DLRM / torchrec defaults.
CRITEO_KAGGLE = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
CAP = 4_000_000

_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # one packed storage per (rows, D, device)
_fp16: dict[int, torch.Tensor] = {}


def table_rows(shape: dict[str, int]) -> list[int]:
    if shape["T"] == 26:
        return [min(c, CAP) for c in CRITEO_KAGGLE]
    return [shape["E"]] * shape["T"]


def _packed(rows: list[int], D: int, device: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 tables (sum rows, row_bytes) and table_offsets, made once per shape (quantized in chunks: a random
    float32 4M x 128 table alone is 2 GB); input sets share them and rotate the indices."""
    key = (tuple(rows), D, str(device))
    if key not in _tables:
        _tables.clear()
        _fp16.clear()
        total = sum(rows)
        packed = torch.empty(total, reference.row_bytes(D), dtype=torch.uint8, device=device)
        step = 1 << 20
        for lo in range(0, total, step):
            hi = min(total, lo + step)
            w = torch.randn(hi - lo, D, device=device, generator=gen) * 0.05
            packed[lo:hi] = ops.quantize_int4_rows(w)
        starts = torch.tensor([0, *torch.tensor(rows).cumsum(0).tolist()], dtype=torch.int64, device=device)
        _tables[key] = (packed, starts)
    return _tables[key]


def make_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    """(packed, indices int32, offsets int32 (T*B + 1), table_offsets, carrier): the carrier is an empty (D, 0)
    tensor of the output dtype (the harness upcasts it to float64 for the oracle; D stays static under compile)."""
    rows, D, B, L = table_rows(shape), shape["D"], shape["B"], shape["L"]
    packed, starts = _packed(rows, D, device, gen)
    idx = [torch.randint(0, r, (B * L,), device=device, generator=gen, dtype=torch.int32) for r in rows]
    indices = torch.cat(idx)
    offsets = torch.arange(0, len(rows) * B * L + 1, L, device=device, dtype=torch.int32)
    return packed, indices, offsets, starts, torch.empty(D, 0, dtype=dtype, device=device)


def _per_table(packed, indices, offsets, to, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Run ``fn(first_row_t, rows_t, indices_t, offsets_t)`` table by table (bounded memory for the float64
    oracles)."""
    T = to.numel() - 1
    B = (offsets.numel() - 1) // T
    bounds, starts = offsets[::B].tolist(), to.tolist()
    outs = []
    for t in range(T):
        lo, hi = bounds[t], bounds[t + 1]
        outs.append(fn(starts[t], packed[starts[t]:starts[t + 1]], indices[lo:hi],
                       offsets[t * B:(t + 1) * B + 1] - lo))
    return torch.cat(outs, 1)


def oracle(packed, indices, offsets, to, carrier) -> torch.Tensor:
    """float64 when the harness upcasts the dtype carrier, else the reference in the output dtype."""
    return _per_table(packed, indices, offsets, to, lambda _, p, i, o: reference.int4_embedding_bag(
        p, i, o, [carrier.shape[0]], None, "sum", None, carrier.dtype, BOUNDS))


def bytes_moved(case: harness.Case) -> float:
    """Real bytes: every looked-up row's full row_bytes, int32 indices and offsets, the output."""
    s = case.shape
    T, D = len(table_rows(s)), s["D"]
    N = T * s["B"] * s["L"]
    out = s["B"] * T * D * (torch.finfo(case.dtype).bits // 8)
    return N * reference.row_bytes(D) + 4 * N + 4 * (T * s["B"] + 1) + out


def fbgemm_bytes(case: harness.Case) -> float:
    """FBGEMM's benchmark convention: D/2 bytes a looked-up row, plus the output."""
    s = case.shape
    T, D = len(table_rows(s)), s["D"]
    return T * s["B"] * s["L"] * D / 2 + s["B"] * T * D * (torch.finfo(case.dtype).bits // 8)


def sector_bytes(case: harness.Case) -> float:
    """DRAM-sector traffic: the 32-byte sectors a row touches (rows on 16-byte boundaries, both phases equally
    likely), plus indices, offsets and output as above."""
    s = case.shape
    T, D = len(table_rows(s)), s["D"]
    rb = reference.row_bytes(D)
    sectors = sum(-(-(phase + rb) // 32) for phase in (0, 16)) / 2
    return bytes_moved(case) - T * s["B"] * s["L"] * rb + T * s["B"] * s["L"] * 32 * sectors


def _public(bounds: str) -> Callable[..., torch.Tensor]:
    def run(packed, indices, offsets, to, carrier):
        return ops.int4_embedding_bag(packed, indices, offsets, D=carrier.shape[0], table_offsets=to,
                                      output_dtype=carrier.dtype, bounds_check=bounds)
    return run


def _fp16_table(packed: torch.Tensor, D: int) -> torch.Tensor:
    if id(packed) not in _fp16:
        out = torch.empty(packed.shape[0], D, dtype=torch.float16, device=packed.device)
        step = 1 << 20
        for lo in range(0, packed.shape[0], step):
            out[lo:lo + step] = ops.dequantize_int4_rows(packed[lo:lo + step], D, torch.float16)
        _fp16[id(packed)] = out
    return _fp16[id(packed)]


def _global_rows(indices, offsets, to) -> torch.Tensor:
    T = to.numel() - 1
    B = (offsets.numel() - 1) // T
    L = indices.numel() // max(T * B, 1)  # bags of one length in this benchmark
    table = torch.arange(T, device=indices.device).repeat_interleave(B * L)
    return indices.long() + to[table]


def _fp16_factory(case: harness.Case, device: torch.device) -> Callable[..., torch.Tensor]:
    def run(packed, indices, offsets, to, carrier):
        table = _fp16_table(packed, carrier.shape[0])
        T = to.numel() - 1
        B = (offsets.numel() - 1) // T
        pooled = torch.nn.functional.embedding_bag(_global_rows(indices, offsets, to), table, offsets.long(),
                                                   mode="sum", include_last_offset=True)
        return pooled.reshape(T, B, -1).transpose(0, 1).reshape(B, -1)
    return run


def _fp16_oracle(packed, indices, offsets, to, carrier) -> torch.Tensor:
    table = _fp16_table(packed, carrier.shape[0])
    acc = torch.float64 if carrier.dtype == torch.float64 else torch.float32

    def one(first, p, i, o):
        vals = table[first:first + p.shape[0]].index_select(0, i.long()).to(acc)
        bags = torch.repeat_interleave(torch.arange(o.numel() - 1, device=i.device), o.diff().long())
        return torch.zeros(o.numel() - 1, table.shape[1], dtype=acc, device=i.device).index_add_(0, bags, vals)
    out = _per_table(packed, indices, offsets, to, one)
    return out if acc == torch.float64 else out.to(torch.float16)


def _fbgemm_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return "fbgemm_gpu not installed"
    import fbgemm_gpu  # noqa: F401

    key = "CUDA" if device.type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fbgemm::int_nbit_split_embedding_codegen_lookup_function",
                                                          key):
        return f"fbgemm_gpu has no {key} INT4 TBE kernel (CPU-only wheel?)"
    return None


_tbe: dict[int, Any] = {}


def _fbgemm_factory(case: harness.Case, device: torch.device) -> Callable[..., torch.Tensor]:
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

    out_ty = {torch.float32: SparseType.FP32, torch.float16: SparseType.FP16, torch.bfloat16: SparseType.BF16}

    def run(packed, indices, offsets, to, carrier):
        key = (id(packed), carrier.dtype)
        if key not in _tbe:
            rows, D = table_rows(case.shape), carrier.shape[0]
            loc = EmbeddingLocation.DEVICE if device.type == "cuda" else EmbeddingLocation.HOST
            tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                [(f"t{t}", r, D, SparseType.INT4, loc) for t, r in enumerate(rows)], device=device,
                row_alignment=16, output_dtype=out_ty[carrier.dtype], bounds_check_mode=BoundsCheckMode.NONE)
            tbe.initialize_weights()
            starts = to.tolist()
            for t, (w, _) in enumerate(tbe.split_embedding_weights(split_scale_shifts=False)):
                w.copy_(packed[starts[t]:starts[t + 1]])
            _tbe.clear()
            _tbe[key] = tbe
        return _tbe[key](indices, offsets)
    return run


def providers() -> list[harness.Provider]:
    return [
        harness.backend_provider(OP, "reference", _public(BOUNDS)),
        harness.compiled_reference_provider(_public(BOUNDS)),
        harness.backend_provider(OP, "triton", _public(BOUNDS)),
        harness.backend_provider(OP, "cuda", _public(BOUNDS)),
        harness.backend_provider(OP, "cuda", _public("error"), name="cuda-checked"),
        harness.backend_provider(OP, "cpu", _public(BOUNDS)),
        harness.Provider("fbgemm", _fbgemm_factory, _fbgemm_unavailable),
        harness.Provider("fp16-embedding_bag", _fp16_factory, oracle=_fp16_oracle),
    ]


BENCH = harness.OpBench(
    name=OP,
    shapes=[{"T": 1, "E": 4_000_000, "D": 128, "B": 65536, "L": 32},
            {"T": 26, "E": CAP, "D": 128, "B": 65536, "L": 1},
            {"T": 26, "E": CAP, "D": 128, "B": 65536, "L": 32}],
    quick_shapes=[{"T": 1, "E": 4096, "D": 128, "B": 256, "L": 8}, {"T": 3, "E": 1000, "D": 64, "B": 128, "L": 4}],
    make_inputs=make_inputs,
    reference=oracle,
    providers=providers(),
    modes=("fwd",),
    dtypes=("fp32", "fp16", "bf16"),
    bytes_fn=bytes_moved,
)


def print_extra(rows: list[harness.Row], copy_gbs: float | None) -> None:
    """FBGEMM-convention and sector-level GB/s of every timed row."""
    print("\n# same rows: FBGEMM-style GB/s (D/2 bytes a row + output) and DRAM-sector GB/s (32-byte sectors touched)")
    print(f"{'shape':<36} {'dtype':<5} {'provider':<20} {'ms':>9} {'FBGEMM GB/s':>12} {'sector GB/s':>12} "
          f"{'% copy':>7}")
    for r in rows:
        if r.ms is None:
            continue
        sec = sector_bytes(r.case) / (r.ms * 1e-3) / 1e9
        frac = f"{100 * sec / copy_gbs:.1f}" if copy_gbs else ""
        name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[r.case.dtype]
        print(f"{r.case.label:<36} {name:<5} {r.provider:<20} {r.ms:>9.4f} "
              f"{fbgemm_bytes(r.case) / (r.ms * 1e-3) / 1e9:>12.1f} {sec:>12.1f} {frac:>7}")


def main(argv: Sequence[str] | None = None) -> list[harness.Row]:
    rows = harness.main(BENCH, argv)
    copy = next((r.metric / r.fraction for r in rows if r.fraction), None)
    print_extra(rows, copy)
    return rows


if __name__ == "__main__":
    main()
