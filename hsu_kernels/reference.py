"""The oracle: docs/spec.md written as plainly as possible in PyTorch.

Every function here materializes the full ``N x N`` matrix and lets autograd differentiate it. That is
O(N^2) memory and slow, and it is the point: nothing in this file is clever, so every kernel can be checked
against it in float64. (Being plain, it inherits autograd's limits: with rows whose |w|^2 exceeds
eps_norm by more than the dtype's precision, u_i . u_i rounds to 1 and the half-space angular gradient
through acos is not finite; the kernels take that self pair in closed form.) Half-space energies are
computed the naive way, by concatenating ``[U, -U]``, so the
kernels' ``2 sum [phi(g) + phi(-g)] + sum phi(-g_ii)`` shortcut is tested against an independent form.
"""

from __future__ import annotations

import math

import torch

from ._params import EnergyParams, num_pairs


def normalize_rows(w: torch.Tensor, eps_norm: float) -> torch.Tensor:
    """``u_i = w_i / sqrt(|w_i|^2 + eps_norm)`` (docs/spec.md §1)."""
    return w / torch.sqrt((w * w).sum(dim=-1, keepdim=True) + eps_norm)


def phi_of_g(g: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """The per-pair term as a function of the cosine of two normalized rows (docs/spec.md §3)."""
    if p.kind in ("angular", "angular_log"):
        a = torch.acos(g) / math.pi + p.eps_ang
        return a.pow(-p.s) if p.kind == "angular" else -torch.log(a)
    return phi_of_d2(2 - 2 * g, p)


def phi_of_d2(d2: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """The per-pair term as a function of the squared distance (Riesz, log, Gaussian)."""
    if p.kind == "riesz":
        return d2.pow(-p.s / 2)
    if p.kind == "log":
        return -torch.log(d2)
    if p.kind == "gaussian":
        return torch.exp(-p.t * d2)
    raise ValueError(f"kind={p.kind!r} needs normalized rows")


def _geometry(x: torch.Tensor, y: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """The cosine ``g`` (normalized) or the squared distance ``d2`` (un-normalized) of every pair
    ``(x_i, y_j)``: a ``[..., Nx, Ny]`` matrix."""
    if p.normalize:
        return normalize_rows(x, p.eps_norm) @ normalize_rows(y, p.eps_norm).transpose(-1, -2)
    d2 = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :] - 2 * x @ y.transpose(-1, -2)
    return d2.clamp_min(0)


def _phi(geom: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    return phi_of_g(geom, p) if p.normalize else phi_of_d2(geom, p)


def energy_sum(w: torch.Tensor, p: EnergyParams) -> torch.Tensor:
    """``E = sum_{i<j} phi(g_ij)`` of the rows of ``w`` (``[N, D]`` or ``[B, N, D]``), or of the 2N
    half-space points ``{w_i} u {-w_i}``. Every entry but the pairs ``i < j`` is replaced by a harmless
    value before ``phi`` is applied and by 0 after, so the diagonal (not a pair) never enters the graph.
    (A mask rather than ``triu_indices``, which needs N as a Python int: under ``torch.compile(dynamic=True)``
    it would recompile for every N.)"""
    if p.half_space:
        w = torch.cat([w, -w], dim=-2)
    n = w.shape[-2]
    idx = torch.arange(n, device=w.device)
    pair = idx[:, None] < idx[None, :]
    geom = torch.where(pair, _geometry(w, w, p), 0.0 if p.normalize else 1.0)
    return torch.where(pair, _phi(geom, p), 0.0).sum((-1, -2))


def energy(w: torch.Tensor, p: EnergyParams, reduction: str = "mean") -> torch.Tensor:
    """The energy, summed or averaged over unordered pairs (docs/spec.md §4)."""
    e = energy_sum(w, p)
    if reduction == "mean":
        e = e / num_pairs(w.shape[-2], p.half_space)
    return e


def cross_energy(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, reduction: str = "sum") -> torch.Tensor:
    """``sum_i sum_j phi(g(x_i, y_j))`` over all pairs of two sets (``phi(g) + phi(-g)`` in half-space
    mode), or its mean over the ``Nx * Ny`` pairs."""
    phi = _phi(_geometry(x, y, p), p)
    if p.half_space:
        phi = phi + _phi(_geometry(x, -y, p), p)
    e = phi.sum((-1, -2))
    if reduction == "mean":
        e = e / (x.shape[-2] * y.shape[-2])
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
    """``log mean_{i<j} exp(-t |x_i - x_j|^2)`` on the rows as given (docs/spec.md §4, §7), with
    ``|x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i . x_j`` clamped at 0 (docs/spec.md §5)."""
    p = EnergyParams("gaussian", 0.0, float(t), 0.0, 0.0, False, False)
    return torch.log(energy(x, p, "mean"))
