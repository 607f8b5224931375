#!/usr/bin/env bash
# The INT4 lookup experiments still to be measured on the H100 (run after benchmarks/run_gpu.sh has built the
# extension, in the same call): the CUDA lookup with and without the shared-memory staged walk, and the Triton
# tile sizes. Each line prints the bench rows; the winner is then hard-coded and the switch removed.
#   bash benchmarks/sweep_int4.sh            # ~2 minutes
set -uo pipefail
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
bench() { python -m benchmarks.ops.bench_int4_embedding_bag --device cuda --dtypes fp32 --out "${OUT:-bench_out}/sweep" "$@" 2>&1 | grep -E "^T=|WRONG|Error"; }
echo "== CUDA, direct walk (default)"; bench --providers cuda
echo "== CUDA, staged walk (RECSYS_KERNELS_INT4_STAGED=1)"; RECSYS_KERNELS_INT4_STAGED=1 bench --providers cuda
for tile in 8,4 8,1 8,2 16,2 16,4 32,4 32,8; do
  echo "== Triton, BLOCK_L,num_warps = $tile"; RECSYS_KERNELS_INT4_TRITON_TILE=$tile bench --providers triton
done
