"""The package as a whole: lean import, the dispatch point, running without the extension, the CMake build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import recsys_kernels as rk
from recsys_kernels import _backend

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=600)


def test_import_initialises_neither_cuda_nor_triton():
    result = run_python("""
        import sys, torch, recsys_kernels
        assert not torch.cuda.is_initialized(), "CUDA initialised at import"
        assert "triton" not in sys.modules, "triton imported at import"
        assert not any(m.startswith("recsys_kernels.triton.") for m in sys.modules), "Triton kernels imported"
        print("ok")
    """, {"TRITON_INTERPRET": "0"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_capabilities_lists_every_op_and_backend():
    caps = rk.capabilities()
    assert set(caps) == set(_backend.OPS)
    for op, live in caps.items():
        assert set(live) == set(rk.BACKENDS), op
        assert live["reference"] is True
        assert live["cpu"] == _backend.EXTENSION_LOADED


def test_use_backend_validates_and_restores():
    with pytest.raises(ValueError, match="backend must be one of"):
        with rk.use_backend("tpu"):
            pass
    with rk.use_backend("reference"):
        assert _backend.choose("dot_interaction", torch.device("cpu")) == "reference"
    assert _backend._override is None
    with rk.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run recsys op 'dot_interaction'"):
        rk.ops.dot_interaction(torch.randn(2, 4), torch.randn(2, 3, 4))


def test_automatic_choice_prefers_compiled_kernels():
    expected = "cpu" if _backend.EXTENSION_LOADED else "reference"
    assert _backend.choose("dot_interaction", torch.device("cpu")) == expected
    assert _backend.choose("dot_interaction", torch.device("meta")) == "reference"


def test_gpu_choice_follows_the_measured_order(monkeypatch):
    """With both GPU kernels available, CUDA C++ runs an op unless the benchmarks put Triton first for it."""
    monkeypatch.setattr(_backend, "_can_run", lambda op, backend, device_type: True)
    cuda = torch.device("cuda")
    assert _backend.choose("int4_embedding_bag", cuda) == "triton"
    for op in set(_backend.OPS) - _backend.TRITON_FIRST:
        assert _backend.choose(op, cuda) == "cuda", op
    monkeypatch.setattr(_backend, "_can_run", lambda op, backend, device_type: backend != "triton")
    assert _backend.choose("int4_embedding_bag", cuda) == "cuda"


def test_environment_variable_selects_backend():
    result = run_python("""
        import torch, recsys_kernels
        from recsys_kernels import _backend
        print(_backend.choose("dot_interaction", torch.device("cpu")))
    """, {"RECSYS_KERNELS_BACKEND": "reference"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    bad = run_python("import recsys_kernels", {"RECSYS_KERNELS_BACKEND": "fastest"})
    assert bad.returncode != 0 and "RECSYS_KERNELS_BACKEND must be one of" in bad.stderr


def test_works_without_the_extension_with_one_warning():
    result = run_python("""
        import sys, warnings, importlib.abc

        class HideExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "recsys_kernels._C":
                    raise ImportError("hidden for the test")

        sys.meta_path.insert(0, HideExtension())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, recsys_kernels as rk
            out = rk.ops.dot_interaction(torch.randn(3, 4), torch.randn(3, 2, 4))
            out = rk.ops.dot_interaction(torch.randn(3, 4), torch.randn(3, 2, 4))
        mine = [w for w in caught if "recsys_kernels" in str(w.message)]
        assert len(mine) == 1, [str(w.message) for w in mine]
        assert out.shape == (3, 7)
        assert rk.capabilities()["dot_interaction"]["cpu"] is False
        print("ok")
    """, {"TRITON_INTERPRET": "0"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow
def test_cmake_library_loads_in_a_fresh_process(tmp_path):
    """CMakeLists.txt builds csrc/ (CPU sources) into a library libtorch users load with torch.ops.load_library.
    RECSYS_KERNELS_CMAKE_LIBRARY points at an already built one (CI builds it in .ci/run)."""
    library = os.environ.get("RECSYS_KERNELS_CMAKE_LIBRARY")
    if not library:
        build = tmp_path / "build"
        configure = ["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                     "-DCMAKE_BUILD_TYPE=Release"]
        subprocess.run(configure, check=True, capture_output=True, timeout=600)
        subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True,
                       capture_output=True, timeout=1200)
        library = str(build / "librecsys_kernels.so")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        torch.ops.load_library({library!r})
        out = torch.ops.recsys.dot_interaction(torch.ones(2, 3), torch.ones(2, 2, 3), False, "lower", 8)
        assert out.shape == (2, 8) and out[0, 3:6].tolist() == [3.0, 3.0, 3.0], out
        print("ok")
    """)], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
