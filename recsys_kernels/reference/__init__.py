"""Reference implementations: plain torch ops with static shapes.

Each is the float64 test oracle, the fallback for devices without a fused kernel, and the Intel Gaudi
(HPU) path, so it follows DESIGN.md's TPC rules: output shapes depend only on input shapes and size
arguments, gathers use index_select/gather, reductions index_add_/scatter_add_, and nothing calls
``.item()``, ``nonzero`` or boolean-mask indexing.
"""
