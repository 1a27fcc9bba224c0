"""The tiled PyTorch path (``backend="torch"``): any device, O(N * block) memory.

The same algorithm as the compiled kernels (docs/spec.md §6), written with PyTorch ops over blocks of rows:
for a block ``I`` of rows, ``S = U_I U^T`` gives the cosines with every row, the per-pair terms are
evaluated elementwise (``csrc/hsu_pair.h`` in tensor form), and ``C @ U`` accumulates the gradient. The
energy and the gradient come out of one pass; ``backward`` only scales the saved gradient.

Every backend's pass is described by one contract, used by ``ops.py``:

    energy_grad(w, p, scale=1) -> (E, G)     w: Tensor[B, N, D]; E: Tensor[B] = scale * sum_{i<j} psi; G = dE/dw
    cross_energy_grad(x, y, p, scale=1) -> (E, Gx, Gy)

For the Gaussian kind ``E`` is the log-sum ``log(scale * sum exp(-t d2))`` and ``G`` its gradient (docs/spec.md §4).
``E`` is in the accumulation dtype (float32 for half inputs), ``G`` in the input dtype.

Numerics (docs/precision.md): rows are normalized in float64 after a power-of-two rescaling (no ``|w|^2``
overflows or underflows); every pair whose ``1 - |g|`` (or expanded distance) is small, or whose term
overflows the compute dtype, is recomputed in float64 from coordinate differences, and its gradient is
split into a small tangential vector and a radial coefficient the epilogue applies in closed form (no
cancellation of large radial parts); the Gaussian kind is an online log-sum-exp with a per-row maximum.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from ._params import EnergyParams, compute_dtype

_INV_PI = 1.0 / math.pi

#: Rows per block. The working set is about ``4 * block * N`` elements (dot products, energies and two
#: coefficient matrices): 256 rows of N = 100,000 in float32 is about 400 MB.
DEFAULT_BLOCK = 256

#: Up to this D, float32 tiles get their cosines in float64 (cheap there, and nearly parallel rows, common
#: among points on a low-dimensional sphere, keep their digits).
PRECISE_MAX_D = 32

#: Pairs with ``1 - |g|`` (normalized) or ``d2 / (|x_i|^2 + |x_j|^2)`` (un-normalized) below this are
#: recomputed from coordinates, by the dtype of the cosines and of the result (``close_tau`` in
#: csrc/hsu_pair.h): float32 cosines 1/16 (an error of ~sqrt(D) ulp in ``g`` is then at most 8 sqrt(D) ulp of
#: ``2 - 2g``), float64 cosines of float32 rows 2^-20, of float64 rows 2^-10.
CLOSE_F32 = 2.0**-4
CLOSE_F64_OF_F32 = 2.0**-20
CLOSE_F64 = 2.0**-10

#: Un-normalized float rows with ``max|w|^2 * D`` above this (so that a squared distance, up to
#: ``4 max|w|^2``, may pass float32's largest / 16) are computed in float64 by every float32 backend and the
#: results rounded back: in float32 their squared norms overflow and ``inf - inf`` gives NaN. The energy may
#: then be ``+-inf`` where its true value is beyond float32; the gradient is the true one wherever it fits.
#: (``raw_rows_need_double`` in csrc/hsu_checks.h, the same bound for the C++ and CUDA kernels.)
RAW_WIDE_BOUND = 2.0**122
#: ... and the Gaussian kind's un-normalized float rows with ``4 t max|w|^2 D`` above this.
RAW_GAUSS_BOUND = 2.0**13


def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # mps has no float64


def _phi_d2(d2: torch.Tensor, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """``f(d2)`` and ``df/dd2`` for the distance kinds (clamped at d2 = 0)."""
    d2 = d2.clamp_min(0)
    f = p.phi(d2)
    return f, p.dphi(d2, f)


def _theta(g: torch.Tensor, om: torch.Tensor) -> torch.Tensor:
    """The angle ``acos(g)``, accurate near ``|g| = 1`` (from ``om = 1 - |g|`` there)."""
    far = 2 * torch.asin(torch.sqrt(0.5 * om))  # acos(|g|)
    return torch.where(g.abs() <= 0.5, torch.acos(g), torch.where(g < 0, math.pi - far, far))


def _phi_g(g: torch.Tensor, om: torch.Tensor, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """``phi(g)`` and ``dphi/dg`` for normalized rows (docs/spec.md §3), given ``om = 1 - |g|`` (formed as
    accurately as the caller can: it carries the digits that ``g`` near ``+-1`` has lost)."""
    om = om.clamp_min(0)
    if p.spec.angle:
        a = _theta(g.clamp(-1, 1), om) * _INV_PI + p.eps_ang
        dtheta = -_INV_PI / torch.sqrt(om * (2 - om))
        f = p.phi(a)
        return f, p.dphi(a, f) * dtheta
    f, df = _phi_d2(torch.where(g >= 0, 2 * om, 2 - 2 * g), p)
    return f, -2 * df


def _careful_q(om: torch.Tensor) -> torch.Tensor:
    """``2 om``, or 1 where ``om = 0`` (nothing to scale by), as ``careful_q`` in csrc/hsu_pair.h."""
    return torch.where(om > 0, 2 * om, torch.ones_like(om))


def _phi_g_q(g: torch.Tensor, om: torch.Tensor, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """``phi(g)`` and ``q dphi/dg`` with ``q = 2 om = 2 (1 - |g|)``, the careful path's form (csrc/hsu_pair.h
    ``phi_g_om_q``): ``dphi/dg`` overflows float64 for pairs whose energy and gradient do not."""
    q = _careful_q(om)
    if p.spec.angle:
        a = _theta(g.clamp(-1, 1), om) * _INV_PI + p.eps_ang
        q_sin = torch.where(om > 0, 2 * torch.sqrt(om / (2 - om)), 1 / torch.sqrt(om * (2 - om)))
        f = p.phi(a)
        return f, -_INV_PI * p.dphi(a, f) * q_sin
    d2 = torch.where(g >= 0, 2 * om, 2 - 2 * g)
    f = p.phi(d2)
    # q dphi/dd2 as (q / d2) (d2 phi'): q / d2 is 1 for g >= 0, and d2 phi' stays finite where phi' overflows;
    # at d2 = 0 (where q = 1) the plain derivative
    return f, -2 * torch.where(d2 > 0, (q / d2) * p.x_dphi(d2, f), q * p.dphi(d2, f))


def _row_scale(x: torch.Tensor, eps_norm: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(r, a)`` of every row, ``Tensor[B, N]`` in the wide dtype: ``r = 1/sqrt(|w|^2 + eps_norm)``,
    ``a = eps_norm r^2``, formed after dividing the row by a power of two ``m >= max(|w_d|, sqrt(eps))``."""
    xw = x.to(_wide(x.device))
    big = xw.abs().amax(-1)
    if eps_norm > 0:
        big = big.clamp_min(math.sqrt(eps_norm))
    big = torch.where(big > 0, big, torch.ones_like(big))
    inv_m = torch.ldexp(torch.ones_like(big), -torch.frexp(big).exponent)
    xs = xw * inv_m[..., None]
    eps_s = (eps_norm * inv_m) * inv_m
    t = torch.rsqrt((xs * xs).sum(-1) + eps_s)
    return t * inv_m, eps_s * t * t


