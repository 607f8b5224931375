"""Triton kernels, one module per op; each registers its ops with torch.library.triton_op when imported."""
