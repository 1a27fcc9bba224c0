"""Build of hsu_kernels and its compiled ops (hsu_kernels._C).

The CPU kernel is always built. The CUDA sources in csrc/cuda/ are added when torch is a CUDA build and
nvcc is found (torch.version.cuda and CUDA_HOME, not torch.cuda.is_available(): a GPU-less build box must
still build the CUDA kernels), or when FORCE_CUDA=1. Environment:
  FORCE_CUDA=1            build the CUDA sources even if the check above says no
  HSU_NO_CUDA=1           never build them
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0")
  HSU_CPU_ARCH            the CPU kernel's target. "portable" (the default): on x86-64 with GCC, the CPU
                          kernel is compiled three times, for x86-64-v2 (the build's baseline), AVX2 + FMA
                          (x86-64-v3) and AVX-512 (x86-64-v4), and the widest the CPU runs is chosen when the
                          extension is first used (csrc/cpu/hsu_cpu_dispatch.cpp; HSU_CPU_CAPABILITY=default,
                          avx2 or avx512 overrides it), so one binary runs on any x86-64-v2 CPU; elsewhere
                          (another architecture or compiler) one copy for the compiler's default target.
                          Any other value is a -march value (e.g. "native": one copy, for this CPU only).
                          "" : one copy, no -march.
  HSU_AVX512_WIDE=1       the AVX-512 copy vectorizes loops with 512-bit vectors (GCC's default tuning for
                          x86-64-v4 uses 256-bit ones); see docs/development.md for what it measured
  MAX_JOBS                parallel compile jobs (ninja)
  HSU_DEBUG=1             compile with debug info (-g); the default is a release build without it
  CUDA_HOME               the CUDA toolkit; when unset (and CUDA_PATH too), nvcc on PATH is asked where its
                          toolkit is (`nvcc --dryrun` prints it as TOP=), since torch's own guess (the
                          folder above nvcc) is wrong when nvcc on PATH is a wrapper script or a symlink

The extension is compiled against the torch that is installed where the build runs, and torch's C++ ABI
changes between versions: build without isolation (``pip install --no-build-isolation .``) into the
environment that will import it. The torch version of the build is written next to the extension
(``hsu_kernels/_build_info.py``); ``hsu_kernels/_ext.py`` compares it with the running torch at import.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Mapping, Optional, Tuple

from setuptools import __version__ as setuptools_version
from setuptools import find_packages, setup

#: Printed when torch cannot be imported, which is what a build in pip's default isolated environment
#: sees: fail in the first seconds and say what to run instead.
NEEDS_TORCH = """hsu-kernels compiles its C++ extension against the torch that will import it, so torch must be
installed before the build, in the environment that builds it (pip's default build isolation hides it).
Install torch first, then build without isolation:

    pip install torch
    pip install --no-build-isolation .          (or -e . for an editable install)
"""

try:
    import torch  # noqa: F401
except ImportError as exc:
    sys.exit(f"error: torch is not importable here ({exc}).\n{NEEDS_TORCH}")

# pyproject.toml's SPDX license string (PEP 639) needs setuptools 77; an older one fails with a schema error
if int(setuptools_version.split(".")[0]) < 77:
    sys.exit(f'error: hsu-kernels needs setuptools>=77 to build (found {setuptools_version}): '
             f'pip install "setuptools>=77", then build again')


def cuda_home_from_dryrun(text: str) -> Optional[str]:
    """The toolkit folder in the output of ``nvcc --dryrun`` (its ``#$ TOP=<path>`` line), normalized; None
    when the output has no such line."""
    for line in text.splitlines():
        m = re.match(r"\s*#\$\s*TOP=(.+)$", line)
        if m:
            return os.path.normpath(m.group(1).strip())
    return None


def is_cuda_toolkit(path: Optional[str]) -> bool:
    """True when ``path`` holds a CUDA toolkit (its runtime header), what torch needs to compile and link."""
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def nvcc_dryrun(nvcc: str) -> str:
    """What ``nvcc --dryrun`` prints (stdout and stderr) for a dummy compile; "" if nvcc cannot be run.
    Nothing is compiled and no file is read or written (the input need not exist)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([nvcc, "--dryrun", "-c", "hsu_probe.cu", "-o", os.devnull], cwd=tmp,
                                  capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout + proc.stderr


def find_cuda_home(environ: Mapping[str, str], which: Callable[[str], Optional[str]] = shutil.which,
                   dryrun: Callable[[str], str] = nvcc_dryrun) -> Tuple[Optional[str], str]:
    """Where the CUDA toolkit is, and how that was found.

    Args:
        environ: the environment (``CUDA_HOME``, then ``CUDA_PATH``, win when set).
        which: finds an executable on PATH (``shutil.which``).
        dryrun: runs ``nvcc --dryrun`` and returns its output (:func:`nvcc_dryrun`).

    Returns:
        ``(path, how)``; ``path`` is None when no toolkit was found (``how`` then says why).
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            return environ[var], f"${var}"
    nvcc = which("nvcc")
    if nvcc is None:
        return None, "no nvcc on PATH"
    top = cuda_home_from_dryrun(dryrun(nvcc))
    if is_cuda_toolkit(top):
        return top, f"{nvcc} --dryrun (TOP=)"
    above = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if is_cuda_toolkit(above):
        return above, f"the folder above {os.path.realpath(nvcc)}"
    return None, f"{nvcc} names no toolkit with include/cuda_runtime.h (TOP={top})"


def _set_cuda_home(torch_cuda: Optional[str]) -> None:
    """Sets CUDA_HOME for torch.utils.cpp_extension (which reads it once, when imported) when the user did
    not, torch is a CUDA build (or FORCE_CUDA=1) and nvcc tells where its toolkit is."""
    if os.environ.get("HSU_NO_CUDA", "0") == "1" or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if torch_cuda is None and os.environ.get("FORCE_CUDA", "0") != "1":
        return
    home, how = find_cuda_home(os.environ)
    if home is not None:
        os.environ["CUDA_HOME"] = home
        print(f"hsu_kernels setup: CUDA toolkit {home} (from {how})")


def _is_gcc(compiler: str) -> bool:
    """Whether ``compiler --version`` names GCC (not clang, which also answers to ``g++``/``c++`` on macOS)."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "clang" not in out.lower() and ("gcc" in out.lower() or "free software foundation" in out.lower())


def cpu_build(arch: str, machine: str, gcc: bool) -> Tuple[list, list, bool]:
    """The CPU kernel's build for ``HSU_CPU_ARCH=arch`` on ``machine`` (``platform.machine()``).

    Returns ``(flags, isa_sources, dispatch)``: compiler flags for every C++ file, the per-instruction-set
    copies of the kernel (csrc/cpu/isa/, linked after the baseline objects), and whether they are built.
    """
    if arch == "portable":
        if machine.lower() in ("x86_64", "amd64") and gcc:
            # link order: every AVX2 object before every AVX-512 one (the linker keeps the first copy of a
            # header function emitted by several files, so each copy calls one compiled for its own level or
            # below: the baseline objects come first, these after them)
            here = os.path.dirname(os.path.abspath(__file__))
            isa = [p for level in ("avx2", "avx512")
                   for p in sorted(glob.glob(os.path.join(here, f"csrc/cpu/isa/*_{level}.cpp")))]
            flags = ["-march=x86-64-v2", "-mtune=generic", "-DHSU_CPU_DISPATCH"]
            if os.environ.get("HSU_AVX512_WIDE") == "1":
                flags.append("-DHSU_AVX512_WIDE")
            return flags, isa, True
        return [], [], False
    if arch:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", arch):
            raise SystemExit(f"HSU_CPU_ARCH must be 'portable', '' or a -march value, got {arch!r}")
        return [f"-march={arch}", f"-DHSU_CPU_ARCH_ID={arch}"], [], False
    return [], [], False


def _extensions():
    import torch

    _set_cuda_home(torch.version.cuda)  # before cpp_extension is imported
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = sorted(glob.glob(os.path.join(root, "csrc/cpu/*.cpp")))
    # the CPU kernels first: ninja starts the compiles in this order, and they are the long ones
    sources = [os.path.relpath(p, root) for p in [*cpu_sources, "csrc/hsu_ops.cpp", "csrc/hsu_autocast.cpp"]]
    cuda_sources = [os.path.relpath(p, root) for p in sorted(glob.glob(os.path.join(root, "csrc/cuda/*.cu")))]
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    no_cuda = os.environ.get("HSU_NO_CUDA", "0") == "1"
    # A CUDA_HOME the user set is trusted; torch's own guess only when it holds a toolkit.
    user_home = bool(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"))
    home_ok = CUDA_HOME is not None and (user_home or is_cuda_toolkit(CUDA_HOME))
    with_cuda = not no_cuda and (force or (torch.version.cuda is not None and home_ok))
    if with_cuda and not home_ok:
        raise SystemExit("FORCE_CUDA=1 but no CUDA toolkit was found (" + find_cuda_home(os.environ)[1] + "): "
                         "set CUDA_HOME to the toolkit folder (the one with bin/nvcc and include/cuda_runtime.h)")

    import platform
    import sysconfig

    arch = os.environ.get("HSU_CPU_ARCH", "portable")
    compiler = os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++").split()[0]
    arch_flags, isa_sources, dispatch = cpu_build(arch, platform.machine(), _is_gcc(compiler))
    # after the baseline objects: the linker keeps the first copy of a header function, the baseline one
    sources += [os.path.relpath(p, root) for p in isa_sources]
    what = "copies for x86-64-v2, AVX2 and AVX-512, chosen at run time" if dispatch else "for one target: "
    print(f"hsu_kernels setup: CPU kernel {what}{'' if dispatch else (arch or 'the compiler default')}")
    cxx = ["-O3", "-std=c++20", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    # Python's own CFLAGS carry -g (a 32 MB extension, slower compiles); the last -g option wins
    cxx.append("-g" if os.environ.get("HSU_DEBUG") == "1" else "-g0")
    cxx += arch_flags
    # torch's vector headers (ATen/cpu/vec, used by csrc/cpu/hsu_cpu_small.cpp) carry clang's '#pragma unroll',
    # which GCC reports once per use; a diagnostic pragma cannot silence these before GCC 13
    cxx.append("-Wno-unknown-pragmas")
    # GCC notes that passing 32-byte vectors changed ABI in GCC 4.6 (the baseline copy's ATen vectors); these
    # functions are internal to one file, so the note is noise
    cxx.append("-Wno-psabi")
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
                sources + cuda_sources,
                extra_compile_args={"cxx": cxx + ["-DHSU_WITH_CUDA"], "nvcc": nvcc},
                extra_link_args=link,
            )
        ]
    return [CppExtension("hsu_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """torch's BuildExtension, then the build's torch version next to the extension (only after a
        successful build, so it always describes the binary beside it)."""

        def build_extensions(self):
            # the linker's map (which object each function came from), kept beside the extension as _C.map
            # for tools/check_isa.py, which checks that the baseline objects hold no AVX instruction
            os.makedirs(self.build_temp, exist_ok=True)
            self._map = os.path.abspath(os.path.join(self.build_temp, "hsu_C.map"))
            for ext in self.extensions:
                ext.extra_link_args = [*ext.extra_link_args, f"-Wl,-Map={self._map}"]
            super().build_extensions()

        def run(self):
            super().run()
            import torch

            # get_ext_fullpath names the build folder, or the source tree for --inplace and editable installs
            folder = os.path.dirname(self.get_ext_fullpath("hsu_kernels._C"))
            if self.inplace and os.path.exists(getattr(self, "_map", "")):  # not into wheels
                shutil.copyfile(self._map, os.path.join(folder, "_C.map"))
            with open(os.path.join(folder, "_build_info.py"), "w") as f:
                f.write('"""Written by setup.py with hsu_kernels._C: the torch it was compiled against."""\n\n'
                        f"TORCH_VERSION = {str(torch.__version__)!r}\n"
                        f"TORCH_CUDA = {torch.version.cuda!r}\n")

    return {"build_ext": BuildExt}


# Guarded so that tests can load the discovery functions above without building (pip and `python setup.py`
# both run this file as __main__).
if __name__ == "__main__":
    setup(
        packages=find_packages(include=["hsu_kernels", "hsu_kernels.*"]),
        ext_modules=_extensions(),
        cmdclass=_cmdclass(),
    )
