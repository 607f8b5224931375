// Every schema of the recsys op library, in one place. Kernels register per backend in their own files
// (TORCH_LIBRARY_IMPL); fake tensors and autograd are registered from Python, each in its op's module
// under recsys_kernels/ops (so no set_python_module: that names a single module for the whole library).
#include <torch/library.h>

TORCH_LIBRARY(recsys, m) {

  // DLRM dot interaction: dense (B, D), sparse (B, F, D) -> (B, D + P [+ pad]).
  m.def("dot_interaction(Tensor dense, Tensor sparse, bool self_interaction=False, str layout=\"lower\", "
        "int pad_to_multiple=1) -> Tensor");
  // -> (grad_dense (B, D), grad_sparse (B, F, D)); columns of grad_output past D + P (padding) are ignored.
  m.def("dot_interaction_backward(Tensor grad_output, Tensor dense, Tensor sparse, bool self_interaction, "
        "str layout) -> (Tensor, Tensor)");

  // Exact row-wise Adagrad (FBGEMM EXACT_ROWWISE_ADAGRAD) on weight (E, D) and momentum (E,) float32, in place.
  // indices (N,) rows, grad_rows (N, D) one gradient row per occurrence; duplicates are summed first.
  m.def("rowwise_adagrad_update_(Tensor(a!) weight, Tensor(b!) momentum, Tensor indices, Tensor grad_rows, *, "
        "float lr=0.01, float eps=1e-08, float weight_decay=0., str weight_decay_mode=\"none\", "
        "int stochastic_rounding_seed=-1) -> ()");
  // The same update from the pooled gradient grad_output (B, T*D) of T tables' bags: offsets (T*B + 1,)
  // table-major, table_offsets (T + 1,) row offsets of the tables in weight (None: one table).
  m.def("embedding_bag_backward_rowwise_adagrad_(Tensor(a!) weight, Tensor(b!) momentum, Tensor indices, "
        "Tensor offsets, Tensor grad_output, *, Tensor? table_offsets=None, str pooling=\"sum\", "
        "Tensor? per_sample_weights=None, float lr=0.01, float eps=1e-08, float weight_decay=0., "
        "str weight_decay_mode=\"none\", int stochastic_rounding_seed=-1) -> ()");

  // INT4 rows in FBGEMM's TBE layout (E, row_bytes) uint8: [fp16 scale][fp16 bias][D/2 bytes of nibbles][pad to 16].
  m.def("quantize_int4_rows(Tensor weight) -> Tensor");
  m.def("dequantize_int4_rows(Tensor packed, int D, ScalarType dtype) -> Tensor");
  // TBE-style pooled lookup of T INT4 tables stored back to back (dims D, row offsets table_offsets (T + 1,)),
  // offsets (T*B + 1,) table-major -> (B, sum D) in output_dtype.
  m.def("int4_embedding_bag(Tensor packed, Tensor indices, Tensor offsets, int[] D, Tensor? table_offsets, "
        "str pooling, Tensor? per_sample_weights, ScalarType output_dtype, str bounds_check) -> Tensor");
  // QAT lookup: rows of weight (E, D) float32 fake-quantized to INT4 ("row" | "table" with table_scale (T,))
  // and pooled -> (B, T*D). The backward is the straight-through estimator: (rows (N,) int64, grad_rows (N, D)).
  m.def("qat_embedding_bag(Tensor weight, Tensor indices, Tensor offsets, Tensor? table_offsets, str pooling, "
        "Tensor? per_sample_weights, str qparams, Tensor? table_scale, str bounds_check) -> Tensor");
  m.def("qat_embedding_bag_backward(Tensor grad_output, Tensor indices, Tensor offsets, Tensor? table_offsets, "
        "str pooling, Tensor? per_sample_weights, int num_rows) -> (Tensor, Tensor)");

  // Jagged helpers (recsys_kernels/reference/jagged.py): offsets (B + 1,) int32|int64 start at 0, never
  // decrease, end <= L. The two copies are each other's adjoint (each one's backward is the other).
  m.def("lengths_to_offsets(Tensor lengths) -> Tensor");
  m.def("jagged_to_padded_dense(Tensor values, Tensor offsets, int max_len, float padding_value=0.) -> Tensor");
  m.def("padded_dense_to_jagged(Tensor dense, Tensor offsets, int total_len) -> Tensor");

  // Jagged HSTU attention (recsys_kernels/ops/hstu_attention.py): q, k (L, H, Dqk), v (L, H, Dv) -> (L, H, Dv).
  // The backward returns (dq, dk, dv, d_pos_bias, d_time_bias); a bias gradient is (0,) when its table is None.
  m.def("hstu_attention(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, float alpha, "
        "bool causal=True, Tensor? num_targets=None, int contextual_seq_len=0, int max_attn_len=0, "
        "Tensor? timestamps=None, Tensor? pos_bias=None, Tensor? time_bias=None, str time_bucket=\"log\") -> Tensor");
  m.def("hstu_attention_backward(Tensor grad_output, Tensor q, Tensor k, Tensor v, Tensor seq_offsets, "
        "int max_seq_len, float alpha, bool causal, Tensor? num_targets, int contextual_seq_len, int max_attn_len, "
        "Tensor? timestamps, Tensor? pos_bias, Tensor? time_bias, str time_bucket) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
