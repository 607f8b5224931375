"""The compute-sanitizer driver (benchmarks/memcheck_cuda.py) stays runnable: its calls go through the
references on the CPU here; on the GPU, benchmarks/memcheck.sh runs them on the CUDA kernels."""

from benchmarks import memcheck_cuda


def test_memcheck_driver_runs_on_the_cpu(capsys):
    memcheck_cuda.main("cpu")
    assert "every kernel ran on cpu" in capsys.readouterr().out
