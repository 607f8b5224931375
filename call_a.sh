set -u
export CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 RECSYS_KERNELS_CUDA=1 PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
s=$SECONDS
python -m pip install --no-build-isolation --no-deps -e . >$OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "build $((SECONDS-s)) s"
HYPOTHESIS_PROFILE=ci timeout 300 python -m pytest -m gpu -q -rfE tests/ops/test_hstu_attention.py -k "long_sequences and triton" -p no:cacheprovider > $OUT/t_hstu.log 2>&1 &
p1=$!
HYPOTHESIS_PROFILE=ci timeout 300 python -m pytest -m gpu -q -rfE tests/ops/test_int4_embedding_bag.py tests/ops/test_qat_embedding_bag.py -k triton -p no:cacheprovider > $OUT/t_int4.log 2>&1 &
p2=$!
wait $p2; echo "int4 tests rc=$? $((SECONDS-s)) s"; tail -5 $OUT/t_int4.log
timeout 200 python -m benchmarks.ops.sweep_int4_triton > $OUT/sweep_int4.log 2>&1; echo "sweep rc=$? $((SECONDS-s)) s"; tail -40 $OUT/sweep_int4.log
wait $p1; echo "hstu tests rc=$? $((SECONDS-s)) s"; tail -5 $OUT/t_hstu.log
timeout 100 python -m benchmarks.ops.host_cost_hstu > $OUT/host.log 2>&1; echo "host rc=$?"; head -60 $OUT/host.log
