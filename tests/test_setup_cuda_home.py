"""setup.py's CUDA toolkit discovery (``find_cuda_home``): CUDA_HOME found from nvcc itself when unset.

torch guesses the toolkit as the folder above the first ``nvcc`` on PATH, which is wrong when that nvcc is a
wrapper script (``exec /opt/cuda-13.0/bin/nvcc "$@"``) in ``/usr/local/bin``; the link then fails with
``cannot find -lcudart``. ``nvcc --dryrun`` prints the toolkit it belongs to (``#$ TOP=...``). These tests
use fake nvcc outputs and fake nvcc scripts in temporary folders (no CUDA needed).
"""

from __future__ import annotations

import os
import runpy
import shutil
import stat
import sys
from pathlib import Path

import pytest

SETUP = runpy.run_path(str(Path(__file__).resolve().parents[1] / "setup.py"), run_name="hsu_setup_under_test")
find_cuda_home = SETUP["find_cuda_home"]
cuda_home_from_dryrun = SETUP["cuda_home_from_dryrun"]
nvcc_dryrun = SETUP["nvcc_dryrun"]

#: The start of what nvcc 13.0 prints for `nvcc --dryrun -c x.cu` (on stderr), toolkit folder replaced.
DRYRUN = """#$ _NVVM_BRANCH_=nvvm
#$ _SPACE_=
#$ _CUDART_=cudart
#$ _HERE_={top}/bin
#$ _THERE_={top}/bin
#$ _TARGET_DIR_=targets/x86_64-linux
#$ TOP={top}/bin/..
#$ CICC_PATH={top}/bin/../nvvm/bin
#$ NVVMIR_LIBRARY_DIR={top}/bin/../nvvm/libdevice
"""


def _toolkit(root: Path) -> Path:
    """A fake toolkit folder: bin/ and the runtime header the discovery looks for."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("// fake\n")
    return root


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_parse_dryrun():
    assert cuda_home_from_dryrun(DRYRUN.format(top="/opt/cuda-13.0")) == "/opt/cuda-13.0"
    assert cuda_home_from_dryrun("nvcc fatal   : No input files specified\n") is None
    assert cuda_home_from_dryrun("") is None
    # the variable's name must match exactly (no prefix such as _TOP_)
    assert cuda_home_from_dryrun("#$ _TOP_=/wrong\n#$ TOP=/right/bin/..\n") == "/right"


def test_environment_wins(tmp_path):
    calls = []
    which = lambda name: calls.append(name) or "/usr/local/bin/nvcc"  # noqa: E731
    assert find_cuda_home({"CUDA_HOME": "/a"}, which, lambda n: "")[0] == "/a"
    assert find_cuda_home({"CUDA_PATH": "/b"}, which, lambda n: "")[0] == "/b"
    assert find_cuda_home({"CUDA_HOME": "/a", "CUDA_PATH": "/b"}, which, lambda n: "")[0] == "/a"
    assert calls == [], "nvcc must not be asked when the environment names the toolkit"


def test_wrapper_on_path_found_by_dryrun(tmp_path):
    """The case of this issue: nvcc on PATH is a wrapper outside the toolkit; the folder above it is not a
    toolkit, nvcc's own TOP= is."""
    top = _toolkit(tmp_path / "cuda-13.0")
    wrapper = tmp_path / "usr-local" / "bin" / "nvcc"
    home, how = find_cuda_home({}, lambda name: str(wrapper), lambda nvcc: DRYRUN.format(top=top))
    assert home == str(top) and "dryrun" in how


def test_fake_nvcc_scripts(tmp_path):
    """End to end through a real subprocess: a wrapper script on PATH that execs the toolkit's nvcc, which
    prints the --dryrun lines to stderr as nvcc does."""
    if shutil.which("sh") is None or sys.platform.startswith("win"):
        pytest.skip("needs a POSIX shell to run the fake nvcc scripts")
    top = _toolkit(tmp_path / "cuda-13.0")
    lines = DRYRUN.format(top=top).replace("$", "\\$")
    _script(top / "bin" / "nvcc", f'cat >&2 <<EOF\n{lines}EOF\n')
    wrapper = _script(tmp_path / "wrap" / "bin" / "nvcc", f'exec "{top}/bin/nvcc" "$@"\n')
    assert cuda_home_from_dryrun(nvcc_dryrun(str(wrapper))) == str(top)
    env = {"PATH": str(wrapper.parent)}
    home, _ = find_cuda_home(env, lambda name: shutil.which(name, path=env["PATH"]))
    assert home == str(top)


def test_symlinked_nvcc_without_top(tmp_path):
    """An nvcc whose --dryrun says nothing useful: the folder above the resolved symlink is the toolkit."""
    if sys.platform.startswith("win"):
        pytest.skip("symlinks need privileges on Windows")
    top = _toolkit(tmp_path / "cuda-12.4")
    real = _script(top / "bin" / "nvcc", "exit 1\n")
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    os.symlink(real, link)
    home, how = find_cuda_home({}, lambda name: str(link), lambda nvcc: "")
    assert home == str(top) and "above" in how


def test_nothing_found(tmp_path):
    assert find_cuda_home({}, lambda name: None, lambda nvcc: "")[0] is None
    # TOP= names a folder that is not a toolkit, and the folder above nvcc is not one either
    not_a_toolkit = tmp_path / "empty"
    not_a_toolkit.mkdir()
    home, how = find_cuda_home({}, lambda name: str(tmp_path / "bin" / "nvcc"),
                               lambda nvcc: DRYRUN.format(top=not_a_toolkit))
    assert home is None and "cuda_runtime.h" in how
    assert nvcc_dryrun(str(tmp_path / "no-such-nvcc")) == ""
