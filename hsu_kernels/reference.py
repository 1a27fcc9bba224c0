"""The oracle: docs/spec.md written as plainly as possible in PyTorch.

Every function here materializes the full ``N x N`` matrix and lets autograd differentiate it. That is
O(N^2) memory and slow, and it is the point: nothing in this file is clever, so every kernel can be checked
against it in float64. Half-space energies are computed the naive way, by concatenating ``[U, -U]``, so the
kernels' ``2 sum [phi(g) + phi(-g)] + sum phi(-g_ii)`` shortcut is tested against an independent form.

Three things are written in their numerically stable form, because the literal one is wrong even in float64
on valid inputs (docs/spec.md §1, §4, §5):

- close pairs. The squared distance ``2 - 2g`` (or ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j``) cancels when two rows
  are nearly parallel (or nearly antipodal): exact duplicates of norm 100 give ``2 - 2g = 0`` in float32
  where the true value is ``2e-8``. Every pair whose ``1 - |g|`` is below :data:`CLOSE` (or whose expanded
  distance is below ``CLOSE (|x_i|^2 + |x_j|^2)``) is recomputed from coordinate differences in float64:
  ``1 - |g| = (a_i + a_j + |u_i - sign(g) u_j|^2) / 2`` with ``a_i = 1 - |u_i|^2 = eps_norm / n_i^2`` in
  closed form. Angles come from ``om = 1 - |g|`` as ``2 asin(sqrt(om / 2))`` (or ``pi`` minus it), never
  from ``acos`` near ``+-1``.
- extreme norms. Rows are scaled by a power of two before their squared norm is formed, so rows whose
  ``|w|^2`` overflows (or underflows) are normalized exactly.
- the Gaussian kind is reduced as a log-sum-exp (:func:`gaussian_logsum`), finite at any feature scale, with the
  mean's ``1/pairs`` inside the log (:func:`log_mean_exp`): ``log(sum) - log(pairs)`` of clustered features,
  whose log-mean is near 0, subtracts two numbers near ``log(pairs)`` and keeps few of float32's digits.

Being plain, it inherits autograd's limits in one place: the derivative of a pair whose ``2 - 2g`` is below
~1e-200 overflows. (The half-space pair ``(u_i, -u_i)``, whose angle is pi whatever ``w`` is when
``eps_norm = 0``, gets derivative 0, as in the kernels, not autograd's ``inf * 0``.)

A pair at distance exactly 0 (only possible with ``eps_norm=0`` or ``normalize=False``) has no derivative:
Riesz and log energies are ``+inf`` there, and autograd gives NaN in the rows of such a pair (the same
convention as the kernels, see docs/precision.md). The reference does not guard against overflow of the
per-pair terms themselves (e.g. angular ``s = 50`` in float32): the kernels do.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ._params import EnergyParams, num_pairs

#: Pairs with ``1 - |g|`` below this (or an expanded distance below this fraction of ``|x_i|^2 + |x_j|^2``)
#: are recomputed from coordinate differences.
CLOSE = 2.0**-4


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype != torch.float64 else dtype


def row_scale(w: torch.Tensor, eps_norm: float):
    """``u = w / n`` and ``a = eps_norm / n^2`` with ``n = sqrt(|w|^2 + eps_norm)`` (docs/spec.md §1), formed after
    dividing each row by a power of two ``m >= max(|w_id|, sqrt(eps_norm))`` so that no square overflows or
    underflows. Returns ``(u, a, rs, m)`` with ``rs = m / n`` (so ``u = (w / m) rs``); ``a``, ``rs``, ``m`` of
    shape ``[..., N, 1]``, ``m`` constant (no gradient)."""
    big = w.detach().abs().amax(-1, keepdim=True)
    if eps_norm > 0:
        big = big.clamp_min(math.sqrt(eps_norm))
    big = torch.where(big > 0, big, torch.ones_like(big))
    m = torch.ldexp(torch.ones_like(big), torch.frexp(big).exponent)
    ws = w / m
    eps_s = (eps_norm / m) / m
    n2 = (ws * ws).sum(-1, keepdim=True) + eps_s
    rs = torch.rsqrt(n2)
    return ws * rs, eps_s / n2, rs, m


def normalize_rows(w: torch.Tensor, eps_norm: float) -> torch.Tensor:
    """``u_i = w_i / sqrt(|w_i|^2 + eps_norm)`` (docs/spec.md §1)."""
    return row_scale(w, eps_norm)[0]


def phi_of_g(g: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """The per-pair term as a function of the cosine of two normalized rows (docs/spec.md §3), literally: ``acos``
    and ``2 - 2g`` (the stable form the reference computes with is :func:`phi_of_om`)."""
    if p.spec.angle:
        return p.phi(torch.acos(g) / math.pi + p.eps_ang)
    return phi_of_d2(2 - 2 * g, p)


def phi_of_om(g: torch.Tensor, om: torch.Tensor, p: EnergyParams,
              self_pair: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The per-pair term (docs/spec.md §3) as a function of the cosine ``g`` and ``om = 1 - |g|``.
    ``self_pair`` marks the half-space pairs ``(u_i, -u_i)``: with ``eps_norm = 0`` their angle is pi whatever
    ``w`` is, so its derivative is 0 (as the kernels take it), not ``sqrt'(0) * 0 = NaN``. Other pairs at
    ``om = 0`` (duplicates with ``eps_norm = 0``) have no derivative and keep NaN (docs/precision.md)."""
    if p.spec.angle:
        if self_pair is None:
            half = 2 * torch.asin(torch.sqrt(om.clamp_min(0) / 2))
        else:
            flat = self_pair & (om <= 0)
            half = torch.where(flat, 0.0, 2 * torch.asin(torch.sqrt(torch.where(flat, 1.0, om.clamp_min(0)) / 2)))
        theta = torch.where(g >= 0, half, math.pi - half)
        return p.phi(theta / math.pi + p.eps_ang)
    return phi_of_d2(torch.where(g >= 0, 2 * om, 2 - 2 * g), p)


