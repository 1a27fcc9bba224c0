"""Installation: the torch-version check at import, setup.py's early exits, the packaging metadata.

The subprocess tests run a fresh interpreter from the repository root (``cwd=ROOT``), so they test this
checkout whether or not it is installed.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hsu_kernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_version_mismatch_message():
    assert _ext.version_mismatch(None, "2.13.0") is None
    assert _ext.version_mismatch("2.13.0+cpu", "2.13.0+cpu") is None
    msg = _ext.version_mismatch("2.14.1+cu128", "2.13.0+cpu")
    assert "2.14.1+cu128" in msg and "2.13.0+cpu" in msg
    assert "pip install --no-build-isolation ." in msg


def test_import_with_another_torch_build_warns_once_and_keeps_working():
    """An extension recorded as built against another torch: one RuntimeWarning naming both versions and the
    fix, the binary is never loaded, ``backend="auto"`` falls back to a Python backend with the right number,
    and asking for ``backend="cpu"`` raises with the same explanation."""
    out = _run("""
        import sys, types, warnings
        fake = types.ModuleType("hsu_kernels._build_info")
        fake.TORCH_VERSION = "1.0.0+other"
        sys.modules["hsu_kernels._build_info"] = fake
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            import hsu_kernels as hk
        ours = [w for w in caught if "hsu_kernels._C was built against" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert ours[0].category is RuntimeWarning
        text = str(ours[0].message)
        assert "1.0.0+other" in text and str(torch.__version__) in text and "--no-build-isolation" in text
        assert "hsu_kernels._C" not in sys.modules
        assert not hk._ext.available() and "1.0.0+other" in hk._ext.load_error()
        assert "cpu" not in hk.available_backends("cpu")
        w = torch.randn(37, 5, dtype=torch.float64)
        e = hk.energy(w, "riesz", 1.0)
        e_ref = hk.energy(w, "riesz", 1.0, backend="reference")
        assert abs(e.item() - e_ref.item()) <= 1e-10 * abs(e_ref.item()), (e.item(), e_ref.item())
        try:
            hk.energy(w, backend="cpu")
        except ValueError as err:
            assert "1.0.0+other" in str(err) and "--no-build-isolation" in str(err), err
        else:
            raise AssertionError("backend='cpu' ran without its extension")
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_build_record_matches_running_torch():
    """The record setup.py writes beside the extension names the torch that runs here (make test builds both)."""
    built = _ext.built_against()
    if built is None:
        pytest.skip("no hsu_kernels/_build_info.py: the extension here was not built by this setup.py")
    assert built == str(torch.__version__)
    assert _ext.available(), _ext.load_error()


def test_setup_without_torch_fails_at_once_with_the_fix():
    """What pip's default isolated build sees (setuptools, no torch): setup.py exits 1 before any work, saying
    to build without isolation."""
    t0 = time.perf_counter()
    out = _run("""
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError, as in a build environment without it
        sys.argv = ["setup.py", "egg_info"]
        exec(compile(open("setup.py").read(), "setup.py", "exec"))
    """)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    assert "torch is not importable" in out.stderr and "pip install --no-build-isolation ." in out.stderr
    assert elapsed < 30, elapsed


def test_setup_with_old_setuptools_fails_with_the_fix():
    out = _run("""
        import sys
        import setuptools
        setuptools.__version__ = "65.5.0"
        sys.argv = ["setup.py", "egg_info"]
        exec(compile(open("setup.py").read(), "setup.py", "exec"))
    """)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "setuptools>=77" in out.stderr and "65.5.0" in out.stderr


def test_plain_pip_install_stops_at_once_with_the_fix(tmp_path):
    """The README's ``pip install .`` with pip's default build isolation (``--dry-run``: nothing is
    installed, but pip sets up its isolated build environment and asks setup.py for the build requirements,
    which is where it stops)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", ROOT], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if "torch is not importable" not in out and "Installing build dependencies" in out and "error" in out.lower() \
            and "Getting requirements to build" not in out:
        pytest.skip("pip could not install setuptools into its isolated build environment here (no index)")
    assert proc.returncode != 0, out
    assert "torch is not importable" in out and "pip install --no-build-isolation ." in out, out
    assert elapsed < 120, elapsed


def test_torch_is_not_a_build_requirement():
    """Listing torch in build-system.requires would make pip's isolated build fetch some other torch and build
    against it (minutes, then a binary for the wrong torch); without it, setup.py's exit above is what a plain
    ``pip install .`` meets."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert not any(r.split(">")[0].split("=")[0].split("<")[0].strip() == "torch"
                   for r in meta["build-system"]["requires"])
    assert meta["project"]["license"] == "MIT" and meta["project"]["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"
