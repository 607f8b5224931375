"""Every CUDA kernel once, small shapes, for ``compute-sanitizer --tool memcheck`` (issue 3 asks it of HSTU).

    bash benchmarks/memcheck.sh              # on the GPU machine, after the build; exit status 0 = no errors

Shapes are chosen for edges, not speed: ragged sequences including empty ones, head dims that are not multiples
of 16, targets + contextual prefix + local window + both bias tables in HSTU (forward and backward), empty bags
and several tables in the lookups, duplicates in the optimizer. Every op is forced onto its CUDA kernel.
"""

from __future__ import annotations

import torch

import recsys_kernels as rk
from recsys_kernels import ops

DEVICE = "cuda"  # main(device="cpu") runs the same calls through the references (the CPU test of this driver)


def hstu(dtype: torch.dtype, lengths: list[int], bias: bool = True, dqk: int = 50, dv: int = 25) -> None:
    """Forward and backward with targets, context and a window; 16-bit calls with head dims in 16-byte rows take
    the Hopper (wgmma) kernels on an H100."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    lengths = torch.tensor(lengths, device=DEVICE)
    offsets = ops.lengths_to_offsets(lengths)
    L, H, N = int(lengths.sum()), 2, 64

    def rnd(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=dtype, generator=g).requires_grad_()

    q, k, v = rnd(L, H, dqk), rnd(L, H, dqk), rnd(L, H, dv)
    pos_bias, time_bias = rnd(2 * N - 1), rnd(9)
    timestamps = torch.randint(0, 10**6, (L,), device=DEVICE, generator=g).sort().values
    num_targets = torch.minimum(torch.tensor([0, 3, 1, 5, 0, 2], device=DEVICE).repeat(len(lengths) // 6 + 1)[
        :len(lengths)], lengths)
    out = ops.hstu_attention(q, k, v, offsets, max_seq_len=N, alpha=1 / dqk, num_targets=num_targets,
                             contextual_seq_len=2, max_attn_len=16, timestamps=timestamps if bias else None,
                             pos_bias=pos_bias if bias else None, time_bias=time_bias if bias else None)
    out.float().square().sum().backward()


def jagged() -> None:
    lengths = torch.tensor([3, 0, 9, 1], device=DEVICE, dtype=torch.int32)
    offsets = ops.lengths_to_offsets(lengths)
    values = torch.randn(13, 5, device=DEVICE, requires_grad=True)
    dense = ops.jagged_to_padded_dense(values, offsets, 6, -1.0)
    back = ops.padded_dense_to_jagged(dense, offsets, 13)
    back.sum().backward()


def int4() -> None:
    weight = torch.randn(300, 34, device=DEVICE)
    packed = ops.quantize_int4_rows(weight)
    ops.dequantize_int4_rows(packed, 34, torch.float16)
    flat, to = ops.concat_int4_tables([packed[:100], ops.quantize_int4_rows(torch.randn(57, 8, device=DEVICE))])
    indices = torch.tensor([1, 99, 0, 5, 56], device=DEVICE)  # table 0: rows < 100, table 1: rows < 57
    offsets = torch.tensor([0, 2, 3, 3, 5], device=DEVICE)    # T = 2 tables x B = 2 bags, one of them empty
    ops.int4_embedding_bag(flat, indices, offsets, D=[34, 8], table_offsets=to, pooling="mean",
                           output_dtype=torch.bfloat16)
    w = torch.randn(157, 16, device=DEVICE, requires_grad=True)
    for qparams in ("row", "table"):
        out = ops.qat_embedding_bag(w, indices, offsets, table_offsets=torch.tensor([0, 100, 157], device=DEVICE),
                                    qparams=qparams)
        out.sum().backward()


def adagrad() -> None:
    weight = torch.randn(1000, 64, device=DEVICE)
    momentum = torch.zeros(1000, device=DEVICE)
    indices = torch.randint(0, 20, (333,), device=DEVICE)  # heavy duplication
    ops.rowwise_adagrad_update_(weight, momentum, indices, torch.randn(333, 64, device=DEVICE), lr=0.1)
    offsets = torch.tensor([0, 100, 100, 333], device=DEVICE)
    ops.embedding_bag_backward_rowwise_adagrad_(weight, momentum, indices, offsets, torch.randn(3, 64, device=DEVICE),
                                                pooling="mean", lr=0.1)


def dot() -> None:
    dense = torch.randn(7, 24, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    sparse = torch.randn(7, 26, 24, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    ops.dot_interaction(dense, sparse, pad_to_multiple=8).float().sum().backward()


def main(device: str = "cuda") -> None:
    global DEVICE
    DEVICE = device
    with rk.use_backend("cuda" if device == "cuda" else "reference"):
        for dtype in (torch.bfloat16, torch.float32):
            hstu(dtype, [0, 37, 5, 64, 1, 20])
        # 600 sequences: the CUDA forward's work list no longer fits its 4 KB kernel parameter and is uploaded
        hstu(torch.bfloat16, [(7 * i) % 23 for i in range(600)])
        for dqk, dv in ((64, 128), (128, 40)):
            for bias in (False, True):
                hstu(torch.bfloat16, [0, 37, 5, 64, 1, 20], bias=bias, dqk=dqk, dv=dv)
        hstu(torch.float16, [(7 * i) % 23 for i in range(600)], bias=False, dqk=64, dv=64)
        jagged()
        int4()
        adagrad()
        dot()
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"memcheck driver: every kernel ran on {device}")


if __name__ == "__main__":
    main()
