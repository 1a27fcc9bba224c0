"""The tiled PyTorch path (``backend="torch"``): any device, O(N * block) memory.

The same algorithm as the compiled kernels (docs/spec.md §6), written with PyTorch ops over blocks of rows:
for a block ``I`` of rows, ``S = W_I W^T`` gives the raw dot products with every row, the per-pair terms are
evaluated elementwise (``csrc/hsu_pair.h`` in tensor form), and ``C @ W`` accumulates the gradient. The
energy and the gradient come out of one pass; ``backward`` only scales the saved gradient.

Every backend's pass is described by one contract, used by ``ops.py``:

    energy_grad(w, p) -> (E, G)         w: Tensor[B, N, D]; E: Tensor[B] = sum_{i<j} psi; G = dE/dw
    cross_energy_grad(x, y, p) -> (E, Gx, Gy)

``E`` is in the accumulation dtype (float32 for half inputs), ``G`` in the input dtype.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from ._params import EnergyParams

_INV_PI = 1.0 / math.pi

#: Rows per block. The working set is about ``4 * block * N`` elements (dot products, energies and two
#: coefficient matrices): 256 rows of N = 100,000 in float32 is about 400 MB.
DEFAULT_BLOCK = 256


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float32 for half inputs, else the input's own."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _phi_d2(d2: torch.Tensor, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """``f(d2)`` and ``df/dd2`` for the distance-based kinds (clamped at d2 = 0)."""
    d2 = d2.clamp_min(0)
    if p.kind == "riesz":
        f = d2.pow(-p.s / 2)
        return f, (-p.s / 2) * f / d2
    if p.kind == "log":
        return -torch.log(d2), -1 / d2
    f = torch.exp(-p.t * d2)
    return f, -p.t * f


def _phi_g(g: torch.Tensor, p: EnergyParams, dtype: torch.dtype, om=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``phi(g)`` and ``dphi/dg`` for normalized rows (docs/spec.md §3), computed in ``dtype``. ``g`` may come
    in a wider dtype: ``2 - 2g`` is then formed before rounding (it cancels for nearly parallel rows).
    ``om`` is ``1 - |g|`` when the caller has it in closed form (the half-space self pair)."""
    if p.kind in ("angular", "angular_log"):
        g = g.clamp(-1, 1)
        # 1 - |g| formed before rounding; acos(|g|) = 2 asin(sqrt(om / 2))
        om = (1 - g.abs() if om is None else om).clamp_min(0).to(dtype)
        gc = g.to(dtype)
        far = 2 * torch.asin(torch.sqrt(0.5 * om))
        theta = torch.where(gc.abs() <= 0.5, torch.acos(gc), torch.where(gc < 0, math.pi - far, far))
        a = theta * _INV_PI + p.eps_ang
        dtheta = -_INV_PI / torch.sqrt((om * (2 - om)).clamp_min(0))
        if p.kind == "angular":
            f = a.pow(-p.s)
            return f, -p.s * f / a * dtheta
        return -torch.log(a), -dtheta / a
    f, df = _phi_d2((2 - 2 * g).to(dtype), p)
    return f, -2 * df


