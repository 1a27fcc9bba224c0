"""Bad input never passes silently: each gets a ValueError/TypeError naming the argument, before any work."""

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext
from hsu_kernels.testing import rand_rows

W = rand_rows(8, 5)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: hk.energy(torch.randn(5)), ValueError, r"w must have rank 2 .* got shape \(5,\)"),
        (lambda: hk.energy(torch.randn(2, 3, 4, 5)), ValueError, r"w must have rank"),
        (lambda: hk.energy(torch.randn(1, 4)), ValueError, r"w must have at least 2 rows .*N = 1"),
        (lambda: hk.energy(torch.randn(5, 0)), ValueError, r"D >= 1"),
        (lambda: hk.energy(torch.randn(0, 5, 3)), ValueError, r"empty batch"),
        (lambda: hk.energy(torch.ones(5, 3, dtype=torch.int64)), TypeError, r"w must be a real floating tensor.*int64"),
        (lambda: hk.energy(torch.randn(5, 3, dtype=torch.complex64)), TypeError, r"w must be a real floating"),
        (lambda: hk.energy(W.tolist()), TypeError, r"w must be a torch.Tensor"),
        (lambda: hk.energy(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), ValueError, r"w contains NaN or Inf"),
        (lambda: hk.energy(torch.tensor([[1.0, float("inf")], [0.0, 1.0]])), ValueError, r"w contains NaN or Inf"),
        (lambda: hk.energy(W, "riesz", s=0.0), ValueError, r"s must be > 0"),
        (lambda: hk.energy(W, "angular", s=-1.0), ValueError, r"s must be > 0"),
        (lambda: hk.energy(W, "riesz", s=float("nan")), ValueError, r"s must be finite"),
        (lambda: hk.energy(W, "riesz", s="1"), TypeError, r"s must be a real number"),
        (lambda: hk.energy(W, "gaussian", t=0.0), ValueError, r"t must be > 0"),
        (lambda: hk.energy(W, eps_norm=-1.0), ValueError, r"eps_norm must be >= 0"),
        (lambda: hk.energy(W, "coulomb"), ValueError, r"kind must be one of"),
        (lambda: hk.energy(W, power="3"), ValueError, r"power must be one of"),
        (lambda: hk.energy(W, reduction="max"), ValueError, r"reduction must be one of"),
        (lambda: hk.energy(W, backend="fast"), ValueError, r"backend must be one of"),
        (lambda: hk.energy(W, backend="cuda"), ValueError, r"backend='cuda' is not available .*Available: \["),
        (lambda: hk.energy(W, "angular", normalize=False), ValueError, r"needs normalize=True"),
        (lambda: hk.energy(W, half_space=1), TypeError, r"half_space must be a bool"),
        (lambda: hk.energy(W, precision="fp8"), ValueError, r"precision must be"),
        (lambda: hk.energy(torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), eps_norm=0.0), ValueError, r"zero row"),
        (lambda: hk.energy_many(W), TypeError, r"ws must be a list"),
        (lambda: hk.energy_many([]), ValueError, r"at least one"),
        (lambda: hk.energy_many([W, torch.randn(1, 3)]), ValueError, r"ws\[1\] must have at least 2 rows"),
        (lambda: hk.energy_many([W, torch.randn(4, 3, 3)]), ValueError, r"ws\[1\] must have rank 2"),
        (lambda: hk.energy_many([W, W.float()]), TypeError, r"ws\[1\] is torch.float32"),
        (
            lambda: hk.cross_energy(W, torch.randn(4, 6, dtype=torch.float64)),
            ValueError,
            r"agree in rank, batch size and D",
        ),
        (lambda: hk.cross_energy(W, W.float()), TypeError, r"same dtype"),
        (
            lambda: hk.cross_energy(W, torch.empty(0, 5, dtype=torch.float64)),
            ValueError,
            r"y must have at least 1 rows",
        ),
        (lambda: hk.uniformity_loss(W, t=-2.0), ValueError, r"t must be > 0"),
        (lambda: hk.align_loss(W, W[:3]), ValueError, r"same shape"),
        (lambda: hk.align_loss(W, W, alpha=0), ValueError, r"alpha must be"),
        (lambda: hk.min_separation(torch.randn(1, 3)), ValueError, r"at least 2 rows"),
        (lambda: hk.min_separation(W, half_space="yes"), TypeError, r"half_space must be a bool"),
    ],
)
def test_bad_input_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_every_backend_checks_before_work():
    for backend in hk.available_backends("cpu"):
        with pytest.raises(ValueError, match="NaN"):
            hk.energy(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), backend=backend)


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_compiled_op_checks_its_own_input():
    """The op refuses NaN itself: a compiled graph skips the Python-side data checks."""
    w = torch.randn(1, 4, 3)
    w[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="w contains NaN or Inf"):
        torch.ops.hsu.energy_grad(w, 0, 1.0, 2.0, 1e-4, 1e-4, False, True)
    with pytest.raises(ValueError, match="kind code"):
        torch.ops.hsu.energy_grad(torch.randn(1, 4, 3), 9, 1.0, 2.0, 1e-4, 1e-4, False, True)
    with pytest.raises(ValueError, match="N >= 2"):
        torch.ops.hsu.energy_grad(torch.randn(1, 1, 3), 0, 1.0, 2.0, 1e-4, 1e-4, False, True)
    with pytest.raises(ValueError, match=r"shape \[B, N, D\]"):
        torch.ops.hsu.energy_grad(torch.randn(4, 3), 0, 1.0, 2.0, 1e-4, 1e-4, False, True)


