"""recsys_kernels: fused recommender-system operators as torch ops, and the modules built on them.

    import recsys_kernels as rk
    y = rk.ops.dot_interaction(dense, sparse)        # dispatches on the input's device
    with rk.use_backend("reference"): ...            # force a backend (tests, benchmarks)
    rk.capabilities()                                # which backends are live, per op

Importing initialises neither CUDA nor Triton.
"""

from recsys_kernels import nn, ops
from recsys_kernels._backend import BACKENDS, capabilities, use_backend

__version__ = "0.1.0"
__all__ = ["BACKENDS", "capabilities", "nn", "ops", "use_backend", "__version__"]