class _Rows:
    """Per-row data of one side of a pass: the rows, their float64 statistics, the geometry operand."""

    def __init__(self, x: torch.Tensor, p: EnergyParams, geo: torch.dtype):
        self.x = x  # compute dtype
        self.xw = x.to(_wide(x.device))
        if p.normalize:
            self.r, self.a = _row_scale(x, p.eps_norm)
            self.uw = self.xw * self.r[..., None]  # u rows, wide
            self.z = self.uw.to(x.dtype)  # u rows, compute dtype (the gradient's operand)
        else:
            self.q = (self.xw * self.xw).sum(-1)
            self.uw = self.xw
            self.z = x
        self.geo = self.uw.to(geo)
        # the gradient's products and accumulators: in the geometry dtype, so that where the cosines are
        # float64 the rounding of u_j to float32 (one ulp of |c u_j| against its tangential part
        # |c| sin(theta)) does not come back through the gradient
        self.zg = self.geo if geo != x.dtype else self.z


def _pair_block(gb: torch.Tensor, xi: _Rows, yj: _Rows, i0: int, i1: int, p: EnergyParams, tau: float, cs: float,
                grad: bool = True):
    """Energies ``e``, coefficients ``cj`` (of ``z_j``) and ``ci`` (of ``x_i``, un-normalized), and the mask
    of pairs that need the careful path, for rows ``[i0, i1)`` of ``xi`` against every row of ``yj``;
    ``gb`` holds the block's products (cosines, or raw dot products un-normalized). ``grad=False``: the
    energies and the mask alone (``c``, ``ci`` are None)."""
    dt = xi.x.dtype
    c = ci = None
    if p.normalize:
        om = 1 - gb.abs()
        care = om < tau
        gc, omc = gb.to(dt), om.to(dt)
        if grad:
            e, c = _phi_g(gc, omc, p)
            if p.half_space:
                e2, c2 = _phi_g(-gc, omc, p)
                e, c = e + e2, c - c2
            c = c * cs
        else:
            omc = omc.clamp_min(0)
            e = _phi_g_value(gc, omc, p)
            if p.half_space:
                e = e + _phi_g_value(-gc, omc, p)
    else:
        qi, qj = xi.q[:, i0:i1, None], yj.q[:, None, :]
        dot = gb.to(qi.dtype)
        d2 = qi + qj - 2 * dot
        care = ~(d2 >= tau * (qi + qj))
        d2h = qi + qj + 2 * dot if p.half_space else None
        if p.half_space:
            care = care | ~(d2h >= tau * (qi + qj))
        if grad:
            # the coefficients of x_j (c) and x_i (ci) in the accumulators' dtype: where those are wide, c x_j
            # and ci x_i of a close pair cancel there, and half-space's c = 2 (df2 - df), ci = 2 (df2 + df)
            # must not be rounded to float32 apart (an error of ~1 ulp of df |x| against the pair's
            # df |x_i - x_j|)
            cd = yj.zg.dtype
            e, df = _phi_d2(d2.to(dt), p)
            df = df.to(cd)
            c, ci = -2 * cs * df, 2 * cs * df
            if p.half_space:
                e2, df2 = _phi_d2(d2h.to(dt), p)
                df2 = df2.to(cd)
                e, c, ci = e + e2, c + 2 * cs * df2, ci + 2 * cs * df2
        else:
            e = p.phi(d2.to(dt).clamp_min(0))
            if p.half_space:
                e = e + p.phi(d2h.to(dt).clamp_min(0))
    care = care | ~torch.isfinite(e)
    return e, c, ci, (care | ~torch.isfinite(c)) if grad else care


