"""High-precision oracles of docs/spec.md §3-§6 and the error model the numerics tests hold every backend to.

The oracles work on the point set itself (``{w_i}``, or ``{w_i} u {-w_i}`` in half-space mode) and form
every pair from coordinate differences, never from a dot product:
``2 - 2g = a_i + a_j + |u_i - u_j|^2``, ``2 + 2g = a_i + a_j + |u_i + u_j|^2`` with ``a = eps_norm / n^2``,
``theta = 2 atan2(sqrt(1 - g), sqrt(1 + g))``.

- :func:`truth64`: float64 torch and autograd, the oracle of float32 (and half) inputs: every rounding
  error it makes is ~1e-16 relative, far below any float32 bar.
- :func:`truth_mp`: mpmath at 50 digits with the gradient written out (docs/spec.md §6, in the form
  ``(I - u_k u_k^T) u_l = s (delta + (a_k - u_k.delta) u_k)``, ``delta = s u_l - u_k``), the oracle of float64
  inputs. It costs O(N^2 D) Python operations: keep N and D small.

The error model (:func:`error_bars`): a backend's result may differ from the truth by what rounding every
pair's cosine by ``eta = K (eps (sqrt(D) + 2) (1 - |g|) + eps64 |delta|)`` would change (for normalize=False:
every pair's squared distance by ``K eps (sqrt(D) + 2) d2``, and by ``K eps64 (sqrt(D) + 2) (|x_i|^2 + |x_j|^2)``
where it is above the float64 threshold, expanded from a product), plus ``K eps`` relative of every term and
derivative (times ``1 + |p ln x|`` for a power ``x^(-p)``, which the kernels form as ``exp(-p ln x)``), through
the first and second derivatives of the per-pair term. It is relative to the true value pair by pair: a
duplicate pair whose ``2 - 2g`` were formed from a rounded dot product would miss it by orders of magnitude,
and it does not borrow any slack from the float32 reference's own error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

#: Multiplier of the error model (see the module docstring).
K = 32.0
#: The kernels' threshold of 1 - |g| for float64 cosines (csrc/hsu_pair.h close_tau<double>).
CLOSE_F64 = 2.0**-10
EPS64 = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class Problem:
    """One call: rows ``w`` (``Tensor[B, N, D]``, the input's dtype) and the energy's parameters."""

    w: torch.Tensor
    kind: str
    s: float = 1.0
    t: float = 2.0
    eps_norm: float = 1e-4
    eps_ang: float = 1e-4
    half_space: bool = False
    normalize: bool = True
    reduction: str = "mean"

    @property
    def log_form(self) -> bool:
        """The Gaussian kind is compared as its log-sum (docs/spec.md §4)."""
        return self.kind == "gaussian"

    def pairs(self) -> int:
        n = self.w.shape[1]
        return n * (2 * n - 1) if self.half_space else n * (n - 1) // 2

    def scale(self) -> float:
        return 1.0 / self.pairs() if self.reduction == "mean" else 1.0


def _points(w: torch.Tensor, half_space: bool) -> torch.Tensor:
    return torch.cat([w, -w], dim=-2) if half_space else w


def _normalize64(p: torch.Tensor, eps: float):
    """``u``, ``a = eps/n^2`` and ``n`` of float64 rows, after a power-of-two rescaling."""
    big = p.detach().abs().amax(-1, keepdim=True)
    if eps > 0:
        big = big.clamp_min(math.sqrt(eps))
    big = torch.where(big > 0, big, torch.ones_like(big))
    m = torch.ldexp(torch.ones_like(big), torch.frexp(big).exponent)
    ps = p / m
    eps_s = (eps / m) / m
    n2 = (ps * ps).sum(-1, keepdim=True) + eps_s
    return ps / torch.sqrt(n2), (eps_s / n2)[..., 0], (m * torch.sqrt(n2))[..., 0]


def _phi(pb: Problem, d2: torch.Tensor, omg: torch.Tensor, opg: torch.Tensor) -> torch.Tensor:
    """The per-pair term from ``d2`` (un-normalized), or from ``1 - g`` and ``1 + g`` (normalized)."""
    if pb.normalize and pb.kind in ("angular", "angular_log"):
        a = 2 * torch.atan2(torch.sqrt(omg), torch.sqrt(opg)) / math.pi + pb.eps_ang
        return a.pow(-pb.s) if pb.kind == "angular" else -torch.log(a)
    d = 2 * omg if pb.normalize else d2
    if pb.kind == "riesz":
        return d.pow(-pb.s / 2)
    if pb.kind == "log":
        return -torch.log(d)
    return -pb.t * d  # Gaussian: the log term


def _geometry64(pb: Problem, p: torch.Tensor):
    """Every ordered pair of the float64 point set ``p: [B, M, D]``: ``(1 - g, 1 + g)`` normalized, or
    ``(d2, None)``; each ``[B, M, M]``."""
    if pb.normalize:
        u, a, _ = _normalize64(p, pb.eps_norm)
        aa = a[:, :, None] + a[:, None, :]
        dm = ((u[:, :, None] - u[:, None]) ** 2).sum(-1)
        dp = ((u[:, :, None] + u[:, None]) ** 2).sum(-1)
        return 0.5 * (aa + dm), 0.5 * (aa + dp)
    return ((p[:, :, None] - p[:, None]) ** 2).sum(-1), None


def _energy64(pb: Problem, w64: torch.Tensor) -> torch.Tensor:
    p = _points(w64, pb.half_space)
    m = p.shape[1]
    iu = torch.triu_indices(m, m, offset=1)
    self_pair = iu[1] == iu[0] + w64.shape[1] if pb.half_space and pb.normalize else None
    if self_pair is not None:
        iu = iu[:, ~self_pair]  # taken in closed form below (selected out before any sqrt: no NaN from 0 * inf)
    a, b = _geometry64(pb, p)
    a = a[:, iu[0], iu[1]]
    b = b[:, iu[0], iu[1]] if b is not None else None
    terms = _phi(pb, a, a, b)
    if self_pair is not None:
        # the pair (w_i, -w_i) in closed form, 1 + g = a_i: with eps_norm = 0 it is antipodal for every w
        # (a_i = 0, a constant), so its derivative is 0, where autograd would meet infinity times zero
        ai = _normalize64(w64, pb.eps_norm)[1]
        ai = ai.detach() if pb.eps_norm == 0 else ai
        terms = torch.cat([terms, _phi(pb, None, 2 - ai, ai)], -1)
    if pb.log_form:
        return torch.logsumexp(terms, -1) + math.log(pb.scale())
    return pb.scale() * terms.sum(-1)


def truth64(pb: Problem) -> Tuple[torch.Tensor, torch.Tensor]:
    """Energy ``[B]`` (the log-sum for the Gaussian kind) and gradient ``[B, N, D]`` in float64."""
    w = pb.w.detach().double().requires_grad_(True)
    e = _energy64(pb, w)
    (g,) = torch.autograd.grad(e.sum(), w)
    return e.detach(), g


def truth_mp(pb: Problem, dps: int = 50) -> Tuple[torch.Tensor, torch.Tensor]:
    """As :func:`truth64`, in mpmath (for float64 inputs); the calling test is skipped, with the reason,
    where mpmath is not installed (torch's pip install brings it, through sympy; another torch build may
    not)."""
    import pytest

    mpmath = pytest.importorskip("mpmath", reason="the float64 oracle needs mpmath (pip install mpmath)")

    mp = mpmath.mp
    with mpmath.workdps(dps):
        bsz, n, dim = pb.w.shape
        es, gs = [], []
        for b in range(bsz):
            rows = [[mp.mpf(float(v)) for v in r] for r in pb.w[b].double().tolist()]
            pts = rows + ([[-v for v in r] for r in rows] if pb.half_space else [])
            e, g = _mp_one(pb, pts, dim, mp)
            gr = [[g[i][d] - (g[i + n][d] if pb.half_space else 0) for d in range(dim)] for i in range(n)]
            es.append(float(e))
            gs.append([[float(v) for v in r] for r in gr])
        return torch.tensor(es, dtype=torch.float64), torch.tensor(gs, dtype=torch.float64)


def _mp_one(pb: Problem, pts, dim, mp):
    m = len(pts)
    eps = mp.mpf(pb.eps_norm)
    if pb.normalize:
        # u = rho w_hat with w_hat = w/|w| and rho = |w|/n = sqrt(1 - a): differences of u are formed from
        # differences of w_hat and of rho ((rho_k - rho_l) = (a_l - a_k)/(rho_k + rho_l)), so that rows
        # parallel to ~1e-200 with another norm keep their distance a_k + a_l + (rho_k - rho_l)^2 at 50 digits
        sq = [mp.fsum(v * v for v in p) for p in pts]
        nrm = [mp.sqrt(q + eps) for q in sq]
        a = [eps / (q + eps) for q in sq]
        rho = [mp.sqrt(q / (q + eps)) for q in sq]
        hat = [[v / mp.sqrt(q) for v in p] if q > 0 else [mp.mpf(0)] * dim for p, q in zip(pts, sq)]
    terms, derivs, vecs = [], [], []  # per ordered pair (k, l), k < l stored once
    for k in range(m):
        for l_ in range(k + 1, m):
            if pb.normalize:
                drho = _mp_drho(sq, rho, eps, k, l_)  # rho_k - rho_l
                dm = drho**2 + rho[k] * rho[l_] * mp.fsum((x - y) ** 2 for x, y in zip(hat[k], hat[l_]))
                dp = drho**2 + rho[k] * rho[l_] * mp.fsum((x + y) ** 2 for x, y in zip(hat[k], hat[l_]))
                omg, opg = (a[k] + a[l_] + dm) / 2, (a[k] + a[l_] + dp) / 2
                sign = 1 if dm <= dp else -1
                f, df = _mp_phi_g(pb, omg, opg, mp)
                vec_k = _mp_tangent(hat, rho, a, sq, eps, k, l_, nrm[k], sign)
                vec_l = _mp_tangent(hat, rho, a, sq, eps, l_, k, nrm[l_], sign)
                if pb.half_space and l_ == k + m // 2 and a[k] == 0:
                    # the pair (w, -w) with eps_norm = 0: antipodal for every w, derivative 0
                    df, vec_k, vec_l = mp.mpf(0), [mp.mpf(0)] * dim, [mp.mpf(0)] * dim
            else:
                d2 = mp.fsum((x - y) ** 2 for x, y in zip(pts[k], pts[l_]))
                f, df = _mp_phi_d2(pb, d2, mp)
                vec_k = [2 * (x - y) for x, y in zip(pts[k], pts[l_])]
                vec_l = [-v for v in vec_k]
            terms.append(f)
            derivs.append(df)
            vecs.append((k, l_, vec_k, vec_l))
    scale = mp.mpf(1) / pb.pairs() if pb.reduction == "mean" else mp.mpf(1)
    if pb.log_form:
        top = max(terms)
        z = mp.fsum(mp.exp(x - top) for x in terms)
        lz = top + mp.log(z)
        weights = [mp.exp(x - lz) for x in terms]
        e = lz + mp.log(scale)
        coefs = [wt * dd for wt, dd in zip(weights, derivs)]
    else:
        e = scale * mp.fsum(terms)
        coefs = [scale * dd for dd in derivs]
    grad = [[mp.mpf(0)] * dim for _ in range(m)]
    for c, (k, l_, vk, vl) in zip(coefs, vecs):
        for d in range(dim):
            grad[k][d] += c * vk[d]
            grad[l_][d] += c * vl[d]
    return e, grad


def _mp_drho(sq, rho, eps, k, l_):
    """``rho_k - rho_l = (a_l - a_k) / (rho_k + rho_l)`` with ``a_l - a_k = eps (q_k - q_l) / ((q_k + eps)
    (q_l + eps))``: no cancellation, also for tiny rows, whose ``a`` are ~1."""
    if rho[k] + rho[l_] == 0:
        return 0
    return eps * (sq[k] - sq[l_]) / ((sq[k] + eps) * (sq[l_] + eps)) / (rho[k] + rho[l_])


def _mp_tangent(hat, rho, a, sq, eps, k, l_, nk, sign):
    """``(I - u_k u_k^T) u_l / n_k`` in the stable form ``sign (delta + (a_k - u_k.delta) u_k) / n_k`` with
    ``delta = sign u_l - u_k = rho_l (sign hat_l - hat_k) + (rho_l - rho_k) hat_k``."""
    drho = -_mp_drho(sq, rho, eps, k, l_)  # rho_l - rho_k
    delta = [rho[l_] * (sign * y - x) + drho * x for x, y in zip(hat[k], hat[l_])]
    uk = [rho[k] * x for x in hat[k]]
    ud = sum(x * dd for x, dd in zip(uk, delta))
    return [sign * (dd + (a[k] - ud) * x) / nk for x, dd in zip(uk, delta)]


def _mp_phi_g(pb: Problem, omg, opg, mp):
    """``phi`` and ``dphi/dg`` from ``1 - g`` and ``1 + g`` (the Gaussian kind: its log term ``-t d2``)."""
    if pb.kind in ("angular", "angular_log"):
        theta = 2 * mp.atan2(mp.sqrt(omg), mp.sqrt(opg))
        sin = mp.sqrt(omg * opg)
        a = theta / mp.pi + mp.mpf(pb.eps_ang)
        inv_sin = 1 / sin if sin != 0 else mp.inf  # a coincident pair: no derivative (NaN rows, as the kernels)
        if pb.kind == "angular":
            s = mp.mpf(pb.s)
            return a ** (-s), s / mp.pi * a ** (-s - 1) * inv_sin
        return -mp.log(a), inv_sin / (mp.pi * a)
    d = 2 * omg
    if d == 0 and pb.kind in ("riesz", "log"):
        return mp.inf, mp.inf  # a coincident pair: +inf, and no derivative
    if pb.kind == "riesz":
        s = mp.mpf(pb.s)
        return d ** (-s / 2), s * d ** (-s / 2 - 1)
    if pb.kind == "log":
        return -mp.log(d), 2 / d
    return -mp.mpf(pb.t) * d, 2 * mp.mpf(pb.t)


def _mp_phi_d2(pb: Problem, d2, mp):
    """``phi`` and ``dphi/dd2`` (un-normalized)."""
    if d2 == 0 and pb.kind in ("riesz", "log"):
        return mp.inf, -mp.inf  # coincident rows: +inf, and no derivative
    if pb.kind == "riesz":
        s = mp.mpf(pb.s)
        return d2 ** (-s / 2), -s / 2 * d2 ** (-s / 2 - 1)
    if pb.kind == "log":
        return -mp.log(d2), -1 / d2
    return -mp.mpf(pb.t) * d2, -mp.mpf(pb.t)


def _derivs(pb: Problem, omg, opg, d2):
    """``|phi| + |x dphi/dx|``, ``|phi'|``, ``|phi''|``, float64, for the error model: the first is the scale of
    the term's own rounding (``x``: the argument of its last ``pow``/``log``/``exp``, rounded to ~1 ulp:
    ``theta/pi + eps_ang`` angular, ``d2`` otherwise), the others its derivatives with respect to the
    pair's variable (``g`` normalized, ``d2`` otherwise). The Gaussian kind: those of its log term."""
    if pb.normalize:
        d = 2 * omg
        if pb.kind in ("angular", "angular_log"):
            theta = 2 * torch.atan2(torch.sqrt(omg), torch.sqrt(opg))
            sin = torch.sqrt(omg * opg)
            g = 1 - omg
            a = theta / math.pi + pb.eps_ang
            if pb.kind == "angular":
                s = pb.s
                f = a.pow(-s)
                d1 = s / math.pi * a.pow(-s - 1) / sin
                d2_ = s / math.pi * ((s + 1) / math.pi * a.pow(-s - 2) / sin**2 + a.pow(-s - 1) * g.abs() / sin**3)
                f = (1 + s) * f
            else:
                f = -torch.log(a)
                d1 = 1 / (math.pi * a * sin)
                d2_ = (1 / (math.pi * a**2 * sin**2) + g.abs() / (a * sin**3)) / math.pi
                f = f.abs() + 1
            return f, d1, d2_
        if pb.kind == "riesz":
            s = pb.s
            return (1 + s / 2) * d.pow(-s / 2), s * d.pow(-s / 2 - 1), s * (s + 2) * d.pow(-s / 2 - 2)
        if pb.kind == "log":
            return torch.log(d).abs() + 1, 2 / d, 4 / d**2
        return pb.t * d, torch.full_like(d, 2 * pb.t), torch.zeros_like(d)
    if pb.kind == "riesz":
        s = pb.s
        return (1 + s / 2) * d2.pow(-s / 2), s / 2 * d2.pow(-s / 2 - 1), s / 2 * (s / 2 + 1) * d2.pow(-s / 2 - 2)
    if pb.kind == "log":
        return torch.log(d2).abs() + 1, 1 / d2, 1 / d2**2
    return pb.t * d2, torch.full_like(d2, pb.t), torch.zeros_like(d2)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the last axis without overflow or underflow in the squares (a row of entries
    ~1e170 has a finite norm; ``Tensor.norm`` squares first and gives inf): each row divided by its largest
    magnitude first. Rows with an inf entry get inf, rows with a NaN get NaN."""
    top = x.abs().amax(-1, keepdim=True)
    safe = torch.where((top > 0) & torch.isfinite(top), top, torch.ones_like(top))
    out = (x / safe).norm(dim=-1) * safe[..., 0]
    out = torch.where(torch.isinf(top[..., 0]), top[..., 0], out)
    return torch.where(torch.isnan(x).any(-1), torch.full_like(out, math.nan), out)


def overflowing_rows(pb: Problem) -> torch.Tensor:
    """``[B, N]``: the rows in a pair whose own term is beyond float64 (so the energy is +inf), from the
    float64 geometry. Their gradients go through a derivative beyond float64 too and are NaN on every
    backend, whatever their true value (README, "Precision": infinite true values)."""
    if pb.log_form:
        return torch.zeros(pb.w.shape[:2], dtype=torch.bool)
    p = _points(pb.w.double(), pb.half_space)
    a, b = _geometry64(pb, p)
    terms = _phi(pb, a, a, b)
    m = p.shape[1]
    off = ~torch.eye(m, dtype=torch.bool)[None]
    hit = (torch.isinf(terms) & (terms > 0) & off).any(-1)
    n = pb.w.shape[1]
    return hit[:, :n] | hit[:, n:] if pb.half_space else hit


def _pow_ulps(pb: Problem, d: torch.Tensor, omg, opg) -> torch.Tensor:
    """``|p ln x|`` of each pair's power ``x^(-p)``, the ulps by which the kernels' vectorized form
    ``exp(-p ln x)`` may miss it (the Riesz kind's ``d^(-s/2)``, the angular kind's ``a^(-s)``, and their
    derivatives); 0 for the kinds without a power."""
    if pb.kind == "riesz":
        return (pb.s / 2) * torch.log(d).abs().nan_to_num(nan=0.0, posinf=0.0)
    if pb.kind == "angular" and pb.normalize:
        a = 2 * torch.atan2(torch.sqrt(omg), torch.sqrt(opg)) / math.pi + pb.eps_ang
        return pb.s * torch.log(a).abs()
    return torch.zeros_like(d)


def error_bars(pb: Problem, e_true: torch.Tensor, g_true: torch.Tensor, dtype: torch.dtype):
    """The allowed error of the energy (``[B]``, absolute) and of every gradient row (``[B, N]``, the
    Euclidean norm of the row's error) of a backend computing in ``dtype`` (see the module docstring; every
    row also gets ``K eps`` of the largest true gradient row: rounding at that magnitude), and the largest
    per-pair derivative (what an evaluation without overflow care must hold in ``dtype``)."""
    eps = torch.finfo(dtype if dtype == torch.float64 else torch.float32).eps
    p = _points(pb.w.double(), pb.half_space)
    bsz, m, dim = p.shape
    off = ~torch.eye(m, dtype=torch.bool)[None]
    root = math.sqrt(dim) + 2
    if pb.normalize:
        u, a, nrm = _normalize64(p, pb.eps_norm)
        omg, opg = _geometry64(pb, p)
        om = torch.minimum(omg, opg)
        sign = torch.where(omg <= opg, 1.0, -1.0).double()
        delta = sign[..., None] * u[:, None] - u[:, :, None]  # [B, k, l, D]: sign u_l - u_k
        # the kernels form delta as r_k (sign w_l - w_k) + sign w_l (r_l - r_k): float64 rounds it to ~1 ulp of
        # the larger of those two terms (they cancel for parallel rows of different norms)
        rk, rl = 1 / nrm[:, :, None], 1 / nrm[:, None, :]
        wk, wl = p[:, :, None], sign[..., None] * p[:, None]
        terms = row_norms(rk[..., None] * (wl - wk)) + (row_norms(wl) * (rl - rk).abs())
        # plus 2: the rounding of r_k and r_l themselves, ~1 ulp of |u|, except between rows that are exact
        # power-of-two multiples of each other (up to sign), whose r differ exactly by that power
        big = p.abs().amax(-1, keepdim=True)
        hat = p / torch.ldexp(torch.ones_like(big), torch.frexp(torch.where(big > 0, big, 1.0)).exponent)
        exact = (hat[:, :, None] == sign[..., None] * hat[:, None]).all(-1)
        rel = K * eps * root  # times om: the allowed error of g from rounding the cosine
        floor_g = K * EPS64 * (row_norms(delta) + terms + torch.where(exact, 0.0, 2.0))
        # a pair above the float64-cosine threshold (1/1024) may take the fast path: a cosine from a float64
        # product, ~sqrt(D) ulp of 1 whatever om is
        floor_g = floor_g + torch.where(om >= CLOSE_F64 * (1 - 1e-6), K * EPS64 * root, 0.0)
        eta = rel * om + floor_g
        ud = (u[:, :, None] * delta).sum(-1)
        tangent = delta + (a[:, :, None] - ud)[..., None] * u[:, :, None]
        grad_norm = row_norms(tangent) / nrm[:, :, None]  # |d g_kl / d p_k|
        # delta's rounding: 0 where it is exact, except against truth64, whose autograd through u = w / n
        # rounds every pair's gradient to ~1 ulp of |u| / n (mpmath, the float64 inputs' oracle, does not),
        # and except on the fast path (om above the float64 threshold), whose c u_j is projected on the
        # tangent space in the row epilogue: ~1 ulp of |c| / n (exact antipodes with eps_norm > 0: a radial
        # gradient of 2e-6 from terms of 0.09)
        floor = K * EPS64 / nrm[:, :, None]
        if dtype == torch.float64:
            # the kernels' close pairs: 1 - g small, or 1 + g where antipodes enter (half-space, angular)
            anti = pb.half_space or pb.kind in ("angular", "angular_log")
            careful = (om if anti else omg) < CLOSE_F64 * (1 - 1e-6)
            floor = torch.where(exact & careful, 0.0, floor)
        f, d1, d2_ = _derivs(pb, omg, opg, None)
        pu = _pow_ulps(pb, 2 * omg, omg, opg)
        var = om
    else:
        d2 = _geometry64(pb, p)[0]
        rel = K * eps * root
        # a pair whose d2 is at least the float64 threshold times |x_i|^2 + |x_j|^2 may take the fast path:
        # d2 expanded from a float64 product, ~sqrt(D) ulp of |x_i|^2 + |x_j|^2 whatever d2 is
        q = (p * p).sum(-1)
        qq = q[:, :, None] + q[:, None]
        floor_g = torch.where(d2 >= CLOSE_F64 * (1 - 1e-6) * qq, K * EPS64 * root * qq, 0.0)
        eta = rel * d2 + floor_g
        grad_norm = 2 * row_norms(p[:, :, None] - p[:, None])
        floor = torch.zeros_like(d2)
        f, d1, d2_ = _derivs(pb, None, None, d2)
        pu = _pow_ulps(pb, d2, None, None)
        var = d2
    # phi'' eta, formed so that a phi'' beyond float64 whose product with eta is not does no harm: phi'' times
    # the pair's variable (om or d2) from phi' alone (phi'' var / phi' = (s/2 + 1) etc. is bounded for every
    # kind), plus phi'' times the float64 floor only where that floor is not 0
    d2_eta = (d2_ * var).where(torch.isfinite(d2_), d1 * 8 * (1 + pb.s)) * rel + torch.where(
        floor_g > 0, d2_ * floor_g, 0.0)
    # the derivative's own rounding: the angular kind's a = theta/pi + eps_ang, rounded to ~1 ulp (not a
    # rounding of the pair's variable, which eta covers), enters a^(-s-1) s + 1 times (as a^(-s), with its
    # (1 + s) above, enters the energy)
    d1_round = (pb.s + 2 if pb.normalize and pb.kind == "angular" else 1.0) + pu
    f = f * (1 + pu)
    if pb.log_form:
        terms = _phi(pb, d2 if not pb.normalize else omg, omg if pb.normalize else None,
                     opg if pb.normalize else None)
        terms = torch.where(off, terms, -math.inf)
        lz = torch.logsumexp(terms.flatten(1), -1) - math.log(2)  # each unordered pair twice
        wts = torch.exp(terms - lz[:, None, None])
        dl = (wts * d1 * eta).sum((-1, -2)) / 2  # the log-sum's error from every pair's variable
        e_bar = dl + K * eps * (1 + e_true.abs())
        # a weight's error w (dx + dL), dx = d1 eta the error of its log term, times the term's gradient d1 v
        row = (wts * (((d1 * eta + dl[:, None, None]) * d1 + K * eps * d1) * grad_norm + d1 * floor)).where(off, 0)
        g_bar = row.sum(-1)
    else:
        sc = pb.scale()
        e_bar = sc * ((d1 * eta + K * eps * f).where(off, 0).sum((-1, -2)) / 2)
        row = ((d2_eta + K * eps * d1_round * d1) * grad_norm + d1 * floor).where(off, 0)
        g_bar = sc * row.sum(-1)
    n = pb.w.shape[1]
    if pb.half_space:
        g_bar = g_bar[:, :n] + g_bar[:, n:]
    rows = row_norms(g_true)
    top = torch.where(torch.isfinite(rows), rows, 0.0).amax(-1, keepdim=True)
    peak = float(torch.where(off & torch.isfinite(d1), d1, 0.0).max())
    # the output's own dtype: nothing below its smallest normal number is resolved
    tiny = K * torch.finfo(dtype if dtype == torch.float64 else torch.float32).tiny
    # where the model itself overflows (inf times 0) it gives no bound
    return (e_bar + tiny).nan_to_num(nan=math.inf), (g_bar + K * eps * top + tiny).nan_to_num(nan=math.inf), peak


# ---- log-means of clustered rows (issue 22) ------------------------------------------------------------------

#: float32's unit roundoff.
U = 2.0**-24
#: A float32 log-mean ``log(mean exp(-t d2))`` may be off by a few units of roundoff relative to itself: each
#: log term ``-t d2`` is within a few ulps (close pairs from coordinate differences, the others from float32
#: products, docs/spec.md §9) and the result is their weighted log-mean. What a backend adds to that in
#: absolute terms is the caller's ``abs_term`` (see the tests).
LOG_MEAN_REL = 8 * U


def check_log_mean(got: torch.Tensor, truth: float, abs_term: float, what: str, scale: float = 1.0) -> None:
    """``got / scale``, a float32 log-mean, within ``LOG_MEAN_REL |truth| + abs_term`` of ``truth``."""
    assert got.dtype == torch.float32, f"{what}: {got.dtype}"
    val = float(got.detach()) / scale
    err, bound = abs(val - truth), LOG_MEAN_REL * abs(truth) + abs_term
    assert err <= bound, (f"{what}: {val!r} vs {truth!r}: error {err:.3g} = {err / U:.3g}u "
                          f"({err / abs(truth):.3g} relative) > {bound:.3g}")


def clustered_rows(n: int, r: float, clusters: int, seed: int, d: int = 128):
    """``(x, centers)``: float32 unit rows, row i within ``r`` of ``centers[i % clusters]`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(clusters, d, dtype=torch.float64, generator=g), dim=-1)
    off = (2 * torch.rand(n, d, dtype=torch.float64, generator=g) - 1) / d**0.5  # |off| <= 1
    x = torch.nn.functional.normalize(c[torch.arange(n) % clusters] + r * off, dim=-1)
    return x.float(), c


def log_mean64(d2: torch.Tensor, t: float) -> float:
    """The original code's formula, ``log(mean(exp(-t d2)))``, in float64."""
    return float(torch.log(torch.exp(-t * d2.double()).mean()))


def unit_d2(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``2 - 2 u_i . u_j`` for every pair of rows of ``a`` and ``b`` with ``u = x / sqrt(|x|^2 + eps)``
    (docs/spec.md §1), in float64 from coordinate differences: ``|u_i - u_j|^2 + a_i + a_j``,
    ``a = 1 - |u|^2 = eps / (|x|^2 + eps)``."""
    a, b = a.double(), b.double()
    na, nb = (a * a).sum(-1, keepdim=True) + eps, (b * b).sum(-1, keepdim=True) + eps
    ua, ub = a / na.sqrt(), b / nb.sqrt()
    return torch.cdist(ua, ub, compute_mode="donot_use_mm_for_euclid_dist") ** 2 + eps / na + (eps / nb).T