def phi_of_d2(d2: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """The per-pair term as a function of the squared distance (the distance kinds)."""
    if p.spec.angle:
        raise ValueError(f"kind={p.kind!r} needs normalized rows")
    return p.phi(d2)


def _pairs(n: int, device) -> torch.Tensor:
    return torch.triu_indices(n, n, offset=1, device=device)


def _geometry(x: torch.Tensor, y: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, p: EnergyParams):
    """For the pairs ``(x[..., ii], y[..., jj])``: ``(g, om)`` (normalized) or ``d2`` (un-normalized), each of
    shape ``[..., P]``, with close pairs recomputed from coordinate differences in float64."""
    wide = _wide(x.dtype)
    if p.normalize:
        # rows normalized in float64 (in float32 autograd's (I - u u^T) / n cancels for a radial gradient),
        # multiplied in the input's dtype
        ux = row_scale(x.to(wide), p.eps_norm)[0].to(x.dtype)
        uy = row_scale(y.to(wide), p.eps_norm)[0].to(y.dtype)
        g = (ux @ uy.transpose(-1, -2))[..., ii, jj]
        om = torch.where(g >= 0, 1 - g, 1 + g)  # 1 - |g|, with a derivative at g = 0 (abs' has 0 there)
        if _dense(x, y):  # no data-dependent shapes (a compiled graph, vmap): every pair, selected
            exact, sign = _careful_om(x.to(wide), y.to(wide), ii, jj, g, p)
            use = om < CLOSE
            return torch.where(use, (sign * (1 - exact)).to(g.dtype), g), torch.where(use, exact.to(om.dtype), om)
        close = (om < CLOSE).nonzero(as_tuple=True)
        if close[0].numel():
            x64, y64 = x.to(wide), y.to(wide)
            _, ax64, rsx, mx = row_scale(x64, p.eps_norm)
            _, ay64, rsy, my = row_scale(y64, p.eps_norm)
            *bb, k = close
            i, j = ii[k], jj[k]
            sign = torch.where(g[close] >= 0, 1.0, -1.0).to(wide).detach()[:, None]
            # with v = w / m (m: the row's power of two, exact) and u = v rs: u_i - sign u_j =
            # rs_i (v_i - sign v_j) + sign v_j (rs_i - rs_j), the rows' difference first, so the pair keeps its
            # distance to ~1 ulp of itself, every factor is of order 1 however large the rows, and rows that
            # are power-of-two multiples of each other (same v, same rs) get exactly 0
            ri, rj = rsx[(*bb, i)], rsy[(*bb, j)]
            wi, wj = x64[(*bb, i)] / mx[(*bb, i)], sign * y64[(*bb, j)] / my[(*bb, j)]
            diff = ri * (wi - wj) + wj * (ri - rj)
            exact = 0.5 * (ax64[(*bb, i)][:, 0] + ay64[(*bb, j)][:, 0] + (diff * diff).sum(-1))
            om = om.index_put(close, exact.to(om.dtype))
            # g too (its far side, 2 -+ 2g, and its derivative): from the same float64 graph
            g = g.index_put(close, (sign[:, 0] * (1 - exact)).to(g.dtype))
        return g, om
    qx, qy = (x * x).sum(-1), (y * y).sum(-1)
    scale = qx[..., ii] + qy[..., jj]
    d2 = (scale - 2 * (x @ y.transpose(-1, -2))[..., ii, jj]).clamp_min(0)
    if _dense(x, y):
        diff = x[..., ii, :].to(wide) - y[..., jj, :].to(wide)
        return torch.where(~(d2 >= CLOSE * scale), (diff * diff).sum(-1).to(d2.dtype), d2)
    close = (~(d2 >= CLOSE * scale)).nonzero(as_tuple=True)  # also catches an overflowed |x|^2
    if close[0].numel():
        *bb, k = close
        diff = x[(*bb, ii[k])].to(wide) - y[(*bb, jj[k])].to(wide)
        d2 = d2.index_put(close, (diff * diff).sum(-1).to(d2.dtype))
    return d2


def _dense(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the close pairs are recomputed densely (every pair, then selected): in a compiled graph and
    under torch.func transforms, where the selection's data-dependent shape cannot be formed."""
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.is_functorch_wrapped_tensor(x) or torch._C._functorch.is_functorch_wrapped_tensor(y)


def _careful_om(x64: torch.Tensor, y64: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, g: torch.Tensor,
                p: EnergyParams):
    """``1 - |g|`` of every pair ``(x[..., ii], y[..., jj])`` from coordinate differences in float64 (as
    :func:`_geometry` forms it for its close pairs), and the sign of ``g``: the dense form, under
    torch.compile."""
    _, ax, rsx, mx = row_scale(x64, p.eps_norm)
    _, ay, rsy, my = row_scale(y64, p.eps_norm)
    sign = torch.where(g >= 0, 1.0, -1.0).to(x64.dtype).detach()
    ri, rj = rsx[..., ii, :], rsy[..., jj, :]
    wi, wj = x64[..., ii, :] / mx[..., ii, :], sign[..., None] * y64[..., jj, :] / my[..., jj, :]
    diff = ri * (wi - wj) + wj * (ri - rj)
    return 0.5 * (ax[..., ii, 0] + ay[..., jj, 0] + (diff * diff).sum(-1)), sign


def _pair_terms(x: torch.Tensor, y: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, p: EnergyParams,
                keep: Optional[torch.Tensor] = None, self_pair: Optional[torch.Tensor] = None):
    """``phi`` of the pairs ``(x[..., ii], y[..., jj])``, ``[..., P]``; with ``keep``, 0 where it is False
    (those entries get a harmless geometry before ``phi``, so they never enter the graph as inf or NaN);
    ``self_pair``: the half-space pairs ``(u_i, -u_i)`` (see :func:`phi_of_om`)."""
    if p.normalize:
        g, om = _geometry(x, y, ii, jj, p)
        if keep is not None:
            g, om = torch.where(keep, g, 0.0), torch.where(keep, om, 1.0)
        terms = phi_of_om(g, om, p, self_pair)
    else:
        d2 = _geometry(x, y, ii, jj, p)
        terms = phi_of_d2(d2 if keep is None else torch.where(keep, d2, 1.0), p)
    return terms if keep is None else torch.where(keep, terms, 0.0)


def _log_terms(x, y, ii, jj, p: EnergyParams, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``log phi`` of the pairs (the log-sum kinds); ``-inf`` where ``keep`` is False."""
    if p.normalize:
        g, om = _geometry(x, y, ii, jj, p)
        terms = p.log_phi(torch.where(g >= 0, 2 * om, 2 - 2 * g))
    else:
        terms = p.log_phi(_geometry(x, y, ii, jj, p))
    return terms if keep is None else torch.where(keep, terms, -math.inf)


def _self_pairs(w: torch.Tensor, p: EnergyParams):
    """The point set of a self energy (``[W, -W]`` in half-space mode), its unordered pairs ``ii, jj`` and
    ``keep``: None, or under torch.compile every ordered pair with ``keep = ii < jj`` (``triu_indices``
    needs N as a Python int: under ``torch.compile(dynamic=True)`` it would compile a graph per N)."""
    if p.half_space:
        w = torch.cat([w, -w], dim=-2)
    n = w.shape[-2]
    if torch.compiler.is_compiling():
        idx = torch.arange(n, device=w.device)
        ii, jj = idx[:, None].expand(n, n).reshape(-1), idx[None, :].expand(n, n).reshape(-1)
        return w, ii, jj, ii < jj
    iu = _pairs(n, w.device)
    return w, iu[0], iu[1], None


def _is_one(count) -> bool:
    return isinstance(count, int) and count == 1


def _summed(terms: torch.Tensor, count) -> torch.Tensor:
    """``sum(terms) / count`` over the last dimension, each term divided before the sum, so that a mean whose
    sum would overflow is still computed. ``count``: an int (symbolic under torch.compile)."""
    return (terms if _is_one(count) else terms / count).sum(-1)


def log_mean_exp(terms: torch.Tensor, count=1) -> torch.Tensor:
    """``log(sum(exp(terms)) / count)`` over the last dimension (``terms`` <= 0, ``-inf`` allowed), accurate
    relative to itself also near 0 (clustered features: ``-t d2`` all near 0).

    A log-sum-exp shifted by the largest term ``top``, with ``1/count`` applied before the log, never as
    ``- log(count)`` after it: for a log-mean near 0 that subtracts two numbers near ``log(count)`` (6.6e-3
    relative error in float32, issue 22). Where the mean of ``exp(terms - top)`` is within 1/2 of 1 it is
    taken as ``1 + excess / count`` with ``excess = sum expm1(terms - top) + (terms - count)``, and the log as
    ``log1p``: the weights' deficits ``1 - exp(.)``, which carry the result, are not rounded against 1 (the
    original code's ``log(mean(exp))`` is off by a few float32 ulps of 1 there). ``top`` and the log have the
    same sign, so their sum does not cancel."""
    top = terms.detach().amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no terms: log 0 = -inf below
    y = terms - top
    total = torch.exp(y).sum(-1)
    mean = total if _is_one(count) else total / count
    live = torch.isfinite(y)
    excess = torch.where(live, torch.expm1(torch.where(live, y, 0.0)), 0.0).sum(-1)
    excess = excess + (live.sum(-1) - count).to(excess.dtype)  # an exact integer: the terms beyond count
    z = excess if _is_one(count) else excess / count
    near = z.abs() <= 0.5
    return top[..., 0] + torch.where(near, torch.log1p(torch.where(near, z, 0.0)),
                                     torch.log(torch.where(near, 1.0, mean)))


def energy_sum(w: torch.Tensor, p: EnergyParams, count=1) -> torch.Tensor:
    """``E = sum_{i<j} phi(g_ij) / count`` of the rows of ``w`` (``[N, D]`` or ``[B, N, D]``), or of the 2N
    half-space points ``{w_i} u {-w_i}``. The pairs are selected before ``phi`` is applied, so the
    diagonal (not a pair) never enters the graph; each term is divided by ``count`` before the sum."""
    n = w.shape[-2]
    w, ii, jj, keep = _self_pairs(w, p)
    self_pair = (jj - ii == n) if p.half_space else None  # (u_i, -u_i): point i and its antipode n + i
    return _summed(_pair_terms(w, w, ii, jj, p, keep, self_pair), count)


def gaussian_logsum(w: torch.Tensor, p: EnergyParams, count=1) -> torch.Tensor:
    """``log(sum_{i<j} exp(-t d2_ij) / count)`` (half-space: over the 2N points) as a log-sum-exp
    (docs/spec.md §4, :func:`log_mean_exp`)."""
    w, ii, jj, keep = _self_pairs(w, p)
    return log_mean_exp(_log_terms(w, w, ii, jj, p, keep), count)


def energy(w: torch.Tensor, p: EnergyParams, reduction: str = "mean") -> torch.Tensor:
    """The energy, summed or averaged over unordered pairs (docs/spec.md §4)."""
    count = num_pairs(w.shape[-2], p.half_space) if reduction == "mean" else 1
    if p.spec.logsum:
        return torch.exp(gaussian_logsum(w, p, count))
    return energy_sum(w, p, count)


def _all_pairs(x: torch.Tensor, y: torch.Tensor):
    nx, ny = x.shape[-2], y.shape[-2]
    ii = torch.arange(nx, device=x.device)[:, None].expand(nx, ny).reshape(-1)
    jj = torch.arange(ny, device=x.device)[None, :].expand(nx, ny).reshape(-1)
    return ii, jj


def cross_logsum(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, count=1) -> torch.Tensor:
    """``log(sum_i sum_j exp(-t d2(x_i, y_j)) / count)`` (plus the pairs with ``-y_j`` in half-space mode), as
    :func:`log_mean_exp`."""
    ii, jj = _all_pairs(x, y)
    terms = _log_terms(x, y, ii, jj, p)
    if p.half_space:
        terms = torch.cat([terms, _log_terms(x, -y, ii, jj, p)], -1)
    return log_mean_exp(terms, count)


def cross_energy(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, reduction: str = "sum",
                 count=None) -> torch.Tensor:
    """``sum_i sum_j phi(g(x_i, y_j))`` over all pairs of two sets (``phi(g) + phi(-g)`` in half-space
    mode), or its mean over the ``Nx * Ny`` pairs (or divided by ``count`` when given: each term before the
    sum; the Gaussian kind's inside the log, :func:`log_mean_exp`)."""
    if count is None:
        count = x.shape[-2] * y.shape[-2] if reduction == "mean" else 1
    if p.spec.logsum:
        return torch.exp(cross_logsum(x, y, p, count))
    ii, jj = _all_pairs(x, y)
    e = _summed(_pair_terms(x, y, ii, jj, p), count)
    if p.half_space:
        e = e + _summed(_pair_terms(x, -y, ii, jj, p), count)
    return e


def squared_distances(w: torch.Tensor, half_space: bool = False, eps_norm: float = 1e-4) -> torch.Tensor:
    """``d2_ij = 2 - 2 g_ij`` over the unordered pairs of normalized rows (of ``[W, -W]`` in half-space
    mode), as a ``[..., P]`` vector."""
    if half_space:
        w = torch.cat([w, -w], dim=-2)
    u = normalize_rows(w, eps_norm)
    n = w.shape[-2]
    iu = torch.triu_indices(n, n, offset=1, device=w.device)
    g = u @ u.transpose(-1, -2)
    return (2 - 2 * g)[..., iu[0], iu[1]]


def min_separation(w: torch.Tensor, half_space: bool = False, eps_norm: float = 1e-4) -> torch.Tensor:
    """MHS: ``-min_{i<j} d2_ij`` (docs/spec.md §4)."""
    return -squared_distances(w, half_space, eps_norm).amin(-1)


def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t |x_i - x_j|^2)`` on the rows as given (docs/spec.md §4, §7), as a log-sum-exp, with
    ``|x_i - x_j|^2`` from the expanded form and close pairs recomputed from differences (docs/spec.md §5)."""
    p = EnergyParams("gaussian", 0.0, float(t), 0.0, 0.0, False, False)
    return gaussian_logsum(x, p, num_pairs(x.shape[-2], False))