def _phi_g_value(g: torch.Tensor, om: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """``phi(g)`` of :func:`_phi_g` without its derivative (``om >= 0``)."""
    if p.spec.angle:
        return p.phi(_theta(g.clamp(-1, 1), om) * _INV_PI + p.eps_ang)
    return p.phi(torch.where(g >= 0, 2 * om, 2 - 2 * g))


def _split(r: torch.Tensor):
    """``r = t 2^e`` exactly (``t`` in [1/2, 1)): ``(t, 2^e)``, as ``split_r`` in csrc/hsu_pair.h."""
    t, e = torch.frexp(r)
    return t, torch.ldexp(torch.ones_like(r), e)


def _delta(xi: _Rows, yj: _Rows, b, i, j, sign) -> torch.Tensor:
    """``sign u_j - u_i = t_i (v_j - v_i) + v_j (t_j - t_i)`` of the pairs ``(b, i, j)`` with ``v = w 2^e``,
    ``r = t 2^e`` (exact), in the wide dtype: the rows' difference is formed first (exact for float32 rows,
    and for float64 rows within a factor 2 of each other), so a pair keeps its distance to ~1 ulp of itself
    rather than of |u|, and rows that are power-of-two multiples of each other get exactly 0."""
    ti, si = _split(xi.r[b, i])
    tj, sj = _split(yj.r[b, j])
    vi, vj = xi.xw[b, i] * si[:, None], sign[:, None] * yj.xw[b, j] * sj[:, None]
    return ti[:, None] * (vj - vi) + vj * (tj - ti)[:, None]


def _careful_geometry(xi: _Rows, yj: _Rows, b, i, j):
    """The flagged pairs' geometry from coordinates (normalized rows): ``sign(g)``, ``delta = sign u_j - u_i``,
    ``om = 1 - |g|`` from it (``(a_i + a_j + |delta|^2) / 2``) and ``g = sign (1 - om)``."""
    ui, uj = xi.uw[b, i], yj.uw[b, j]
    sign = torch.where((ui * uj).sum(-1) >= 0, 1.0, -1.0).to(ui.dtype)
    delta = _delta(xi, yj, b, i, j, sign)
    om = 0.5 * (xi.a[b, i] + yj.a[b, j] + (delta * delta).sum(-1))
    return sign, delta, om, sign * (1 - om)


def _careful(xi: _Rows, yj: _Rows, b, i, j, p: EnergyParams, cs: float):
    """The flagged pairs ``(b, i, j)`` in float64 from coordinates: their energies, the vector each adds to
    its row's accumulator, and (normalized) the radial term it adds to ``rad`` (docs/spec.md §6 with
    ``c u_j = c sign(g) (u_i + delta)``, ``delta = sign(g) u_j - u_i``; the radial part's projection is
    ``c sign a_i u_i``). ``c`` is carried as ``c q`` and applied as ``c q (delta / q)``, ``c q (a_i / q)``
    (see ``_phi_g_q``)."""
    ui, uj = xi.uw[b, i], yj.uw[b, j]
    if p.normalize:
        sign, delta, om, g = _careful_geometry(xi, yj, b, i, j)
        e, cq = _phi_g_q(g, om, p)
        if p.half_space:
            e2, cq2 = _phi_g_q(-g, om, p)
            e, cq = e + e2, cq - cq2
        ks, q = cq * cs * sign, _careful_q(om)
        return e, ks[:, None] * (delta / q[:, None]), ks * (xi.a[b, i] / q)
    diff, summ = ui - uj, ui + uj
    e, df = _phi_d2((diff * diff).sum(-1), p)
    vec = (2 * cs * df)[:, None] * diff
    if p.half_space:
        e2, df2 = _phi_d2((summ * summ).sum(-1), p)
        e, vec = e + e2, vec + (2 * cs * df2)[:, None] * summ
    return e, vec, None


def _dense_dist(xi: _Rows, yj: _Rows, i0: int, i1: int):
    """``|v_i - v_j|^2`` and ``|v_i + v_j|^2`` of every pair of a block (``v``: u rows normalized, x rows
    not), from differences (cdist without a product), in the wide dtype."""
    vi, vj = xi.uw[:, i0:i1], yj.uw
    dm = torch.cdist(vi, vj, compute_mode="donot_use_mm_for_euclid_dist")
    dp = torch.cdist(vi, -vj, compute_mode="donot_use_mm_for_euclid_dist")
    return dm * dm, dp * dp


def _dense_norm_geom(xi: _Rows, yj: _Rows, i0: int, i1: int):
    """Every pair of a block on the careful path's formulas (normalized): ``(sign(g), 1 - |g|, g)``."""
    dm, dp = _dense_dist(xi, yj, i0, i1)
    sign = torch.where(dm <= dp, 1.0, -1.0).to(dm.dtype)
    om = 0.5 * (xi.a[:, i0:i1, None] + yj.a[:, None, :] + torch.minimum(dm, dp))
    return sign, om, sign * (1 - om)


def _careful_dense(xi: _Rows, yj: _Rows, i0: int, i1: int, care, p: EnergyParams, cs: float):
    """The careful path for every pair of a block at once, masked by ``care``: what ``_careful`` gives the
    flagged pairs, summed per row, without data-dependent shapes (under torch.compile). The vectors come
    from products, ``sum_j k_ij (u_j - sign u_i)``, so they carry ~1 ulp of ``|u|`` rather than of the
    pair's difference; the distances come from differences."""
    ui = xi.uw[:, i0:i1]
    if p.normalize:
        sign, om, g = _dense_norm_geom(xi, yj, i0, i1)
        e, cq = _phi_g_q(g, om, p)
        if p.half_space:
            e2, cq2 = _phi_g_q(-g, om, p)
            e, cq = e + e2, cq - cq2
        kc = torch.where(care, cq * cs / _careful_q(om), 0.0)  # c: the coefficient of u_j
        ks = (kc * sign).sum(-1)
        return torch.where(care, e, 0.0).sum(-1), torch.bmm(kc, yj.uw) - ks[..., None] * ui, ks * xi.a[:, i0:i1]
    dm, dp = _dense_dist(xi, yj, i0, i1)
    e, df = _phi_d2(dm, p)
    k1, k2 = 2 * cs * df, torch.zeros_like(df)
    if p.half_space:
        e2, df2 = _phi_d2(dp, p)
        e, k2 = e + e2, 2 * cs * df2
    k1, k2 = torch.where(care, k1, 0.0), torch.where(care, k2, 0.0)
    vec = (k1 + k2).sum(-1, keepdim=True) * ui + torch.bmm(k2 - k1, yj.uw)
    return torch.where(care, e, 0.0).sum(-1), vec, None


def _log_block(gb, xi: _Rows, yj: _Rows, i0: int, i1: int, p: EnergyParams, tau: float):
    """Gaussian log terms ``-t d2`` (``x2``: the pairs with ``-y_j``, half-space) of a block, in the wide
    dtype, and the mask of pairs recomputed from coordinates."""
    wide = xi.xw.dtype
    if p.normalize:
        om = 1 - gb.abs()
        care = om < tau
        gw, omw = gb.to(wide), om.to(wide)
        d2 = torch.where(gw >= 0, 2 * omw, 2 - 2 * gw)
        d2h = torch.where(gw < 0, 2 * omw, 2 + 2 * gw)
    else:
        qi, qj = xi.q[:, i0:i1, None], yj.q[:, None, :]
        dot = gb.to(wide)
        d2, d2h = qi + qj - 2 * dot, qi + qj + 2 * dot
        care = ~(d2 >= tau * (qi + qj))
        if p.half_space:
            care = care | ~(d2h >= tau * (qi + qj))
    return -p.t * d2, -p.t * d2h, care


def _careful_logs(xi: _Rows, yj: _Rows, b, i, j, p: EnergyParams):
    """Log terms of flagged pairs from coordinates, and the vectors whose multiples are their gradients:
    ``(x1, x2, v1, v2, rad1, rad2)`` with ``d x1/d(row i) ~ v1 + rad1 u_i`` (see ``_careful``)."""
    ui, uj = xi.uw[b, i], yj.uw[b, j]
    if p.normalize:
        sign, delta, om, g = _careful_geometry(xi, yj, b, i, j)
        d2 = torch.where(g >= 0, 2 * om, 2 - 2 * g)
        d2h = torch.where(g < 0, 2 * om, 2 + 2 * g)
        # d x1/dg = 2t, d x2/dg = -2t; dg/du_i = u_j = sign (u_i + delta)
        return -p.t * d2, -p.t * d2h, delta * sign[:, None], sign
    diff, summ = ui - uj, ui + uj
    return -p.t * (diff * diff).sum(-1), -p.t * (summ * summ).sum(-1), diff, summ


def row_pass(xi: _Rows, yj: _Rows, p: EnergyParams, self_mode: bool, block: int, cs: float, tau: float,
             row_ids=None, grad: bool = True):
    """Per-row sums for the rows of ``xi`` against every row of ``yj`` (``j != i`` when ``self_mode``; the
    rows of ``xi`` are rows ``row_ids`` of ``yj``, default ``0, 1, ...``: the Triton backend's fix-up of
    some rows):
    ``e_i = sum_j psi_ij`` (wide), ``a_i = sum_j c_ij z_j`` (compute dtype, plus the careful pairs' vectors),
    ``b_i`` (wide: ``sum_j ci_ij`` un-normalized, the careful pairs' radial coefficients normalized).
    For the Gaussian kind ``e_i`` is the row's log-sum and ``a_i``, ``b_i`` are relative to its maximum.
    ``grad=False``: the energies alone (``a``, ``b`` are None): no product with the coefficients, no
    accumulation of the careful pairs' vectors."""
    if p.spec.logsum:
        return _row_pass_lse(xi, yj, p, self_mode, block, tau, row_ids, grad)
    x, wide = xi.x, xi.xw.dtype
    bsz, n1, d = x.shape
    n2 = yj.x.shape[1]
    e = torch.zeros(bsz, n1, dtype=wide, device=x.device)
    a = torch.zeros(bsz, n1, d, dtype=yj.zg.dtype, device=x.device)
    b = torch.zeros(bsz, n1, dtype=wide, device=x.device)
    ygt = yj.geo.transpose(1, 2)
    cols = torch.arange(n2, device=x.device)
    for i0 in range(0, n1, block):
        i1 = min(i0 + block, n1)
        gb = torch.bmm(xi.geo[:, i0:i1], ygt)
        et, c, ci, care = _pair_block(gb, xi, yj, i0, i1, p, tau, cs, grad)
        if self_mode:
            diag = (_ids(row_ids, i0, i1, x.device)[:, None] == cols[None, :])[None]
            care = care & ~diag
            skip = care | diag
        else:
            skip = care
        et = torch.where(skip, 0.0, et)
        e[:, i0:i1] = et.sum(-1, dtype=wide)
        if grad:
            c = torch.where(skip, 0.0, c)
            a[:, i0:i1] = torch.bmm(c.to(a.dtype), yj.zg)
            if ci is not None:
                b[:, i0:i1] = torch.where(skip, 0.0, ci).sum(-1, dtype=wide)
        if torch.compiler.is_compiling():  # no data-dependent shapes in a graph: every pair, masked
            ec, vec, rad = _careful_dense(xi, yj, i0, i1, care, p, cs)
            e[:, i0:i1] += ec
            if grad:
                a[:, i0:i1] += vec.to(a.dtype)
                if rad is not None:
                    b[:, i0:i1] += rad
        elif bool(care.any()):
            bb, ii, jj = care.nonzero(as_tuple=True)
            ii = ii + i0
            ec, vec, rad = _careful(xi, yj, bb, ii, jj, p, cs)
            e.index_put_((bb, ii), ec, accumulate=True)
            if grad:
                flat = a.view(-1, d)
                flat.index_add_(0, bb * n1 + ii, vec.to(a.dtype))
                if rad is not None:
                    b.index_put_((bb, ii), rad, accumulate=True)
    return (e, a, b, None) if grad else (e, None, None, None)


def _ids(row_ids, i0: int, i1: int, device) -> torch.Tensor:
    """The indices in ``yj`` of rows ``[i0, i1)`` of ``xi`` (see :func:`row_pass`)."""
    return torch.arange(i0, i1, device=device) if row_ids is None else row_ids[i0:i1]


def _row_pass_lse(xi: _Rows, yj: _Rows, p: EnergyParams, self_mode: bool, block: int, tau: float,
                  row_ids=None, grad: bool = True):
    """The Gaussian kind's pass: per row ``m_i = max_j (-t d2_ij)``, ``s_i = sum_j exp(-t d2_ij - m_i)`` and
    the gradient sums with the same weights (the whole row is one block, so ``m_i`` is its exact maximum)."""
    x, wide = xi.x, xi.xw.dtype
    bsz, n1, d = x.shape
    n2 = yj.x.shape[1]
    s = torch.zeros(bsz, n1, dtype=wide, device=x.device)
    m = torch.full((bsz, n1), -math.inf, dtype=wide, device=x.device)
    a = torch.zeros(bsz, n1, d, dtype=yj.zg.dtype, device=x.device)
    b = torch.zeros(bsz, n1, dtype=wide, device=x.device)
    ygt = yj.geo.transpose(1, 2)
    cols = torch.arange(n2, device=x.device)
    tt = p.t
    for i0 in range(0, n1, block):
        i1 = min(i0 + block, n1)
        gb = torch.bmm(xi.geo[:, i0:i1], ygt)
        x1, x2, care = _log_block(gb, xi, yj, i0, i1, p, tau)
        dead = torch.zeros_like(care)
        if self_mode:
            dead = (_ids(row_ids, i0, i1, x.device)[:, None] == cols[None, :])[None].expand_as(care)
            care = care & ~dead
        dense = torch.compiler.is_compiling()  # no data-dependent shapes in a graph: every pair, masked
        fix = None if dense or not bool(care.any()) else care.nonzero(as_tuple=True)
        if dense:
            if p.normalize:
                sign, om, g = _dense_norm_geom(xi, yj, i0, i1)
                cx1 = -tt * torch.where(g >= 0, 2 * om, 2 - 2 * g)
                cx2 = -tt * torch.where(g < 0, 2 * om, 2 + 2 * g)
            else:
                dm, dp = _dense_dist(xi, yj, i0, i1)
                cx1, cx2 = -tt * dm, -tt * dp
            x1, x2 = torch.where(care, cx1, x1), torch.where(care, cx2, x2)
        elif fix is not None:
            bb, ii, jj = fix
            cx1, cx2, v1, v2 = _careful_logs(xi, yj, bb, ii + i0, jj, p)
            x1 = x1.index_put(fix, cx1)
            x2 = x2.index_put(fix, cx2)
        x1 = torch.where(dead, -math.inf, x1)
        x2 = torch.where(dead, -math.inf, x2) if p.half_space else None
        mt = x1.amax(-1) if x2 is None else torch.maximum(x1.amax(-1), x2.amax(-1))
        m[:, i0:i1] = mt
        w1 = torch.exp(x1 - mt[..., None])
        w2 = torch.exp(x2 - mt[..., None]) if x2 is not None else torch.zeros_like(w1)
        s[:, i0:i1] = (w1 + w2).sum(-1)
        if not grad:
            continue
        if p.normalize:
            c = 2 * tt * (w1 - w2)  # d/dg of exp(x1) + exp(x2), per unit weight
            ci = None
        else:
            c, ci = 2 * tt * (w1 - w2), -2 * tt * (w1 + w2)
        cm = torch.where(care, 0.0, c).to(a.dtype)
        a[:, i0:i1] = torch.bmm(cm, yj.zg)
        if ci is not None:
            b[:, i0:i1] = torch.where(care, 0.0, ci).sum(-1)
        if dense:
            ui = xi.uw[:, i0:i1]
            if p.normalize:
                cf = torch.where(care, c, 0.0)
                ks = (cf * sign).sum(-1)
                a[:, i0:i1] += (torch.bmm(cf, yj.uw) - ks[..., None] * ui).to(a.dtype)
                b[:, i0:i1] += ks * xi.a[:, i0:i1]
            else:
                k1, k2 = torch.where(care, -2 * tt * w1, 0.0), torch.where(care, -2 * tt * w2, 0.0)
                a[:, i0:i1] += ((k1 + k2).sum(-1, keepdim=True) * ui + torch.bmm(k2 - k1, yj.uw)).to(a.dtype)
        elif fix is not None:
            bb, ii, jj = fix
            fw1, fw2 = w1[fix], w2[fix]
            if p.normalize:
                cf = 2 * tt * (fw1 - fw2)
                vec = cf[:, None] * v1
                b.index_put_((bb, ii + i0), cf * v2 * xi.a[bb, ii + i0], accumulate=True)
            else:
                vec = (-2 * tt * fw1)[:, None] * v1 - (2 * tt * fw2)[:, None] * v2
            a.view(-1, d).index_add_(0, bb * n1 + ii + i0, vec.to(a.dtype))
    return (s, a, b, m) if grad else (s, None, None, m)


def row_grad(xi: _Rows, a, b, scale, p: EnergyParams) -> torch.Tensor:
    """``dE/dw_i`` from the accumulators, in the wide dtype (docs/spec.md §6): with ``G = scale a`` and
    ``rad = scale b``, ``r (G - (G.u) u + rad u)`` normalized (``b``: the careful pairs' radial terms, already
    times ``a_i``, since ``(I - u u^T) u = a u``), ``G + rad w`` un-normalized. ``scale`` is a number or a
    per-row ``Tensor[B, N]``."""
    wide = xi.xw.dtype
    sc = torch.as_tensor(scale, dtype=wide, device=a.device)
    sc = sc[..., None] if sc.dim() == 2 else sc.reshape(1, 1, 1)
    g, rad = sc * a.to(wide), sc[..., 0] * b
    if p.normalize:
        u = xi.uw
        return xi.r[..., None] * (g - (g * u).sum(-1, keepdim=True) * u + rad[..., None] * u)
    return g + rad[..., None] * xi.xw


def diag_terms(xi: _Rows, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """The half-space self pair ``(w_i, -w_i)``: its energy (log term for the Gaussian kind) and the vector
    ``v`` with ``d(term)/dw_i = v`` (for the Gaussian kind: the gradient of the log term)."""
    if p.normalize:
        a = xi.a
        g = -(1 - a)  # -|u_i|^2, with 1 - |g| = a exactly
        coef = -2 * a * xi.r  # d g_ii / dw_i = 2 a r u_i, and the pair's cosine is -g_ii
        if p.spec.logsum:
            return -p.t * (2 - 2 * g), (2 * p.t * coef)[..., None] * xi.uw
        f, df = _phi_g(g, a, p)
        df = torch.where(a == 0, 0.0, df)  # eps_norm = 0: g_ii = -1 exactly and its derivative is 0
        return f, (df * coef)[..., None] * xi.uw
    q = xi.q
    if p.spec.logsum:
        return -p.t * 4 * q, (-8 * p.t) * xi.xw
    f, df = _phi_d2(4 * q, p)
    return f, (8 * df)[..., None] * xi.xw


def log_mean(m: torch.Tensor, s: torch.Tensor, scale: float):
    """The Gaussian kind's log-mean ``L = log(scale * S)``, ``S = sum_k s_k exp(m_k)`` over the last dimension,
    from the rows' maxima ``m_k`` (largest log term ``-t d2``, <= 0) and their sums ``s_k`` relative to them.
    The shift ``top`` is the largest ``m_k``, not the largest row log-sum ``m_k + log s_k`` (near ``log N``),
    so the mean's ``scale = 1/pairs`` enters before the log and a log-mean near 0 (clustered features) is never
    the difference of two numbers near ``log(pairs)`` (docs/precision.md).

    Returns ``(L, share)``: ``share(mk)`` is ``exp(mk) / S`` for row maxima ``mk`` of the same pairs (a row's
    gradient weight), a ratio of shifted terms: exact also where ``m`` is so large (features of norm 1e20)
    that ``L - log(scale)`` would have lost the sum."""
    top = m.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no pairs at all: log 0 = -inf below
    tot = (s * torch.exp(m - top)).sum(-1, keepdim=True)
    return top[..., 0] + torch.log(scale * tot[..., 0]), lambda mk: torch.exp(mk - top) / tot


def _coef_scale(scale: float) -> float:
    """The part of ``scale`` applied to every pair coefficient before accumulation (so that a mean whose
    sum would overflow still fits); the rest is applied in the epilogue."""
    return min(1.0, max(scale, 2.0**-40))


def _tau(geo: torch.dtype, dtype: torch.dtype) -> float:
    if geo != torch.float64:
        return CLOSE_F32
    return CLOSE_F64 if dtype == torch.float64 else CLOSE_F64_OF_F32


def _geo(x: torch.Tensor) -> torch.dtype:
    return _wide(x.device) if x.shape[-1] <= PRECISE_MAX_D or x.dtype == torch.float64 else x.dtype


def raw_rows_need_wide(w: torch.Tensor, p: EnergyParams) -> bool:
    """Whether un-normalized float rows ``w`` have squared norms or distances beyond float32 (see
    ``RAW_WIDE_BOUND``) and the call is computed in float64 (where the device has it). One reduction over
    ``w`` (a host sync on a GPU, for un-normalized rows only); NaN/Inf rows are left to the input checks."""
    if p.normalize or w.dtype == torch.float64 or w.numel() == 0 or _wide(w.device) != torch.float64:
        return False
    top = float(w.detach().abs().amax())
    q = top * top * w.shape[-1]
    # the Gaussian kind also where its log terms -t d2 can pass 2^13: from float32 products (and in the
    # Triton and C++ kernels, held in float32) they are off by ~1e-3 and more, which moves the weights of
    # nearly tied pairs (csrc/hsu_checks.h)
    return math.isfinite(top) and (q > RAW_WIDE_BOUND or (p.spec.logsum and 4 * p.t * q > RAW_GAUSS_BOUND))


def energy_grad(w: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK, scale: float = 1.0):
    """``E = scale * sum_{i<j} psi(w_i, w_j)`` per batch entry and its gradient, in one pass over row
    blocks (Gaussian kind: ``E = log(scale * sum exp(-t d2))``)."""
    if raw_rows_need_wide(w, p):
        e, g = energy_grad(w.to(torch.float64), p, block, scale)
        return e.to(compute_dtype(w.dtype)), g.to(w.dtype)
    x = w.to(compute_dtype(w.dtype))
    geo = _geo(x)
    rows = _Rows(x, p, geo)
    pair_scale = 1.0 if p.half_space else 0.5
    gscale = 2 * pair_scale
    if p.spec.logsum:
        s, a, b, m = row_pass(rows, rows, p, True, block, 1.0, _tau(geo, x.dtype))
        ms, ss = [m], [pair_scale * s]
        if p.half_space:
            xd, vd = diag_terms(rows, p)
            ms.append(xd)
            ss.append(torch.ones_like(xd))
        big_l, share = log_mean(torch.cat(ms, -1), torch.cat(ss, -1), scale)  # log(scale * S)
        grad = row_grad(rows, a, b, gscale * share(m), p)
        if p.half_space:
            grad = grad + share(xd)[..., None] * vd
        return big_l.to(x.dtype), grad.to(w.dtype)
    cs = _coef_scale(scale)
    e, a, b, _ = row_pass(rows, rows, p, True, block, cs, _tau(geo, x.dtype))
    if _acc_overflowed(a, w, geo):
        e, g = energy_grad(w.to(torch.float64), p, block, scale)
        return e.to(x.dtype), g.to(w.dtype)
    energy = pair_scale * e.sum(-1)
    grad = row_grad(rows, a, b, gscale * scale / cs, p)
    if p.half_space:
        ed, vd = diag_terms(rows, p)
        energy = energy + ed.sum(-1)
        grad = grad + scale * vd
    return (scale * energy).to(x.dtype), grad.to(w.dtype)


def energy_value(w: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK, scale: float = 1.0) -> torch.Tensor:
    """The ``E`` of :func:`energy_grad` alone (no gradient products): the pass when no gradient is wanted."""
    if raw_rows_need_wide(w, p):
        return energy_value(w.to(torch.float64), p, block, scale).to(compute_dtype(w.dtype))
    x = w.to(compute_dtype(w.dtype))
    geo = _geo(x)
    rows = _Rows(x, p, geo)
    pair_scale = 1.0 if p.half_space else 0.5
    if p.spec.logsum:
        s, _, _, m = row_pass(rows, rows, p, True, block, 1.0, _tau(geo, x.dtype), grad=False)
        ms, ss = [m], [pair_scale * s]
        if p.half_space:
            ms.append(diag_terms(rows, p)[0])
            ss.append(torch.ones_like(ms[-1]))
        return log_mean(torch.cat(ms, -1), torch.cat(ss, -1), scale)[0].to(x.dtype)
    e = row_pass(rows, rows, p, True, block, _coef_scale(scale), _tau(geo, x.dtype), grad=False)[0]
    energy = pair_scale * e.sum(-1)
    if p.half_space:
        energy = energy + diag_terms(rows, p)[0].sum(-1)
    return (scale * energy).to(x.dtype)


def _acc_overflowed(a: torch.Tensor, w: torch.Tensor, geo: torch.dtype) -> bool:
    """Whether float32 accumulators ``a`` (float32 cosines: D above ``PRECISE_MAX_D``) have a non-finite
    entry: a row's ``sum_j c_ij u_j`` can leave float32 while the gradient, ``r_i`` times it, fits (rows of
    norm ~600 with a near duplicate, angular s = 9.5). The call is then computed in float64 (where the device
    has it); a truly non-finite gradient comes out the same. A host sync, on float32 cosines only."""
    if geo != torch.float32 or a.dtype != torch.float32 or _wide(w.device) != torch.float64:
        return False
    return not bool(torch.isfinite(a).all())


def cross_energy_grad(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK,
                      scale: float = 1.0):
    """``E = scale * sum_i sum_j psi(x_i, y_j)`` and its gradients with respect to ``x`` and ``y``
    (Gaussian kind: ``E = log(scale * sum exp(-t d2))``).

    Two passes (rows of x against y, then rows of y against x), so each gradient is a plain per-row
    accumulation; the second pass repeats the transcendentals, which keeps both deterministic.
    """
    if raw_rows_need_wide(x, p) or raw_rows_need_wide(y, p):
        e, gx, gy = cross_energy_grad(x.to(torch.float64), y.to(torch.float64), p, block, scale)
        out = compute_dtype(x.dtype, y.dtype)
        return e.to(out), gx.to(x.dtype), gy.to(y.dtype)
    xa, ya = x.to(compute_dtype(x.dtype)), y.to(compute_dtype(y.dtype))
    geo = _geo(xa)
    rx, ry = _Rows(xa, p, geo), _Rows(ya, p, geo)
    tau = _tau(geo, xa.dtype)
    if p.spec.logsum:
        sx, ax, bx, mx = row_pass(rx, ry, p, False, block, 1.0, tau)
        _, ay, by, my = row_pass(ry, rx, p, False, block, 1.0, tau)
        big_l, share = log_mean(mx, sx, scale)  # log(scale * S), as in energy_grad
        gx = row_grad(rx, ax, bx, share(mx), p)
        gy = row_grad(ry, ay, by, share(my), p)  # the rows of y split the same S
        return big_l.to(xa.dtype), gx.to(x.dtype), gy.to(y.dtype)
    cs = _coef_scale(scale)
    ex, ax, bx, _ = row_pass(rx, ry, p, False, block, cs, tau)
    _, ay, by, _ = row_pass(ry, rx, p, False, block, cs, tau)
    if _acc_overflowed(ax, x, geo) or _acc_overflowed(ay, y, geo):  # as in energy_grad
        e, gx, gy = cross_energy_grad(x.to(torch.float64), y.to(torch.float64), p, block, scale)
        return e.to(xa.dtype), gx.to(x.dtype), gy.to(y.dtype)
    energy = scale * ex.sum(-1)
    gx = row_grad(rx, ax, bx, scale / cs, p)
    gy = row_grad(ry, ay, by, scale / cs, p)
    return energy.to(xa.dtype), gx.to(x.dtype), gy.to(y.dtype)


def cross_energy_value(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK,
                       scale: float = 1.0) -> torch.Tensor:
    """The ``E`` of :func:`cross_energy_grad` alone: one pass (rows of x against y), no gradient products."""
    if raw_rows_need_wide(x, p) or raw_rows_need_wide(y, p):
        e = cross_energy_value(x.to(torch.float64), y.to(torch.float64), p, block, scale)
        return e.to(compute_dtype(x.dtype, y.dtype))
    xa, ya = x.to(compute_dtype(x.dtype)), y.to(compute_dtype(y.dtype))
    geo = _geo(xa)
    rx, ry = _Rows(xa, p, geo), _Rows(ya, p, geo)
    tau = _tau(geo, xa.dtype)
    if p.spec.logsum:
        sx, _, _, mx = row_pass(rx, ry, p, False, block, 1.0, tau, grad=False)
        return log_mean(mx, sx, scale)[0].to(xa.dtype)
    ex = row_pass(rx, ry, p, False, block, _coef_scale(scale), tau, grad=False)[0]
    return (scale * ex.sum(-1)).to(xa.dtype)