def row_stats(x: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """``r = 1/sqrt(|w|^2 + eps_norm)`` when normalizing, else ``q = |w|^2``: ``Tensor[B, N]``."""
    sq = (x * x).sum(-1)
    return torch.rsqrt(sq + p.eps_norm) if p.normalize else sq


def pair_terms(dot: torch.Tensor, si: torch.Tensor, sj: torch.Tensor, p: EnergyParams, dtype: torch.dtype):
    """Energy ``e``, coefficient ``cj`` of ``w_j`` and (un-normalized) coefficient ``ci`` of ``w_i`` of
    every pair in a tile, in ``dtype``; ``si``/``sj`` are the row statistics broadcast along rows and
    columns, and ``dot``/``si``/``sj`` may be in a wider dtype (see ``_phi_g``)."""
    if p.normalize:
        g = dot * si * sj
        e, c = _phi_g(g, p, dtype)
        if p.half_space:
            e2, c2 = _phi_g(-g, p, dtype)
            e, c = e + e2, c - c2
        return e, c * sj.to(dtype), None
    e, df = _phi_d2((si + sj - 2 * dot).to(dtype), p)
    cj, ci = -2 * df, 2 * df
    if p.half_space:
        e2, df2 = _phi_d2((si + sj + 2 * dot).to(dtype), p)
        e, cj, ci = e + e2, cj + 2 * df2, ci + 2 * df2
    return e, cj, ci


def diag_terms(sq: torch.Tensor, p: EnergyParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """The half-space self pair ``(w_i, -w_i)``: its energy and ``k`` with ``dE/dw_i += k w_i``."""
    if p.normalize:
        n2 = sq + p.eps_norm
        # 1 - g_ii = eps_norm / n2 exactly; g_ii itself rounds to 1 when |w|^2 >> eps_norm
        f, df = _phi_g(-(sq / n2), p, sq.dtype, om=p.eps_norm / n2)
        k = torch.zeros_like(sq) if p.eps_norm == 0 else -df * 2 * p.eps_norm / (n2 * n2)
        return f, k
    f, df = _phi_d2(4 * sq, p)
    return f, 8 * df


#: Up to this D, float32 tiles get their dot products and row statistics in float64 (cheap there, and
#: nearly parallel rows, common among points on a low-dimensional sphere, keep their digits).
PRECISE_MAX_D = 32


def row_pass(x, y, p: EnergyParams, self_mode: bool, block: int = DEFAULT_BLOCK):
    """Per-row sums for the rows of ``x`` against every row of ``y``:
    ``e_i = sum_j psi_ij``, ``a_i = sum_j cj_ij y_j``, ``b_i = sum_j ci_ij`` (``j != i`` when ``self_mode``)."""
    bsz, n1, d = x.shape
    n2 = y.shape[1]
    e = x.new_zeros(bsz, n1)
    a = torch.zeros_like(x)
    b = x.new_zeros(bsz, n1) if not p.normalize else None
    geo = torch.float64 if d <= PRECISE_MAX_D and x.device.type != "mps" else x.dtype  # mps has no float64
    xg, yg = x.to(geo), y.to(geo)
    sxg, syg = row_stats(xg, p), row_stats(yg, p)
    ygt = yg.transpose(1, 2)
    cols = torch.arange(n2, device=x.device)
    for i0 in range(0, n1, block):
        i1 = min(i0 + block, n1)
        dot = torch.bmm(xg[:, i0:i1], ygt)
        et, cj, ci = pair_terms(dot, sxg[:, i0:i1, None], syg[:, None, :], p, x.dtype)
        if self_mode:
            diag = (torch.arange(i0, i1, device=x.device)[:, None] == cols[None, :])[None]
            et = torch.where(diag, 0.0, et)
            cj = torch.where(diag, 0.0, cj)
            ci = torch.where(diag, 0.0, ci) if ci is not None else None
        e[:, i0:i1] = et.sum(-1)
        a[:, i0:i1] = torch.bmm(cj, y)
        if b is not None:
            b[:, i0:i1] = ci.sum(-1)
    return e, a, b


def row_grad(x, a, b, scale: float, p: EnergyParams) -> torch.Tensor:
    """``dE/dw_i`` from the accumulators (the chain rule of docs/spec.md §6, or ``a + b w`` un-normalized).

    Runs in float64 where the device has it: the two normalized terms cancel when a row's gradient is
    nearly radial, and this is O(N D) work."""
    if x.device.type != "mps":
        x, a = x.double(), a.double()
        b = b.double() if b is not None else None
    sx = row_stats(x, p)
    if p.normalize:
        gu = scale * a
        r = sx[..., None]
        return r * gu - r * r * r * (gu * x).sum(-1, keepdim=True) * x
    return scale * (a + b[..., None] * x)


def energy_grad(w: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK):
    """``E = sum_{i<j} psi(w_i, w_j)`` per batch entry and its gradient, in one pass over row blocks."""
    x = w.to(acc_dtype(w.dtype))
    e, a, b = row_pass(x, x, p, True, block)
    pair_scale = 1.0 if p.half_space else 0.5
    energy = pair_scale * e.sum(-1, dtype=torch.float64)
    grad = row_grad(x, a, b, 2 * pair_scale, p)
    if p.half_space:
        xd = x.double() if x.device.type != "mps" else x
        ed, k = diag_terms((xd * xd).sum(-1), p)
        energy = energy + ed.sum(-1, dtype=torch.float64)
        grad = grad + k[..., None] * xd
    return energy.to(x.dtype), grad.to(w.dtype)


def cross_energy_grad(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, block: int = DEFAULT_BLOCK):
    """``E = sum_i sum_j psi(x_i, y_j)`` and its gradients with respect to ``x`` and ``y``.

    Two passes (rows of x against y, then rows of y against x), so each gradient is a plain per-row
    accumulation; the second pass repeats the transcendentals, which keeps both deterministic.
    """
    xa, ya = x.to(acc_dtype(x.dtype)), y.to(acc_dtype(y.dtype))
    ex, ax, bx = row_pass(xa, ya, p, False, block)
    _, ay, by = row_pass(ya, xa, p, False, block)
    energy = ex.sum(-1, dtype=torch.float64).to(xa.dtype)
    gx = row_grad(xa, ax, bx, 1.0, p)
    gy = row_grad(ya, ay, by, 1.0, p)
    return energy, gx.to(x.dtype), gy.to(y.dtype)
