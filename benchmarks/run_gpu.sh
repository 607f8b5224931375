#!/usr/bin/env bash
# One call on the lent GPU: build the extension, run the GPU tests, then the benchmarks named as arguments
# (default: every benchmarks/ops/bench_*.py). Logs and result files go to bench_out/, or on the lent GPU machine
# into one archive, $OUT/logs.tgz (its tool brings back only a few files a call).
#   bash benchmarks/run_gpu.sh [bench_dot_interaction ...]      ("none": build and test only)
set -uo pipefail
if [ -n "${OUT:-}" ]; then out="$OUT/logs"; trap 'tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$out"' EXIT
else out=bench_out; fi
mkdir -p "$out"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export MAX_JOBS="${MAX_JOBS:-16}" RECSYS_KERNELS_CUDA=1 PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
start=$SECONDS
python -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $((SECONDS - start)) s"
# Each test file runs in its own process, all at once (Triton compiles are CPU-bound; the GPU has room).
pids=(); logs=()
for t in ${TESTS:-tests}; do
  log="$out/gpu_tests_$(basename "$t" .py).log"; logs+=("$log")
  HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-gpu}" timeout "${TEST_TIMEOUT:-300}" python -m pytest -m gpu -q -rfE \
    "$t" -p no:cacheprovider >"$log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?; echo "gpu tests ${logs[$i]##*/}: rc=$rc ($((SECONDS - start)) s)"; tail -4 "${logs[$i]}"
done
[ -n "${MEMCHECK:-}" ] && { bash benchmarks/memcheck.sh 2>&1 | tail -8; }  # MEMCHECK=1: compute-sanitizer too
[ "${1:-}" = none ] && exit 0
benches=("$@"); [ ${#benches[@]} -gt 0 ] || benches=($(ls benchmarks/ops/bench_*.py | xargs -n1 basename | sed 's/\.py$//'))
for b in "${benches[@]}"; do
  RECSYS_KERNELS_GIT_REV="${GIT_REV:-unknown}" timeout "${BENCH_TIMEOUT:-600}" python -m "benchmarks.ops.$b" \
    --device cuda --out "$out" ${BENCH_ARGS:-} \
    >"$out/$b.log" 2>&1; echo "$b: rc=$?"; cat "$out/$b.log"
done
