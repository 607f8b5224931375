"""The public functional ops: one module per op, each with its shape docstring and dispatch.

Importing this package registers the fake-tensor and autograd rules of the C++-defined ops
(torch.ops.recsys.*); the Triton ops register when first chosen.
"""

from recsys_kernels.ops.dot_interaction import dot_interaction
from recsys_kernels.ops.int4_embedding_bag import (
    concat_int4_tables,
    dequantize_int4_rows,
    int4_embedding_bag,
    quantize_int4_rows,
)
from recsys_kernels.ops.qat_embedding_bag import qat_embedding_bag, table_scales
from recsys_kernels.ops.hstu_attention import hstu_attention
from recsys_kernels.ops.jagged import jagged_to_padded_dense, lengths_to_offsets, padded_dense_to_jagged
from recsys_kernels.ops.rowwise_adagrad import (
    embedding_bag_backward_rowwise_adagrad_,
    embedding_bag_rowwise_adagrad,
    rowwise_adagrad_update_,
)

__all__ = ["dot_interaction", "embedding_bag_backward_rowwise_adagrad_", "embedding_bag_rowwise_adagrad",
           "rowwise_adagrad_update_", "concat_int4_tables", "dequantize_int4_rows", "int4_embedding_bag",
           "qat_embedding_bag", "quantize_int4_rows", "table_scales",
           "jagged_to_padded_dense", "lengths_to_offsets", "padded_dense_to_jagged", "hstu_attention"]
