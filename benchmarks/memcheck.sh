#!/usr/bin/env bash
# compute-sanitizer memcheck over every CUDA kernel (benchmarks/memcheck_cuda.py), after benchmarks/run_gpu.sh
# has built the extension in the same call. Exit status 0 and "ERROR SUMMARY: 0 errors" = clean.
#   bash benchmarks/memcheck.sh
set -uo pipefail
sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
[ -x "$sanitizer" ] || sanitizer=compute-sanitizer
# Triton is not involved (every op is forced onto its CUDA kernel); PyTorch's caching allocator would hide
# out-of-bounds accesses inside its pools, so it is switched off for the run.
PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 20 \
  python -m benchmarks.memcheck_cuda
