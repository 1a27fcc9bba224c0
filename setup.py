"""Build of hsu_kernels and its compiled ops (hsu_kernels._C).

The CPU kernel is always built. The CUDA sources in csrc/cuda/ are added when torch is a CUDA build and
nvcc is found (torch.version.cuda and CUDA_HOME, not torch.cuda.is_available(): a GPU-less build box must
still build the CUDA kernels), or when FORCE_CUDA=1. Environment:
  FORCE_CUDA=1            build the CUDA sources even if the check above says no
  HSU_NO_CUDA=1           never build them
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0")
  HSU_CPU_ARCH            -march for the CPU kernel (default "native": the extension is built where it runs;
                          set e.g. "x86-64-v2" to build a portable binary)
  MAX_JOBS                parallel compile jobs (ninja)
"""

import glob
import os

from setuptools import find_packages, setup


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    sources = [os.path.relpath(p, root) for p in ["csrc/hsu_ops.cpp", *sorted(glob.glob(os.path.join(root, "csrc/cpu/*.cpp")))]]
    cuda_sources = [os.path.relpath(p, root) for p in sorted(glob.glob(os.path.join(root, "csrc/cuda/*.cu")))]
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    no_cuda = os.environ.get("HSU_NO_CUDA", "0") == "1"
    with_cuda = not no_cuda and (force or (torch.version.cuda is not None and CUDA_HOME is not None))

    arch = os.environ.get("HSU_CPU_ARCH", "native")
    cxx = ["-O3", "-std=c++20", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if arch:
        cxx.append(f"-march={arch}")
    # torch's vector headers (ATen/cpu/vec, used by csrc/cpu/hsu_cpu_small.cpp) carry clang's '#pragma unroll',
    # which GCC reports once per use; a diagnostic pragma cannot silence these before GCC 13
    cxx.append("-Wno-unknown-pragmas")
    # at::parallel_for is an inline template: compiled without OpenMP it runs its body on one thread.
    # With torch's OpenMP backend we compile and link with -fopenmp; the loader then binds libgomp.so.1 to
    # the copy torch has already loaded, so the kernel shares torch's thread pool and thread count.
    link = []
    if "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "-std=c++20", "--use_fast_math" if os.environ.get("HSU_FAST_MATH") == "1" else "-lineinfo"]
        return [
            CUDAExtension(
                "hsu_kernels._C",
                sources + [s for s in cuda_sources],
                extra_compile_args={"cxx": cxx + ["-DHSU_WITH_CUDA"], "nvcc": nvcc},
                extra_link_args=link,
            )
        ]
    return [CppExtension("hsu_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["hsu_kernels", "hsu_kernels.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
