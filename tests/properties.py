"""Shared parts of the property-based suites (tests/test_properties.py, tests/test_triton_properties.py):
the hypothesis profiles, the strategy that draws problems with structured rows, and the check of one
backend against the oracle and its error model (tests/oracle.py).

Profiles (``HSU_HYPOTHESIS_PROFILE``): ``ci`` (the default: a few hundred examples, derandomized so that
``make test`` is reproducible) and ``long`` (10,000 examples per test, fresh randomness). No example
database is written.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from oracle import Problem, error_bars, overflowing_rows, row_norms, truth64, truth_mp

import hsu_kernels as hk
from hsu_kernels.testing import energy_and_grad

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=400, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=10_000, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HSU_HYPOTHESIS_PROFILE", "ci"))

#: Row structures: kept as drawn, a duplicate of an earlier row, its antipode, a near-parallel copy, a
#: copy scaled by a power of two (parallel, another norm), a zero row, a row scaled by 10^k.
ROW_OPS = ("keep", "keep", "keep", "dup", "anti", "near", "pow2", "zero", "scale")
F32_DS = (1, 2, 3, 4, 5, 8, 16, 31, 32, 33, 40, 64)
F64_DS = (1, 2, 3, 4, 5, 8)


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float64), structured=True, kinds=None, dims=None, max_s=50.0):
    """A :class:`oracle.Problem` with drawn sizes, kind, parameters, scale and (``structured``) rows; ``dims``
    replaces the row lengths drawn from, ``max_s`` bounds the angular exponent."""
    dtype = draw(st.sampled_from(dtypes))
    f64 = dtype == torch.float64
    kind = draw(st.sampled_from(kinds or hk.KINDS))
    normalize = True if kind in ("angular", "angular_log") else draw(st.booleans())
    raw_gauss = kind == "gaussian" and not normalize
    half_space = False if raw_gauss else draw(st.booleans())
    if kind == "riesz":
        s = draw(st.one_of(st.sampled_from([0.5, 1.0, 2.0, 3.5]), st.floats(0.1, 6.0)))
    elif kind == "angular":
        s = draw(st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0.1, max_s)))
    else:
        s = 0.0
    t = draw(st.floats(0.1, 10.0)) if kind == "gaussian" else 2.0
    eps_norm = draw(st.sampled_from([1e-4, 1e-4, 0.0, 0.3, 1e-8])) if normalize else 1e-4
    eps_ang = draw(st.sampled_from([1e-4, 1e-2]))
    reduction = "mean" if raw_gauss else draw(st.sampled_from(["mean", "sum"]))
    n = draw(st.integers(2, 7 if f64 else 20))
    d = draw(st.sampled_from(dims or (F64_DS if f64 else F32_DS)))
    if d == 1 and normalize and eps_norm == 0:
        # every pair of exact unit "rows" of D = 1 is at distance 0 or 2; rows exactly parallel with a ratio
        # that is not a power of two then get a distance of ~1 ulp, not 0 (README, "Precision": limits)
        eps_norm = 1e-4
    # at D = 1 every pair is exactly parallel: 2 - 2g is then accurate to ~1e-32 absolute (README, limits),
    # so its rows keep norms where eps_norm / |w|^2 stays well above that
    moderate = d == 1 and normalize
    b = draw(st.sampled_from([1, 1, 2]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    if structured:
        no_zero = normalize and eps_norm == 0
        for k in range(1, n):
            op = draw(st.sampled_from(ROW_OPS))
            src = w[:, draw(st.integers(0, k - 1))]
            if op == "dup":
                w[:, k] = src
            elif op == "anti":
                w[:, k] = -src
            elif op == "near":
                rel = 10.0 ** -draw(st.integers(1, 13 if f64 else 7))
                w[:, k] = src * (1 + rel * torch.randn(b, d, generator=gen, dtype=torch.float64))
            elif op == "pow2":
                w[:, k] = src * 2.0 ** draw(st.integers(-6, 6))
            elif op == "zero" and not no_zero:
                w[:, k] = 0
            elif op == "scale":
                w[:, k] *= 10.0 ** draw(st.integers(-3 if moderate else -8, 3 if moderate else 8))
        # raw rows keep moderate scales: their energies are not scale-free and overflow float32 otherwise;
        # float64 rows up to ~1e98, where a duplicate pair's 2 - 2g = eps_norm / |w|^2 stays above ~1e-200
        # (README, "Precision": limits)
        top = (90 if f64 else 20) if (normalize or raw_gauss) and not moderate else 3
        w = w * 10.0 ** draw(st.integers(-top, top))
    w = w.to(dtype)
    if normalize and eps_norm == 0:
        # a row without a direction is an error (tests/test_numerics.py checks that), not a draw
        small = w.abs().amax(-1) < (2.0**-1000 if f64 else torch.finfo(torch.float32).tiny)
        if bool(small.any()):
            w[small] = torch.ones((), dtype=dtype)
    return Problem(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, reduction)


def oracle(pb: Problem):
    """``(e_true, g_true, e_bar, g_bar, peak, lost)`` of a problem (mpmath for float64 inputs, float64
    otherwise; ``peak``: the largest per-pair derivative; ``lost``: the rows whose gradient may be NaN, see
    ``oracle.overflowing_rows``)."""
    e_true, g_true = truth_mp(pb) if pb.w.dtype == torch.float64 else truth64(pb)
    e_bar, g_bar, peak = error_bars(pb, e_true, g_true, pb.w.dtype)
    return e_true, g_true, e_bar, g_bar, peak, overflowing_rows(pb)


def call(backend: str, pb: Problem, value_only: bool = False):
    """The public function a user calls for ``pb``, as ``(value, gradient)``; the Gaussian kind as its log.
    ``value_only``: the value alone, under ``torch.no_grad`` (the value-only pass), and None for the gradient."""
    if pb.kind == "gaussian" and not pb.normalize:
        fn = lambda x: hk.uniformity_loss(x, t=pb.t, backend=backend)  # noqa: E731
    else:
        kw = dict(kind=pb.kind, s=pb.s, t=pb.t, eps_norm=pb.eps_norm, eps_ang=pb.eps_ang, half_space=pb.half_space,
                  normalize=pb.normalize, reduction=pb.reduction, backend=backend)
        if pb.kind == "gaussian":
            fn = lambda x: torch.log(hk.energy(x, **kw))  # noqa: E731
        else:
            fn = lambda x: hk.energy(x, **kw)  # noqa: E731
    if value_only:
        with torch.no_grad():
            return fn(pb.w), None
    return energy_and_grad(fn, pb.w)


def check(backend: str, pb: Problem, truth, slack: float = 1.0, value_only: bool = False) -> None:
    """One backend against the truth within the error model, with the documented conventions where the
    true value is not finite: +inf energies, NaN gradient rows exactly where the oracle has them, and
    no comparison of values beyond the dtype's range (an energy must then be large or inf; a gradient row
    is not compared), NaN allowed in the rows of a pair whose own term is beyond float64 (``truth[5]``, when
    given). ``slack`` multiplies the bars. ``value_only``: the value-only pass, its energy held to the same bar."""
    e_true, g_true, e_bar, g_bar = truth[:4]
    e_bar, g_bar = slack * e_bar, slack * g_bar
    e, g = call(backend, pb, value_only)
    e = e.double().reshape(-1)
    what = f"{backend} on {describe(pb)}"
    big = 0.25 * torch.finfo(torch.float32 if pb.w.dtype != torch.float64 else torch.float64).max
    for k in range(e.numel()):
        et = float(e_true[k])
        if math.isinf(et):
            assert float(e[k]) == et, f"{what}: energy {float(e[k])}, true {et}"
        elif abs(et) > big:
            assert not math.isnan(float(e[k])) and abs(float(e[k])) > big / 4, f"{what}: energy {float(e[k])}"
        else:
            err = abs(float(e[k]) - et)
            assert err <= float(e_bar[k]), (
                f"{what}: energy {float(e[k])!r} vs true {et!r}: error {err:.3g} > bar {float(e_bar[k]):.3g}"
            )
    if g is None:
        return
    g = g.double()
    nan_true = torch.isnan(g_true).any(-1)
    nan_got = torch.isnan(g).any(-1)
    beyond = ~nan_true & ~(g_true.abs().amax(-1) <= big)  # the true row leaves the dtype: not compared
    lost = truth[5].to(nan_got.device) if len(truth) > 5 else torch.zeros_like(nan_got)
    assert torch.equal(nan_got & ~beyond & ~lost, nan_true & ~lost), (
        f"{what}: NaN gradient rows {nan_got.tolist()} vs {nan_true.tolist()}")
    fits = ~nan_true & ~beyond & ~(lost & nan_got)
    row_err = row_norms(g - g_true)
    bad = fits & ~(row_err <= g_bar)
    if bool(bad.any()):
        idx = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: gradient row {idx} error {float(row_err[idx]):.3g} > bar {float(g_bar[idx]):.3g} "
            f"(|true row| {float(row_norms(g_true[idx])):.3g}); {int(bad.sum())} rows out of the bar"
        )
    assert not bool(torch.isnan(g[fits]).any()), f"{what}: NaN in the gradient"


def reference_holds(pb: Problem, truth) -> bool:
    """Whether the reference (plain autograd, no overflow care, reference.py) is held to the oracle on this
    problem: where its unscaled sum, the sum's gradient and every per-pair derivative fit its dtype, at
    moderate float64 scales (rows of norm 1e-30 to 1e30: beyond, its autograd's rounding of exactly
    parallel rows exceeds the error model), and not for the half-space angular energy with eps_norm = 0
    (1/sin(pi) in the pair (u_i, -u_i)), nor where eps_norm / |w|^2 is not a normal number of the dtype (it
    rounds 1 - |g| to it), nor at D = 1 (every row parallel, every gradient radial: autograd
    through u = w / n cancels to a few more ulps than the model allows). The kernels are held everywhere."""
    e_true, g_true, _, _, peak = truth[:5]
    f64 = pb.w.dtype == torch.float64
    inv = 1.0 if pb.kind == "gaussian" else 1.0 / pb.scale()
    finite = torch.isfinite(g_true)
    gmax = float(g_true[finite].abs().max()) if bool(finite.any()) else 0.0
    emax = float(e_true[torch.isfinite(e_true)].abs().max()) if bool(torch.isfinite(e_true).any()) else 0.0
    if max(max(emax, gmax) * inv, peak) > (1e300 if f64 else 1e30):
        return False
    norms = pb.w.double().norm(dim=-1)
    norms = norms[norms > 0]
    if f64 and norms.numel() and (float(norms.max()) > 1e30 or float(norms.min()) < 1e-30):
        return False
    if pb.w.shape[-1] == 1:
        return False
    if pb.normalize and pb.eps_norm > 0 and norms.numel():
        # a = eps_norm / |w|^2, the distance of duplicates and of the pair (u_i, -u_i), must be a normal
        # number of the dtype: the reference rounds 1 - |g| to it
        if pb.eps_norm / float(norms.max()) ** 2 < torch.finfo(pb.w.dtype).tiny:
            return False
    return not (pb.half_space and pb.kind.startswith("angular") and pb.eps_norm == 0)


def describe(pb: Problem) -> str:
    w = pb.w
    norms = w.double().norm(dim=-1)
    return (f"{pb.kind} s={pb.s:g} t={pb.t:g} hs={pb.half_space} norm={pb.normalize} eps_norm={pb.eps_norm:g} "
            f"eps_ang={pb.eps_ang:g} {pb.reduction} {w.dtype} B,N,D={tuple(w.shape)} "
            f"row norms {float(norms.min()):.3g}..{float(norms.max()):.3g}")


def closest(pb: Problem) -> float:
    """The smallest ``1 - |g|`` (normalized) or ``d2 / (|x_i|^2 + |x_j|^2)`` (not) over the problem's pairs
    (half-space: with the points ``-w_j`` too), from coordinates in float64."""
    w = pb.w.double()
    if pb.normalize:
        u = w / torch.sqrt((w * w).sum(-1, keepdim=True) + pb.eps_norm)
        g = u @ u.transpose(-1, -2)
        n = w.shape[-2]
        off = ~torch.eye(n, dtype=torch.bool)
        return float((1 - g.abs())[:, off].min())
    d2 = ((w[:, :, None] - w[:, None]) ** 2).sum(-1)
    q = (w * w).sum(-1)
    rel = d2 / (q[:, :, None] + q[:, None])
    n = w.shape[-2]
    return float(rel[:, ~torch.eye(n, dtype=torch.bool)].min())
