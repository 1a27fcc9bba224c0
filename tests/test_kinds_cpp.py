"""The C++ side of the table of kinds (csrc/hsu_kinds.h) against the Python one (hsu_kernels/kinds.py).

- ``hsu_kernels._C._kind_codes()``, built from the C++ name table, is ``hsu_kernels.kinds.KIND_CODE``;
- every compiled op (``torch.ops.hsu.energy_grad``, ``torch.ops.hsu.cross_energy_grad``: the C++ ops; the
  ``tiled_*`` and ``triton_*`` ops are Python ones), called directly on CPU tensors with an unknown kind code,
  raises a ValueError that names the code and the known kinds, on every path an input can take: self and cross
  energies, the small-D kernel (D <= 4), the float64 geometry (D <= 32) and float32 products (larger D), the
  direct and GEMM cross engines, normalized or not, half-space or not, float32 and float64, un-normalized rows
  large enough for the log-sum kind's float64 rerun, under autocast, and with inputs that require grad. The op's
  argument check (check_common) rejects the code before any kernel runs; the kernels' own dispatches
  (HSU_KIND_SWITCH) reject it too, which the CMake host test csrc/tests/test_kinds.cpp checks without torch.
"""

import pytest
import torch

from hsu_kernels import _ext
from hsu_kernels.kinds import KIND_CODE, KIND_TABLE

pytestmark = pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")

UNKNOWN = (len(KIND_TABLE), -1, 1000, len(KIND_TABLE) + 1, -(2**62))  # codes past the table, negative, huge
# (self N, cross Nx, Ny, D): the small-D kernel (self) and the direct cross engine; float64 geometry in the self
# tiles and the direct cross engine; float32 products, the GEMM cross engine
SHAPES = ((7, 5, 6, 3), (9, 4, 11, 16), (6, 5, 7, 40))


def _args(kind, half_space, normalize, scale=1.0):
    return (kind, 1.0, 2.0, 1e-4, 1e-4, half_space, normalize, scale)


def _unknown_code(code):
    known = ", ".join(f"{k.name} {k.code}" for k in KIND_TABLE)
    return rf"unknown kind code {code} \(known: {known}\)"


def test_kind_codes_match_the_python_table():
    codes = _ext._C._kind_codes()
    assert codes == KIND_CODE
    assert list(codes) == [k.name for k in KIND_TABLE]  # in code order
    assert all(type(v) is int for v in codes.values())
    codes["riesz"] = 99  # a fresh dict per call
    assert _ext._C._kind_codes() == KIND_CODE


@pytest.mark.parametrize("code", UNKNOWN)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s[3]}")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=("f32", "f64"))
def test_unknown_kind_raises_from_every_cpu_path(code, shape, dtype):
    n, nx, ny, d = shape
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, n, d, dtype=dtype, generator=gen)
    x = torch.randn(2, nx, d, dtype=dtype, generator=gen)
    y = torch.randn(2, ny, d, dtype=dtype, generator=gen)
    for normalize in (True, False):
        for half_space in (False, True):
            with pytest.raises(ValueError, match=_unknown_code(code)):
                torch.ops.hsu.energy_grad(w, *_args(code, half_space, normalize))
            with pytest.raises(ValueError, match=_unknown_code(code)):
                torch.ops.hsu.cross_energy_grad(x, y, *_args(code, half_space, normalize))


@pytest.mark.parametrize("code", UNKNOWN[:3])
def test_unknown_kind_raises_on_the_float64_rerun_paths(code):
    """Un-normalized float32 rows whose squared distances overflow float32 (or, for the log-sum kind, whose
    log terms are large) are recomputed in float64: the unknown code is refused before that decision too."""
    w = torch.randn(1, 6, 5) * 1e20
    with pytest.raises(ValueError, match=_unknown_code(code)):
        torch.ops.hsu.energy_grad(w, *_args(code, False, False))
    with pytest.raises(ValueError, match=_unknown_code(code)):
        torch.ops.hsu.cross_energy_grad(w, w * 0.5, *_args(code, False, False))
    w = torch.randn(1, 6, 3) * 1e3  # the small-D kernel's rows, large
    with pytest.raises(ValueError, match=_unknown_code(code)):
        torch.ops.hsu.energy_grad(w, *_args(code, True, False, scale=0.5))


@pytest.mark.parametrize("code", UNKNOWN[:3])
def test_unknown_kind_raises_under_autocast_and_autograd(code):
    """The Autocast kernels (csrc/hsu_autocast.cpp) and the registered autograd pass the code on to the CPU
    kernel, which refuses it."""
    w = torch.randn(1, 8, 3, requires_grad=True)
    x, y = torch.randn(1, 5, 20, requires_grad=True), torch.randn(1, 6, 20)
    with pytest.raises(ValueError, match=_unknown_code(code)):
        torch.ops.hsu.energy_grad(w, *_args(code, False, True))
    with pytest.raises(ValueError, match=_unknown_code(code)):
        torch.ops.hsu.cross_energy_grad(x, y, *_args(code, True, True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=_unknown_code(code)):
            torch.ops.hsu.energy_grad(w.detach().bfloat16(), *_args(code, False, True))
        with pytest.raises(ValueError, match=_unknown_code(code)):
            torch.ops.hsu.cross_energy_grad(x.detach().bfloat16(), y.bfloat16(), *_args(code, False, True))


def test_known_kinds_still_run():
    """Every code of the table reaches its kernel (self, cross, small D) and gives a finite energy."""
    gen = torch.Generator().manual_seed(1)
    for kind in KIND_TABLE:
        for d in (3, 40):
            w = torch.randn(1, 9, d, dtype=torch.float64, generator=gen)
            e, g = torch.ops.hsu.energy_grad(w, kind.code, 1.5, 2.0, 1e-4, 1e-4, True, True)
            assert torch.isfinite(e).all() and torch.isfinite(g).all(), kind.name
            e, gx, gy = torch.ops.hsu.cross_energy_grad(w, w[:, :4] * 2, kind.code, 1.5, 2.0, 1e-4, 1e-4, False, True)
            assert torch.isfinite(e).all() and torch.isfinite(gx).all() and torch.isfinite(gy).all(), kind.name


def test_angle_kinds_refuse_unnormalized_rows():
    """A known kind a path cannot serve is refused by name too (angle kinds exist only normalized)."""
    w = torch.randn(1, 6, 3)
    for kind in KIND_TABLE:
        if kind.angle:
            with pytest.raises(ValueError, match="angular kinds need normalize=True"):
                torch.ops.hsu.energy_grad(w, *_args(kind.code, False, False))
            with pytest.raises(ValueError, match="angular kinds need normalize=True"):
                torch.ops.hsu.cross_energy_grad(w, w, *_args(kind.code, False, False))
