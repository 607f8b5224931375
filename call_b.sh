set -u
export CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 RECSYS_KERNELS_CUDA=1 PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
s=$SECONDS
python -m pip install --no-build-isolation --no-deps -e . >$OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
HYPOTHESIS_PROFILE=ci timeout 200 python -m pytest -m gpu -q -rfE tests/ops/test_int4_embedding_bag.py tests/ops/test_qat_embedding_bag.py -k "triton or quantize" -p no:cacheprovider > $OUT/t_int4.log 2>&1 &
p2=$!
timeout 100 python -m benchmarks.ops.host_cost_hstu > $OUT/host.log 2>&1; echo "host rc=$?"; grep -E "us/call" $OUT/host.log; grep -A 40 "Ordered by: cumulative" $OUT/host.log | head -45
wait $p2; echo "int4 tests rc=$? $((SECONDS-s)) s"; tail -3 $OUT/t_int4.log
timeout 250 python -m benchmarks.ops.bench_int4_embedding_bag --device cuda --out $OUT > $OUT/bench_int4.log 2>&1; echo "bench rc=$? $((SECONDS-s)) s"; tail -40 $OUT/bench_int4.log
