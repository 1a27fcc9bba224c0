"""The portable build: one binary for every x86-64-v2 CPU, the widest kernel copy the CPU can run.

setup.py's default (HSU_CPU_ARCH=portable) compiles the CPU kernel for x86-64-v2, AVX2 and AVX-512 and
csrc/cpu/hsu_cpu_dispatch.cpp picks one on the first call. Checked here:

- statically (tools/check_isa.py): no function the linker placed from a baseline object holds an AVX
  instruction, none from an AVX2 object an AVX-512 one, and the wide copies really are wide;
- by running it on CPUs without AVX or without AVX-512, emulated by QEMU's user mode (``qemu-x86_64 -cpu
  Nehalem``: x86-64-v2; ``-cpu Haswell-noTSX``: AVX2, no AVX-512): the dispatcher must choose the copy that
  CPU model reports it can run, and that copy must run every kernel (self and cross energies, small and large
  D, every kind, float32 and float64) and give the float64 reference's numbers. (QEMU 7.2's user mode executes
  AVX instructions whatever the CPU model says, checked with a one-line AVX2 program under ``-cpu Nehalem``, so
  it cannot catch a stray wide instruction: the static check above does that);
- natively: the copy chosen is the widest this CPU runs, ``HSU_CPU_CAPABILITY`` picks a narrower one, which
  gives the same numbers within the error model, and an unknown or unsupported name is an error naming it.
"""

import os
import platform
import shutil
import subprocess
import sys

import pytest

from hsu_kernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTABLE = _ext.available() and _ext._C._cpu_capabilities_built() == "default,avx2,avx512"
pytestmark = pytest.mark.skipif(not PORTABLE, reason="not a portable build of the extension (HSU_CPU_ARCH is set "
                                                     "to one target, or not x86-64 with GCC): one copy, no dispatch")

#: Runs the CPU kernels on fresh inputs against the float64 reference and prints one line; argv[1] is the copy
#: the dispatcher must have chosen. Small sizes: under emulation every instruction costs ~50x.
SCRIPT = r"""
import sys
import torch
import hsu_kernels as hk
from hsu_kernels import _C

want = sys.argv[1]
assert _C._cpu_capability() == want, (_C._cpu_capability(), want)
torch.manual_seed(0)
checks = 0
for d in (3, 16, 40):
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-11)):
        for kind, s in (("riesz", 1.0), ("log", 0.0), ("angular", 2.0), ("gaussian", 0.0)):
            w = torch.randn(37, d, dtype=dtype, requires_grad=True)
            e = hk.energy(w, kind, s=s, half_space=kind == "riesz", backend="cpu")
            g, = torch.autograd.grad(e, w)
            w64 = w.detach().double().requires_grad_()
            e0 = hk.energy(w64, kind, s=s, half_space=kind == "riesz", backend="reference")
            g0, = torch.autograd.grad(e0, w64)
            assert abs(e.item() - e0.item()) <= tol * abs(e0.item()), (d, dtype, kind, e.item(), e0.item())
            assert (g.double() - g0).abs().max() <= tol * 10 * g0.abs().max(), (d, dtype, kind)
            checks += 1
        x, y = torch.randn(21, d, dtype=dtype), torch.randn(13, d, dtype=dtype)
        c = hk.cross_energy(x, y, backend="cpu")
        c0 = hk.cross_energy(x.double(), y.double(), backend="reference")
        assert abs(c.item() - c0.item()) <= tol * abs(c0.item()), (d, dtype, c.item(), c0.item())
        checks += 1
print("ok", want, checks)
"""


def _run(cmd, env_extra=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_baseline_objects_hold_no_wide_instruction():
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    so = _ext._C.__file__
    if not os.path.exists(os.path.join(os.path.dirname(so), "_C.map")):
        pytest.skip("no linker map beside the extension (setup.py keeps one only for a build in place)")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_isa.py"), "--summary", so],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "use SSE only" in proc.stdout, proc.stdout


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian's qemu-user) is not installed; .ci/run installs it")
@pytest.mark.parametrize("cpu,copy", [("Nehalem", "default"), ("Haswell-noTSX", "avx2")])
def test_each_copy_runs_on_a_cpu_without_the_wider_instructions(cpu, copy):
    proc = _run([QEMU, "-cpu", cpu, sys.executable, "-c", SCRIPT, copy])
    assert proc.returncode == 0, f"exit {proc.returncode} under qemu -cpu {cpu}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.split()[:2] == ["ok", copy], proc.stdout


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian's qemu-user) is not installed; .ci/run installs it")
def test_a_copy_the_cpu_cannot_run_is_refused():
    code = "from hsu_kernels import _C\ntry:\n    _C._cpu_capability()\nexcept ValueError as e:\n    print(e)\n"
    proc = _run([QEMU, "-cpu", "Haswell-noTSX", sys.executable, "-c", code], {"HSU_CPU_CAPABILITY": "avx512"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HSU_CPU_CAPABILITY=avx512 asks for instructions this CPU does not have" in proc.stdout, proc.stdout


def _host_level() -> str:
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx2", "fma", "bmi2"} <= flags:
        if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
            return "avx512"
        return "avx2"
    return "default"


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_the_widest_copy_this_cpu_runs_is_chosen_and_each_narrower_one_agrees():
    host = _host_level()
    assert _ext._C._cpu_capability() == host
    levels = ["default", "avx2", "avx512"]
    for copy in levels[: levels.index(host) + 1]:
        proc = _run([sys.executable, "-c", SCRIPT, copy], {"HSU_CPU_CAPABILITY": copy})
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert proc.stdout.split()[:2] == ["ok", copy], proc.stdout


def test_an_unknown_copy_name_is_an_error_naming_the_variable():
    code = "from hsu_kernels import _C\ntry:\n    _C._cpu_capability()\nexcept ValueError as e:\n    print(e)\n"
    proc = _run([sys.executable, "-c", code], {"HSU_CPU_CAPABILITY": "sse9"})
    assert "HSU_CPU_CAPABILITY must be one of default, avx2, avx512 (or unset), got 'sse9'" in proc.stdout, (
        proc.stdout + proc.stderr)
    code = ("import torch, hsu_kernels as hk\ntry:\n    hk.energy(torch.randn(5, 3), backend='cpu')\n"
            "except ValueError as e:\n    print('raised', e)\n")
    proc = _run([sys.executable, "-c", code], {"HSU_CPU_CAPABILITY": "sse9"})
    assert "raised" in proc.stdout and "HSU_CPU_CAPABILITY" in proc.stdout, proc.stdout + proc.stderr