def test_auto_never_picks_the_reference_on_cpu():
    assert hk.resolve_backend("auto", torch.device("cpu"), 64) in ("cpu", "torch")
    assert hk.resolve_backend("auto", torch.device("meta"), 64) == "torch"


def test_auto_skips_triton_for_float64_on_cuda():
    name = hk.resolve_backend("auto", torch.device("cuda"), 128, torch.float64)
    assert name != "triton"


def test_no_nan_for_valid_extremes():
    """Valid inputs never give NaN: tiny and huge rows, antipodal rows, nearly parallel rows. (Kernel
    backends only: the reference's plain autograd through acos cannot survive |w|^2 / eps_norm > 1e16, where
    u_i . u_i rounds to 1; the kernels differentiate the half-space self pair in closed form.)"""
    w = torch.tensor(
        [[1e-20, 0.0, 0.0], [1e15, 1.0, 0.0], [1e6, 2.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64
    )
    for backend in [b for b in hk.available_backends("cpu") if b != "reference"]:
        for kind in hk.KINDS:
            for hs in (False, True):
                x = w.clone().requires_grad_(True)
                e = hk.energy(x, kind, 1.0, half_space=hs, backend=backend)
                e.backward()
                assert torch.isfinite(e) and torch.isfinite(x.grad).all(), (backend, kind, hs)


def test_coincident_rows_give_infinite_energy_not_nan():
    """Two identical rows with eps_norm=0 are one point twice: Riesz and log energies are +inf."""
    w = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for backend in hk.available_backends("cpu"):
        for kind in ("riesz", "log"):
            e = hk.energy(w, kind, 1.0, eps_norm=0.0, backend=backend)
            assert e == float("inf"), (backend, kind, e)


def test_jit_trace_is_refused_with_a_clear_error():
    """torch.jit.trace would record the pair count of the mean (a Python int) and the tiling as constants:
    traced at N = 5 and called at N = 9, the mean came out 3.5467 instead of 0.9852. Refused instead."""
    for fn in (lambda w: hk.energy(w, backend="torch"), lambda w: hk.uniformity_loss(w),
               lambda w: hk.energy_many([w], backend="torch"), lambda w: hk.cross_energy(w, w, backend="torch")):
        with pytest.raises(RuntimeError, match=r"does not support torch.jit.trace"):
            torch.jit.trace(fn, torch.randn(5, 3))
    # eager calls are unaffected
    assert torch.isfinite(hk.energy(torch.randn(9, 3), backend="torch"))
