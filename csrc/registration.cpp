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
}
