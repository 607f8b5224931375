"""Builds recsys_kernels._C: C++ CPU kernels always, CUDA kernels when RECSYS_KERNELS_CUDA allows.

RECSYS_KERNELS_CUDA=auto (default): build CUDA sources when the installed torch is a CUDA build and nvcc is
found (never decided by torch.cuda.is_available(): build machines often have no GPU). 0: CPU only. 1: require
CUDA. Architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0a").
Install with `pip install --no-build-isolation -e .` so the build uses the torch already installed.
"""

import glob
import os
import shutil

from setuptools import find_packages, setup


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    mode = os.environ.get("RECSYS_KERNELS_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"RECSYS_KERNELS_CUDA must be auto, 0 or 1, got {mode!r}")
    have = torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc") is not None)
    if mode == "1" and not have:
        raise SystemExit("RECSYS_KERNELS_CUDA=1 but torch is not a CUDA build or nvcc was not found (set CUDA_HOME)")
    return mode == "1" or (mode == "auto" and have)


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard comes from torch (C++20 since 2.10)
    include_dirs = [os.path.join(here, "csrc")]
    if not _want_cuda():
        return CppExtension("recsys_kernels._C", cpp, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    if any(a.startswith("9.0a") for a in os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";")):
        nvcc_flags.append("-DRECSYS_KERNELS_SM90A")  # the host may pick the wgmma kernels (sm_90a code exists)
    return CUDAExtension("recsys_kernels._C", cpp + cu, include_dirs=include_dirs,
                         define_macros=[("RECSYS_KERNELS_WITH_CUDA", "1")],
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                         extra_link_args=["-fopenmp"])


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


# models/ is importable as recsys_kernels.models: model definitions sit beside the package, not inside it.
_MODELS = ["recsys_kernels.models"] + ["recsys_kernels.models." + p for p in find_packages("models")]

setup(
    packages=find_packages(include=["recsys_kernels", "recsys_kernels.*"]) + _MODELS,
    package_dir={"recsys_kernels.models": "models"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
)
