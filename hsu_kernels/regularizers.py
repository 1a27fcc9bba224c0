"""Model-level regularizers of the hyperspherical-uniformity family (docs/spec.md §7), on top of ``ops.py``.

Two layers of API:

- **Per-layer functions** (``mhe_loss``, ``comhe_random_loss``, ``mhs_loss``, ``mgd_loss``, ``mhp_loss``,
  ``mhc_loss``, ``rmhp_loss``, ``neuron_uniformity``, ...): one neuron matrix ``W: Tensor[N, D]`` in, the
  original code's per-layer value out, before its coefficient.
- **Presets**: each ``method=`` of :class:`MHERegularizer` is one small registered class (:class:`Preset`)
  that says how a layer's value is computed, its default coefficients, its half-space rule and its learned
  auxiliaries (projections, poles) with their objective. :class:`MHERegularizer` walks the table
  :data:`PRESETS`; adding a method is adding one registered class.

The numbers are those of the papers' public code, which we call "the original code" (wy1iu/MHE,
rmlin/CoMHE, wy1iu/Sphere-Uniformity, ssnl/align_uniform); where that code departs from its paper the code
wins, and the preset's docstring says where. The regularizer's value is

    ``hidden_coef * sum_hidden value(W_l) + output_coef * value(W_out)``

with ``value`` the layer's term of the original's network loss (signed as the original adds it).

======================  ==================================================================  ==============
``method``              per-layer value (docs/spec.md §7)                                   coefs (h, o)
======================  ==================================================================  ==============
``"mhe"``               ``energy(W, power)``, mean over pairs                               1, 10 (0.1, 1
                                                                                            for a1/a2)
``"comhe_random"``      mean over ``pn`` fresh projections ``W P_k^T``, ``P_k ~ N(0,1)``    1, 10
``"comhe_angle"``       energy of ``W P^T``, ``P`` learned to preserve angles               1, 10
``"comhe_adversarial"`` energy of ``W P^T``, ``P`` learned to maximize the energy           1, 10
``"mhs"``               ``-(sum of the tied minima of d2)``, double normalization           0.1, 1
``"mgd"``               ``-logdet(exp(-(2 - 2G)) + 1e-6 I)``, double normalization          0.01, 0.1
``"mhp"``               ``-mean_i (2 - 2cos(v, u_i))^-1`` at a learned pole ``v``           1, 10
``"mhc"``               ``-log(mean_i exp(-10 (2 - 2cos(v, u_i)))) / 10`` at a learned pole  0.01, 0.1
``"rmhp"``              ``|sum_i w_i|`` of the raw weights                                  0.01, 0.1
``"uniformity"``        ``log mean_{i<j} exp(-t d2_ij)`` of the normalized neurons          1, 10
======================  ==================================================================  ==============
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from . import reference
from ._params import (
    check_backend,
    check_bool,
    check_int,
    check_matrix,
    check_number,
    check_power,
    compute_dtype,
    make_params,
)
from .layers import NeuronLayer, Selector, collect_layers, neuron_matrix
from .ops import (
    _cross_value,
    _energy_many_value,
    _energy_value,
    align_loss,
    energy,
    energy_many,
    uniformity_loss,
)

#: The eps the original code adds inside every norm, ``sqrt(|x|^2 + 1e-4)``.
_EPS = 1e-4

# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_poles(v, w: torch.Tensor) -> torch.Tensor:
    check_matrix(v, "v", allow_batch=False, min_rows=1)
    if v.shape[1] != w.shape[-1]:
        raise ValueError(f"v must have D = {w.shape[-1]} columns like w, got shape {tuple(v.shape)}")
    return v


# ----------------------------------------------------------------------------------------------------------
# MHE (wy1iu/MHE) and CoMHE (rmlin/CoMHE): single normalization, energies from ops.py
# ----------------------------------------------------------------------------------------------------------


def mhe_loss(w: torch.Tensor, power: str = "2", half_space: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """MHE of one layer: the original's per-layer value, ``energy(W, power)`` averaged over pairs
    (over the ``N(2N-1)`` pairs of ``{u_i} u {-u_i}`` with ``half_space``), before its coefficient.

    Args:
        w: ``Tensor[N, D]`` (or ``Tensor[B, N, D]``) neuron matrix.
        power: ``"0","1","2","a0","a1","a2"`` (docs/spec.md §3).
        half_space: the half-space variant.
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        A scalar (``Tensor[B]`` batched).
    """
    return energy(w, power=check_power(power), half_space=half_space, backend=backend)


def _project(w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The projected neurons ``W P_k^T``: ``Tensor[pn, N, pd]`` from ``W: [N, D]`` and ``P: [pn, pd, D]``."""
    return torch.matmul(w.unsqueeze(0), p.transpose(1, 2))


def random_projections(
    d: int, pd: int = 40, pn: int = 20, *, generator: Optional[torch.Generator] = None, device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``pn`` fresh Gaussian projection matrices ``P_k ~ N(0, 1)``: ``Tensor[pn, pd, d]``.

    Args:
        d: the neurons' dimension D.
        pd: the projected dimension.
        pn: how many projections.
        generator: a ``torch.Generator`` (on ``device``) for reproducible draws; ``None`` uses the global RNG.
    """
    return torch.randn(pn, pd, d, generator=generator, device=device, dtype=dtype)


def comhe_random_loss(
    w: torch.Tensor,
    pd: int = 40,
    pn: int = 20,
    power: str = "2",
    half_space: bool = True,
    *,
    generator: Optional[torch.Generator] = None,
    p: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Random-projection CoMHE of one layer: the mean over ``pn`` projections of the energy of the
    projected neurons ``W P_k^T`` (``Tensor[N, pd]`` each), with a fresh ``P_k ~ N(0, 1)`` of shape
    ``[pd, D]`` on every call. All ``pn`` projections go through one batched ``energy([pn, N, pd])`` call.

    The original (rmlin/CoMHE ``random_projection/architecture.py``) uses s = 2 Riesz, half-space, pd = 40,
    pn = 20, and regularizes its first layer (D = 27 < pd) without projection; :class:`MHERegularizer` does
    the same for every layer with ``D <= pd``.

    Args:
        w: ``Tensor[N, D]`` neuron matrix.
        pd, pn: projected dimension and number of projections.
        power: the energy (docs/spec.md §3), ``"2"`` in the original.
        half_space: the half-space energy of the projected neurons.
        generator: a seeded ``torch.Generator`` on ``w``'s device makes the draws reproducible.
        p: ``Tensor[pn, pd, D]`` projections to use instead of drawing (``pd``/``pn``/``generator`` ignored).
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        A scalar: ``mean_k energy(W P_k^T)``.
    """
    check_matrix(w, "w", allow_batch=False)
    _check_generator(generator)
    if p is None:
        p = random_projections(w.shape[1], check_int("pd", pd), check_int("pn", pn), generator=generator,
                               device=w.device, dtype=w.dtype)
    elif not isinstance(p, torch.Tensor) or p.dim() != 3 or p.shape[2] != w.shape[1]:
        raise ValueError(f"p must be a Tensor[pn, pd, D={w.shape[1]}], got {getattr(p, 'shape', type(p).__name__)}")
    return energy(_project(w, p), power=check_power(power), half_space=half_space, backend=backend).mean()


def _ref_cosines(x: torch.Tensor) -> torch.Tensor:
    """The original's ``cal``: ``x_i . x_j / (n_i n_j)``, ``n_i = sqrt(|x_i|^2 + 1e-4)``, full matrix."""
    n = torch.sqrt((x * x).sum(-1) + _EPS)
    return (x @ x.transpose(-1, -2)) / (n[..., :, None] * n[..., None, :])


def comhe_angle_loss(p: torch.Tensor, w: torch.Tensor, weight_decay: float = 2.5e-7) -> torch.Tensor:
    """The angle-preserving CoMHE objective of a learned projection:
    ``sum_k ||cos(W P_k^T) - cos(W)||_F + weight_decay * |P|^2``.

    ``cos(.)`` is the original's full ``N x N`` cosine matrix (diagonal included, norms with the 1e-4
    eps), so this materializes ``N x N``; N is one layer's width, so that is small. The default decay is
    the original's (rmlin/CoMHE ``angle_projection/train.py``): ``1e-3 * l2_regularizer(5e-4)(P)`` =
    ``2.5e-7 |P|^2``.

    Args:
        p: ``Tensor[pd, D]`` or ``Tensor[pn, pd, D]`` projection(s).
        w: ``Tensor[N, D]`` neuron matrix.
        weight_decay: the weight of ``|P|^2`` (>= 0).

    Returns:
        A scalar, differentiable in ``p`` and ``w``.
    """
    check_matrix(w, "w", allow_batch=False)
    check_matrix(p, "p", min_rows=1)
    if p.shape[-1] != w.shape[1]:
        raise ValueError(f"p must have D = {w.shape[1]} columns like w, got shape {tuple(p.shape)}")
    weight_decay = check_number("weight_decay", weight_decay, nonneg=True)
    p3 = p if p.dim() == 3 else p.unsqueeze(0)
    diff = _ref_cosines(_project(w, p3)) - _ref_cosines(w)
    return torch.linalg.matrix_norm(diff).sum() + weight_decay * (p * p).sum()


def comhe_adversarial_objective(
    p: torch.Tensor, w: torch.Tensor, power: str = "2", weight_decay: float = 2.5e-7, *, backend: str = "auto"
) -> torch.Tensor:
    """What the adversarial CoMHE projection minimizes: ``-mean_k energy(W P_k^T) + weight_decay |P|^2``,
    i.e. ``P`` maximizes the (full-space) energy of the projected neurons, as rmlin/CoMHE
    ``adversarial_projection/architecture.py`` does (its projection's objective is the plain, not
    half-space, s = 2 energy; the network then minimizes the half-space energy under that projection).

    Args:
        p: ``Tensor[pd, D]`` or ``Tensor[pn, pd, D]``.
        w: ``Tensor[N, D]``.
        power: the energy.
        weight_decay: the weight of ``|P|^2`` (the original's 2.5e-7, as in :func:`comhe_angle_loss`).
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        A scalar, differentiable in ``p`` and ``w``.
    """
    check_matrix(w, "w", allow_batch=False)
    check_matrix(p, "p", min_rows=1)
    weight_decay = check_number("weight_decay", weight_decay, nonneg=True)
    p3 = p if p.dim() == 3 else p.unsqueeze(0)
    e = energy(_project(w, p3), power=check_power(power), backend=backend).mean()
    return -e + weight_decay * (p * p).sum()


# ----------------------------------------------------------------------------------------------------------
# The Sphere-Uniformity family (wy1iu/Sphere-Uniformity): MHS, MGD, MHP, MHC, R-MHP (docs/spec.md §7b)
# ----------------------------------------------------------------------------------------------------------


def _norm_once(w: torch.Tensor) -> torch.Tensor:
    """The Sphere-Uniformity code's first normalization (its ``norm``): ``w_i / sqrt(|w_i|^2 + 1e-4)``,
    computed in float64 for float64 input and float32 otherwise. The kernels (its ``cal``) then normalize
    these rows a second time with the same eps."""
    x = w.to(compute_dtype(w.dtype))
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + _EPS)


def _mhs_one(u: torch.Tensor, half_space: bool, block: int) -> torch.Tensor:
    """``-sum`` over the pairs at the minimum of ``d2`` (with their multiplicity in ``[U, -U]``) of the
    unit-ish rows ``u: Tensor[N, D]``; the search is tiled (O(block * N) memory), the value and its
    gradient come from the tied pairs only."""
    n = u.shape[0]
    best = math.inf
    hits: List[Tuple[torch.Tensor, torch.Tensor, int]] = []
    with torch.no_grad():
        ud = u.detach()
        cols = torch.arange(n, device=u.device)[None, :]
        for i0 in range(0, n, block):
            g = ud[i0:i0 + block] @ ud.T
            rows = torch.arange(i0, i0 + g.shape[0], device=u.device)[:, None]
            # Each unordered pair once: j > i for (u_i, u_j); j >= i for (u_i, -u_j), whose j < i twin
            # (u_j, -u_i) has the same distance in exact arithmetic.
            cands = [(1, torch.where(cols > rows, 2 - 2 * g, math.inf))]
            if half_space:
                cands.append((-1, torch.where(cols >= rows, 2 + 2 * g, math.inf)))
            for sign, d2 in cands:
                m = float(d2.min())
                if m == math.inf or m > best:
                    continue
                if m < best:
                    best, hits = m, []
                i, j = torch.nonzero(d2 == m, as_tuple=True)
                hits.append((i + i0, j, sign))
    i = torch.cat([h[0] for h in hits])
    j = torch.cat([h[1] for h in hits])
    sign = torch.cat([torch.full_like(h[0], h[2]) for h in hits]).to(u.dtype)
    d2 = 2 - 2 * sign * (u[i] * u[j]).sum(-1)
    # In [U, -U] every distance occurs twice ((i, j) and (i+N, j+N); (i, j+N) and (j, i+N)), except a
    # point and its own antipode (i, i+N).
    mult = torch.ones_like(d2) if not half_space else 2 - ((i == j) & (sign < 0)).to(d2.dtype)
    return -(mult * d2).sum()


def mhs_loss(w: torch.Tensor, half_space: bool = False, *, block: int = 256) -> torch.Tensor:
    """MHS (maximum hyperspherical separation) of one layer, as wy1iu/Sphere-Uniformity
    ``mhs/architecture.py`` computes it (docs/spec.md §7b), before its coefficient:
    ``-(sum of every d2 entry equal to the minimum)``.

    The original builds the ``d2 = 2 - 2g`` matrix of the columns of ``[F, -F]`` (half-space) or ``F``,
    keeps its strict upper triangle, takes the minimum ``m`` of the non-zero entries and sums every entry
    exactly equal to ``m``. Departures from the paper's ``-min d2``:

    - the cosine ``g`` is of neurons normalized twice (``w / sqrt(|w|^2 + 1e-4)``, then again);
    - with half-space every distance occurs twice in ``[F, -F]``, so the value is ``-2m`` (our multiplicity
      is exact arithmetic's: the original's two entries are bitwise equal whenever its matrix product
      is symmetric, which is the usual case);
    - other exact ties are summed too, each with its own gradient;
    - its non-zero filter removes the masked (lower) entries; after the double normalization
      ``g <= 1/(1 + 1e-4)``, so no real distance is ever zero.

    Tiled (O(N * block) memory): one pass finds the minimum and its ties, then only the tied pairs are
    recomputed with autograd.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        half_space: over the 2N points ``{u_i} u {-u_i}``.
        block: rows per tile.

    Returns:
        A scalar (``Tensor[B]`` batched), float64 for float64 input, else float32.
    """
    check_matrix(w, "w")
    check_bool("half_space", half_space)
    block = check_int("block", block)
    u = reference.normalize_rows(_norm_once(w), _EPS)
    if u.dim() == 3:
        return torch.stack([_mhs_one(x, half_space, block) for x in u.unbind(0)])
    return _mhs_one(u, half_space, block)


def mgd_loss(w: torch.Tensor, half_space: bool = False, *, t: float = 1.0, jitter: float = 1e-6) -> torch.Tensor:
    """MGD (maximum Gram determinant) of one layer, as wy1iu/Sphere-Uniformity ``mgd/architecture.py``
    computes it (docs/spec.md §7b), before its coefficient: ``-logdet(K + jitter I)`` with the Gaussian
    kernel ``K_ij = exp(-t (2 - 2 G_ij))`` of the neurons (or of ``[W, -W]`` with ``half_space``).

    Departure from the paper: ``G`` is the cosine matrix of neurons normalized twice (``w / sqrt(|w|^2 +
    1e-4)``, then again), diagonal included (``G_ii = |f_i|^2 / (|f_i|^2 + 1e-4)`` of the once-normalized
    ``f_i``, slightly below 1). At small weight norms (``|w|^2`` near 1e-4) this changes the value by up to
    several times.

    **This one materializes the** ``N x N`` **(``2N x 2N`` half-space) matrix and factors it** (Cholesky,
    O(N^3)): a determinant couples every pair, so no tiled kernel applies. It is meant for layers
    (N <= a few thousand), not for 100,000-class heads.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        half_space: the determinant over ``{u_i} u {-u_i}``.
        t: kernel bandwidth (the original's 1).
        jitter: added to the diagonal (the original's 1e-6).

    Returns:
        A scalar (``Tensor[B]`` batched). Computed in float64 (the log-determinant of a nearly singular
        kernel loses everything in float32), returned in float64 for float64 input, else float32.
    """
    check_matrix(w, "w")
    check_bool("half_space", half_space)
    t = check_number("t", t, positive=True)
    jitter = check_number("jitter", jitter, positive=True)
    x = _norm_once(w.to(torch.float64))
    if half_space:
        x = torch.cat([x, -x], dim=-2)
    u = reference.normalize_rows(x, _EPS)
    k = torch.exp(-t * (2 - 2 * (u @ u.transpose(-1, -2))))
    k = k + jitter * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    chol = torch.linalg.cholesky(k)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (-logdet).to(compute_dtype(w.dtype))


def _pole_cross(w: torch.Tensor, v: torch.Tensor, half_space: bool, kind: str, backend: str, **kw) -> torch.Tensor:
    """``mean_i phi(cos(v_k, f_i))`` per pole (``Tensor[K]``) over the once-normalized neurons ``f_i`` (and
    ``-f_i`` with ``half_space``); the kernel normalizes both sides once more, which makes the pole
    cosine the original's ``v . f_i / (sqrt(|v|^2 + 1e-4) sqrt(|f_i|^2 + 1e-4))``. One batched cross
    call: poles as ``[K, 1, D]`` against ``K`` expanded copies of the neurons, the mean's division inside the
    kernel. For the Gaussian kind the log of the mean (``log mean_i exp(-t d2)``, formed without rounding
    the mean: see ``ops._energy_value``)."""
    check_matrix(w, "w", allow_batch=False)
    _check_poles(v, w)
    check_bool("half_space", half_space)
    dtype = torch.promote_types(compute_dtype(w.dtype), compute_dtype(v.dtype))
    f = _norm_once(w).to(dtype)
    vk = v.to(dtype).unsqueeze(1)
    fk = f.unsqueeze(0).expand(v.shape[0], *f.shape)
    p = make_params(kind, kw.get("s", 1.0), half_space=half_space, eps_norm=_EPS, t=kw.get("t", 2.0))
    return _cross_value(vk, fk, p, w.shape[0] * (2 if half_space else 1), backend, None)


def pole_potential(
    w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, s: float = 2.0, backend: str = "auto"
) -> torch.Tensor:
    """The MHP term of one layer at each pole, as wy1iu/Sphere-Uniformity ``mhp/architecture.py`` computes
    it: ``mean_i (2 - 2cos(v_k, u_i))^(-s/2)`` (``s = 2``: the original's ``(2 - 2cos)^-1``) over the N
    neurons, or the 2N points ``{u_i} u {-u_i}`` with ``half_space``.

    As in the original, the neurons are normalized twice and the pole once: ``cos(v, u_i) = v . f_i /
    (sqrt(|v|^2 + 1e-4) sqrt(|f_i|^2 + 1e-4))`` with ``f_i = w_i / sqrt(|w_i|^2 + 1e-4)``. Computed by the
    fused ``cross_energy`` kernel (poles against neurons), so it never builds a matrix.

    Args:
        w: ``Tensor[N, D]`` neurons.
        v: ``Tensor[K, D]`` poles (not normalized: any nonzero scale works).
        half_space: include the antipodes ``-u_i``.
        s: Riesz exponent (> 0).
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        ``Tensor[K]``, differentiable in ``w`` and ``v``.
    """
    return _pole_cross(w, v, half_space, "riesz", backend, s=s)


def pole_softmin(
    w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, beta: float = 10.0, backend: str = "auto"
) -> torch.Tensor:
    """The MHC term of one layer at each pole, as wy1iu/Sphere-Uniformity ``mhc/architecture.py`` computes
    it: the soft distance from the pole to its nearest neuron,
    ``-log(mean_i exp(-beta (2 - 2cos(v_k, u_i)))) / beta`` with ``beta = 10`` (the original's gamma), the
    pole cosine as in :func:`pole_potential` (neurons normalized twice).

    Args:
        w: ``Tensor[N, D]`` neurons.
        v: ``Tensor[K, D]`` poles.
        half_space: include the antipodes ``-u_i``.
        beta: the soft-min sharpness (> 0).
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        ``Tensor[K]``, differentiable in ``w`` and ``v``.
    """
    beta = check_number("beta", beta, positive=True)
    return -_pole_cross(w, v, half_space, "gaussian", backend, t=beta) / beta  # the log-mean itself


def mhp_loss(w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """MHP (maximum hyperspherical polarization): the layer's term of the network's loss,
    ``-sum_k pole_potential(w, v)_k`` (the original has one pole per layer, ``v: Tensor[1, D]``).

    wy1iu/Sphere-Uniformity ``mhp/train.py`` adds ``-value`` to the network's loss and lets the pole
    minimize ``+value``: the pole seeks the direction least covered by the neurons and the network
    raises the potential there. See :class:`MHP`.

    Args:
        w: ``Tensor[N, D]``; v: ``Tensor[K, D]`` poles (K independent copies of the term).
        half_space: include the antipodes ``-u_i``.
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        A scalar.
    """
    return -pole_potential(w, v, half_space, backend=backend).sum()


def mhc_loss(w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, beta: float = 10.0,
             backend: str = "auto") -> torch.Tensor:
    """MHC (minimum hyperspherical covering): the layer's term of the network's loss,
    ``+sum_k pole_softmin(w, v)_k`` (the original has one pole per layer, ``v: Tensor[1, D]``).

    wy1iu/Sphere-Uniformity ``mhc/train.py`` adds ``+value`` to the network's loss and lets the pole
    minimize ``-value``: the pole moves into the largest hole between the neurons and the network closes
    it. See :class:`MHC`.

    Args:
        w: ``Tensor[N, D]``; v: ``Tensor[K, D]`` poles; beta: soft-min sharpness (10).
        half_space: include the antipodes ``-u_i``.
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).

    Returns:
        A scalar.
    """
    return pole_softmin(w, v, half_space, beta=beta, backend=backend).sum()


def rmhp_loss(w: torch.Tensor) -> torch.Tensor:
    """R-MHP of one layer, as wy1iu/Sphere-Uniformity ``r_mhp/architecture.py`` computes it, before its
    coefficient: ``|| sum_i w_i ||_2``, the norm of the sum of the layer's raw neuron vectors.

    Departures from the paper's relaxed polarization, which like the rest of the family lives on the
    unit sphere: the raw weights are used (no normalization), there are no poles and no half-space
    variant (the sum of ``[W, -W]`` is zero). At an exactly zero sum the gradient is 0 (the original's
    TensorFlow norm gives NaN there).

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.

    Returns:
        A scalar (``Tensor[B]`` batched), float64 for float64 input, else float32.
    """
    check_matrix(w, "w", min_rows=1)
    return torch.linalg.vector_norm(w.to(compute_dtype(w.dtype)).sum(-2), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Uniformity (ssnl/align_uniform)
# ----------------------------------------------------------------------------------------------------------


def neuron_uniformity(w: torch.Tensor, t: float = 2.0, half_space: bool = False, *,
                      backend: str = "auto") -> torch.Tensor:
    """The contrastive uniformity loss applied to a layer's normalized neurons:
    ``log mean_{i<j} exp(-t d2_ij)`` with ``d2 = 2 - 2 g_ij`` (docs/spec.md §4), the ``"uniformity"`` method.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        t: temperature (> 0).
        half_space: over ``{u_i} u {-u_i}``.
        backend: ``"auto"`` (default), ``"reference"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``, passed
            to the kernel calls (what ``"auto"`` picks: :func:`hsu_kernels.energy`).
    """
    # the log-mean itself: log(energy(...)) would round the mean, near 1 for clustered neurons, to float32 first
    p = make_params("gaussian", 0.0, half_space=half_space, t=t)
    return _energy_value(w, p, "mean", backend, None)


def uniformity_align_loss(x: torch.Tensor, y: torch.Tensor, *, lam: float = 1.0, t: float = 2.0,
                          alpha: float = 2.0) -> torch.Tensor:
    """Wang and Isola's contrastive objective on two views' features (rows as given, normalized by the
    caller): ``align_loss(x, y, alpha) + lam * (uniformity_loss(x, t) + uniformity_loss(y, t)) / 2``.

    Args:
        x, y: ``Tensor[N, D]`` features of positive pairs (row i of ``x`` with row i of ``y``).
        lam: weight of the uniformity terms (>= 0).
        t, alpha: as in :func:`hsu_kernels.uniformity_loss` / :func:`hsu_kernels.align_loss`.

    Returns:
        A scalar.
    """
    lam = check_number("lam", lam, nonneg=True)
    return align_loss(x, y, alpha) + lam * (uniformity_loss(x, t) + uniformity_loss(y, t)) / 2


# ----------------------------------------------------------------------------------------------------------
# The presets: one small definition per method, walked by MHERegularizer
# ----------------------------------------------------------------------------------------------------------

#: ``method`` name -> its :class:`Preset` class, in the order they are defined (grouped by paper).
PRESETS: Dict[str, Type["Preset"]] = {}


def register(cls: Type["Preset"]) -> Type["Preset"]:
    """Class decorator: add a :class:`Preset` to :data:`PRESETS` under its ``name``."""
    if not cls.name or cls.name in PRESETS:
        raise ValueError(f"preset name {cls.name!r} is empty or already registered")
    PRESETS[cls.name] = cls
    return cls


@dataclass
class Preset:
    """One ``method=`` of :class:`MHERegularizer`.

    A preset is a dataclass whose fields are the method's options (``backend`` and ``generator`` are
    common to all), plus these class attributes:

    - ``name``: the ``method=`` string;
    - ``coefs``: the default ``(hidden, output)`` coefficients, the original code's;
    - ``half_space``: the default for the hidden layers, or ``None`` where the method has no half-space
      variant (then ``half_space=True`` is an error). Output layers are never half-space.

    and these methods, which :class:`MHERegularizer` calls:

    - :meth:`value`: one layer's term of the network's loss, before its coefficient;
    - :meth:`values`: all hidden layers' terms (override it to batch them into one kernel call);
    - :meth:`make_aux` / :meth:`aux_objective`: a learned auxiliary of a layer (a projection, a pole) and
      what it minimizes. Presets with auxiliaries also have the fields ``aux_lr``, ``aux_steps``,
      ``aux_momentum`` and ``weight_decay``, read by :meth:`MHERegularizer.update_aux`.
    """

    name: ClassVar[str] = ""
    coefs: ClassVar[Tuple[float, float]] = (1.0, 10.0)
    half_space: ClassVar[Optional[bool]] = True

    backend: str = "auto"
    generator: Optional[torch.Generator] = None

    def __post_init__(self) -> None:
        check_backend(self.backend)
        _check_generator(self.generator)

    @classmethod
    def options(cls) -> List[str]:
        """The method's own options (the dataclass fields but ``backend`` and ``generator``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("backend", "generator")]

    def coefficients(self) -> Tuple[float, float]:
        """The default ``(hidden_coef, output_coef)``."""
        return self.coefs

    def value(self, w: torch.Tensor, aux: Optional[torch.Tensor], *, hidden: bool, half_space: bool) -> torch.Tensor:
        """One layer's term of the network's loss, before its coefficient.

        Args:
            w: ``Tensor[N, D]`` the layer's neurons (differentiable).
            aux: the layer's auxiliary from :meth:`make_aux` (detached), or ``None``.
            hidden: a hidden layer (else the output layer).
            half_space: the half-space variant (never for the output layer).

        Returns:
            A scalar.
        """
        raise NotImplementedError

    def values(self, ws: List[torch.Tensor], auxs: List[Optional[torch.Tensor]], half_space: bool) -> torch.Tensor:
        """Every hidden layer's term: ``Tensor[L]``; by default one :meth:`value` call per layer."""
        return torch.stack([self.value(w, a, hidden=True, half_space=half_space) for w, a in zip(ws, auxs)])

    def make_aux(self, w: torch.Tensor, hidden: bool) -> Optional[torch.Tensor]:
        """The initial auxiliary of a layer with neurons ``w`` (detached), or ``None`` for none."""
        return None

    def aux_objective(self, w: torch.Tensor, aux: torch.Tensor, *, hidden: bool, half_space: bool,
                      coef: float) -> torch.Tensor:
        """What a layer's auxiliary minimizes (a scalar, differentiable in ``aux``), the layer's weights
        ``w`` held fixed; ``coef`` is the layer's coefficient."""
        raise NotImplementedError(f"method {self.name!r} has no auxiliaries")

    def _randn(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=like.device, dtype=compute_dtype(like.dtype))


# -- MHE: Liu et al., "Learning towards Minimum Hyperspherical Energy" (NeurIPS 2018) -----------------------


@register
@dataclass
class MHE(Preset):
    """MHE: the mean over pairs of ``energy(W, power)`` (docs/spec.md §3-§4), half-space optional.

    Source: wy1iu/MHE ``code/architecture.py`` (``_add_thomson_constraint`` for hidden layers,
    ``_add_thomson_constraint_final`` for the output layer). Coefficients 1 hidden, 10 output; the angular
    powers ``a1``/``a2`` use 0.1 and 1. Departures from the paper: the log energy is ``-log |u_i - u_j|^2``
    (twice the paper's ``log(1/|.|)``), the angular energies divide the angle by pi, and every norm is
    ``sqrt(|w|^2 + 1e-4)``. All hidden layers go through one :func:`hsu_kernels.energy_many` call.
    """

    name = "mhe"
    coefs = (1.0, 10.0)
    power: str = "2"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.power = check_power(self.power)

    def coefficients(self) -> Tuple[float, float]:
        return (0.1, 1.0) if self.power in ("a1", "a2") else self.coefs

    def values(self, ws, auxs, half_space):
        return energy_many(ws, power=self.power, half_space=half_space, backend=self.backend)

    def value(self, w, aux, *, hidden, half_space):
        return mhe_loss(w, self.power, half_space, backend=self.backend)


# -- CoMHE: Lin et al., "Regularizing Neural Networks via Minimizing Hyperspherical Energy" (CVPR 2020) -----


@dataclass
class _CoMHE(Preset):
    """What the CoMHE presets share: hidden layers with ``D > pd`` are projected to ``pd`` dimensions, the
    others (the original's first layer, D = 27) and the output layer get plain MHE of ``power``."""

    power: str = "2"
    pd: int = 40
    pn: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        self.power = check_power(self.power)
        check_int("pd", self.pd)
        check_int("pn", self.pn)

    def _projected(self, w: torch.Tensor, aux: Optional[torch.Tensor], half_space: bool) -> torch.Tensor:
        raise NotImplementedError

    def values(self, ws, auxs, half_space):
        vals: List[Optional[torch.Tensor]] = [None] * len(ws)
        plain = [k for k, w in enumerate(ws) if w.shape[1] <= self.pd]
        if plain:
            e = energy_many([ws[k] for k in plain], power=self.power, half_space=half_space, backend=self.backend)
            for j, k in enumerate(plain):
                vals[k] = e[j]
        for k, w in enumerate(ws):
            if vals[k] is None:
                vals[k] = self._projected(w, auxs[k], half_space)
        return torch.stack(vals)

    def value(self, w, aux, *, hidden, half_space):
        if hidden and w.shape[1] > self.pd:
            return self._projected(w, aux, half_space)
        return energy(w, power=self.power, half_space=half_space, backend=self.backend)


@register
@dataclass
class CoMHERandom(_CoMHE):
    """Random-projection CoMHE: per hidden layer, the mean over ``pn = 20`` fresh Gaussian projections to
    ``pd = 40`` dimensions of the half-space s = 2 energy (:func:`comhe_random_loss`).

    Source: rmlin/CoMHE ``random_projection/architecture.py`` and ``train.py``. Coefficients 1 hidden, 10
    output (the repository's first upload had 100 for the hidden layers, replaced the same day; its
    published training log starts at a hidden value of 5.13, i.e. coefficient 1).
    """

    name = "comhe_random"
    coefs = (1.0, 10.0)

    def _projected(self, w, aux, half_space):
        return comhe_random_loss(w, self.pd, self.pn, self.power, half_space, generator=self.generator,
                                 backend=self.backend)


@dataclass
class _LearnedProjection(_CoMHE):
    """CoMHE with one learned projection ``P: [pn, pd, D]`` per projected hidden layer, trained by plain
    SGD (the original's ``GradientDescentOptimizer``, ``aux_steps`` steps at ``aux_lr`` before each network
    step). ``weight_decay`` is the weight of ``|P|^2`` in the projection's objective: the original's
    ``1e-3 * l2_regularizer(5e-4)``, 2.5e-7."""

    pd: int = 30
    pn: int = 1
    aux_lr: float = 0.1
    aux_steps: int = 1
    aux_momentum: float = 0.0
    weight_decay: float = 2.5e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_aux_options(self)

    def make_aux(self, w, hidden):
        return self._randn(self.pn, self.pd, w.shape[1], like=w) if hidden and w.shape[1] > self.pd else None

    def _projected(self, w, aux, half_space):
        return energy(_project(w.to(aux.dtype), aux), power=self.power, half_space=half_space,
                      backend=self.backend).mean()


@register
@dataclass
class CoMHEAngle(_LearnedProjection):
    """Angle-preserving CoMHE: ``P`` minimizes :func:`comhe_angle_loss` (one step per network step), the
    network minimizes the half-space energy of ``W P^T``.

    Source: rmlin/CoMHE ``angle_projection/architecture.py`` and ``train.py`` (pd = 30, pn = 1, one step).
    Coefficients 1 hidden, 10 output. The original also takes one look-ahead step of ``P`` inside the
    network's graph; we do not.
    """

    name = "comhe_angle"
    coefs = (1.0, 10.0)

    def aux_objective(self, w, aux, *, hidden, half_space, coef):
        return comhe_angle_loss(aux, w, self.weight_decay)


@register
@dataclass
class CoMHEAdversarial(_LearnedProjection):
    """Adversarial CoMHE: ``P`` maximizes the energy of ``W P^T`` (:func:`comhe_adversarial_objective`, 10
    steps per network step), the network minimizes its half-space energy.

    Source: rmlin/CoMHE ``adversarial_projection/architecture.py`` and ``train.py`` (pd = 30, pn = 1, 10
    steps). Coefficients 1 hidden, 10 output.
    """

    name = "comhe_adversarial"
    coefs = (1.0, 10.0)
    aux_steps: int = 10

    def aux_objective(self, w, aux, *, hidden, half_space, coef):
        return comhe_adversarial_objective(aux, w, self.power, self.weight_decay, backend=self.backend)


# -- Sphere-Uniformity: Liu et al., "Learning with Hyperspherical Uniformity" (AISTATS 2021) -------------------


@register
@dataclass
class MHS(Preset):
    """MHS: :func:`mhs_loss`, the sum of the tied minimum distances, negated, hidden layers half-space.

    Source: wy1iu/Sphere-Uniformity ``mhs/architecture.py``, ``mhs/train.py``. Coefficients 0.1 hidden, 1
    output. Departures from the paper (details in :func:`mhs_loss`): neurons normalized twice, every entry
    equal to the minimum summed (so half-space doubles the value), masked entries skipped as zeros.
    """

    name = "mhs"
    coefs = (0.1, 1.0)

    def value(self, w, aux, *, hidden, half_space):
        return mhs_loss(w, half_space)


@register
@dataclass
class MGD(Preset):
    """MGD: :func:`mgd_loss`, ``-logdet`` of the Gaussian kernel matrix, hidden layers half-space.

    Source: wy1iu/Sphere-Uniformity ``mgd/architecture.py``, ``mgd/train.py``. Coefficients 0.01 hidden,
    0.1 output. Departure from the paper: neurons normalized twice (see :func:`mgd_loss`).
    """

    name = "mgd"
    coefs = (0.01, 0.1)

    def value(self, w, aux, *, hidden, half_space):
        return mgd_loss(w, half_space)


@dataclass
class _Poles(Preset):
    """What MHP and MHC share: one learned pole ``v: Tensor[1, D]`` per layer (hidden and output), drawn
    from ``N(0, 1)`` and never normalized, trained before each network step by ``aux_steps = 10`` steps of
    momentum SGD (momentum 0.9, learning rate ``aux_lr``: the network's, 0.1 in the original; the momentum
    persists across steps) on ``-coef * value + weight_decay * |v|^2``: the pole maximizes what the
    network minimizes, under the network's L2 weight decay (the original's ``l2_regularizer(5e-4)``, i.e.
    ``2.5e-4 |v|^2``, ``torch.optim.SGD(weight_decay=5e-4)``).

    Source: wy1iu/Sphere-Uniformity ``mhp/train.py``, ``mhc/train.py`` (``updatev_op`` run ``iters = 10``
    times, then ``update_op``).
    """

    aux_lr: float = 0.1
    aux_steps: int = 10
    aux_momentum: float = 0.9
    weight_decay: float = 2.5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_aux_options(self)

    def make_aux(self, w, hidden):
        return self._randn(1, w.shape[1], like=w)

    def aux_objective(self, w, aux, *, hidden, half_space, coef):
        return -coef * self.value(w, aux, hidden=hidden, half_space=half_space) + self.weight_decay * (aux * aux).sum()


@register
@dataclass
class MHP(_Poles):
    """MHP: :func:`mhp_loss`, the network raises the Riesz (s = 2) potential of its neurons at a learned
    pole that seeks the least covered direction; hidden layers half-space.

    Source: wy1iu/Sphere-Uniformity ``mhp/architecture.py``, ``mhp/train.py``: per layer
    ``c * mean_i (2 - 2cos(v, u_i))^-1`` (c = 1 hidden, 10 output) added to the network's loss with a minus
    sign, the pole minimizing it. Departures from the paper: the neurons are normalized twice, the pole
    once; the potential is a mean over the neurons.
    """

    name = "mhp"
    coefs = (1.0, 10.0)

    def value(self, w, aux, *, hidden, half_space):
        return mhp_loss(w, aux, half_space, backend=self.backend)


@register
@dataclass
class MHC(_Poles):
    """MHC: :func:`mhc_loss`, the network shrinks the soft distance from a learned pole (which seeks the
    largest hole) to its nearest neuron; hidden layers half-space.

    Source: wy1iu/Sphere-Uniformity ``mhc/architecture.py``, ``mhc/train.py``: per layer
    ``-c * log(mean_i exp(-10 (2 - 2cos(v, u_i)))) / 10`` (c = 0.01 hidden, 0.1 output) added to the
    network's loss, the pole minimizing its negative. Departures from the paper: the covering radius's
    minimum over neurons is a soft minimum (gamma = 10, a mean inside the log); neurons normalized twice.
    """

    name = "mhc"
    coefs = (0.01, 0.1)

    def value(self, w, aux, *, hidden, half_space):
        return mhc_loss(w, aux, half_space, backend=self.backend)


@register
@dataclass
class RMHP(Preset):
    """R-MHP ("relaxed MHP"): :func:`rmhp_loss`, the norm of the sum of the layer's raw neuron vectors.

    Source: wy1iu/Sphere-Uniformity ``r_mhp/architecture.py``, ``r_mhp/train.py``. Coefficients 0.01
    hidden, 0.1 output. No poles and no half-space variant (the sum of ``[W, -W]`` is zero); unlike the
    rest of the family it works on the raw, unnormalized weights.
    """

    name = "rmhp"
    coefs = (0.01, 0.1)
    half_space = None

    def value(self, w, aux, *, hidden, half_space):
        return rmhp_loss(w)


# -- Uniformity: Wang and Isola, "Understanding Contrastive Representation Learning..." (ICML 2020) ----------


@register
@dataclass
class Uniformity(Preset):
    """The contrastive uniformity loss on a layer's normalized neurons (:func:`neuron_uniformity`), hidden
    layers in one ``energy_many`` call.

    Source of the formula: ssnl/align_uniform ``align_uniform/__init__.py`` (``lunif``, t = 2). That code
    regularizes features, not weights, so there is no original coefficient for neurons: 1 hidden and 10
    output, MHE's.
    """

    name = "uniformity"
    coefs = (1.0, 10.0)
    t: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("t", self.t, positive=True)

    def values(self, ws, auxs, half_space):
        p = make_params("gaussian", 0.0, half_space=half_space, t=self.t)
        return _energy_many_value(ws, p, "mean", self.backend, None)  # the log-means (see neuron_uniformity)

    def value(self, w, aux, *, hidden, half_space):
        return neuron_uniformity(w, self.t, half_space, backend=self.backend)


def _check_aux_options(p: Preset) -> None:
    check_number("aux_lr", p.aux_lr, positive=True)
    check_int("aux_steps", p.aux_steps, minimum=0)
    p.aux_momentum = check_number("aux_momentum", p.aux_momentum, nonneg=True)
    p.weight_decay = check_number("weight_decay", p.weight_decay, nonneg=True)


#: Every ``method=`` of :class:`MHERegularizer`, grouped by paper.
METHODS = tuple(PRESETS)


def make_preset(method: str, **options) -> Preset:
    """The :class:`Preset` of ``method`` with ``options`` (its own fields, ``backend``, ``generator``).

    Raises:
        ValueError: an unknown method, or an option the method does not take (named).
    """
    if not isinstance(method, str) or method not in PRESETS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    cls = PRESETS[method]
    own = cls.options()
    for key in options:
        if key not in own and key not in ("backend", "generator"):
            raise ValueError(f"{key} is not an option of method={method!r} (its options: {own or 'none'})")
    return cls(**options)


def default_coefs(method: str, power: str = "2") -> Tuple[float, float]:
    """The (hidden, output) coefficients ``MHERegularizer`` uses when none are given: the original code's.

    Args:
        method: one of :data:`METHODS`.
        power: the MHE power; the original scales ``a1``/``a2`` by 0.1 (hidden 0.1, output 1). Ignored by
            methods without a power.

    Returns:
        ``(hidden_coef, output_coef)``.
    """
    if not isinstance(method, str) or method not in PRESETS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    options = {"power": power} if "power" in PRESETS[method].options() else {}
    return make_preset(method, **options).coefficients()


# ----------------------------------------------------------------------------------------------------------
# The model-level regularizer
# ----------------------------------------------------------------------------------------------------------


class MHERegularizer(nn.Module):
    """The hyperspherical-uniformity regularizer of a whole model; calling it returns the loss to add.

    ``reg = MHERegularizer(model)`` then ``loss = task_loss + reg()`` in the training loop. The value is
    ``hidden_coef * sum_l value(W_l) + output_coef * value(W_out)`` over the collected layers
    (docs/spec.md §1, §7), ``value`` by ``method`` (see :data:`PRESETS`): with the defaults this is
    exactly what the original code adds to its network's loss. The output layer is never half-space.

    Learned auxiliaries (CoMHE projections, MHP/MHC poles) are parameters of this module, not of the
    model, and are trained by the module itself: each call in training mode with gradients enabled first
    takes ``aux_steps`` steps of SGD (``aux_lr``, momentum ``aux_momentum``, kept across calls) on them
    with the weights held fixed, as the original runs its auxiliary update before each network step, then
    evaluates the network's loss with them fixed. Call ``reg.eval()`` to evaluate without updating them.
    The original trains poles at the network's learning rate: keep ``reg.aux_lr`` equal to your
    optimizer's (also when a scheduler changes it). Auxiliaries follow their layer's device and dtype
    (float32 for half-precision layers).

    The regularizer holds a reference to ``model`` (``reg.model``, not a submodule: its parameters are
    not the regularizer's), so a pickled or deep-copied regularizer brings its model along.

    Args:
        model: the network.
        power: the energy of ``mhe`` and the CoMHE methods, in the original code's shorthand: ``"0"`` log,
            ``"1"`` Riesz s = 1, ``"2"`` Riesz s = 2 (default), ``"a0"`` angular log, ``"a1"`` angular s = 1,
            ``"a2"`` angular s = 2 (see :func:`hsu_kernels.energy`).
        half_space: half-space values for the hidden layers; ``None``: the method's default (True, except
            ``rmhp``, which has no half-space variant).
        hidden_coef: coefficient of the hidden layers' sum; ``None``: :func:`default_coefs`.
        output_coef: coefficient of the output layer; ``None``: :func:`default_coefs`.
        method: ``"mhe"`` (default), ``"comhe_random"``, ``"comhe_angle"``, ``"comhe_adversarial"``, ``"mhs"``,
            ``"mgd"``, ``"mhp"``, ``"mhc"``, ``"rmhp"`` or ``"uniformity"`` (:data:`METHODS`; the table of the
            module docstring gives each one's per-layer value and coefficients).
        include: only layers matching one of these: a qualified name (``"features.0"``), a glob pattern
            (``"features.*"``), a layer type (``nn.Conv2d``) or a module object. ``None``: every
            ``Linear``/``ConvNd``/``ConvTransposeNd`` (see :func:`hsu_kernels.layers.collect_layers`).
        exclude: drop layers matching one of these (same forms), after ``include``.
        output_layer: the output (classifier) layer: ``"auto"`` (the last ``nn.Linear``), a qualified name,
            a module, or ``None`` (no output layer). The original's CIFAR network has a 1x1 convolution
            there, so name it.
        pd: projected dimension of the CoMHE methods (40 random, 30 learned); layers with ``D <= pd``
            are regularized without projection.
        pn: projections per layer (20 random, 1 learned).
        generator: ``torch.Generator`` for every random draw (projections, initial projections and poles),
            on the weights' device; seed it for reproducible values. ``None``: the global RNG.
        aux_lr: learning rate of the auxiliaries (0.1, the original's base learning rate).
        aux_steps: steps per call (1 angle-preserving, 10 adversarial, 10 poles).
        aux_momentum: momentum of the auxiliaries' SGD (0 projections, 0.9 poles).
        weight_decay: the weight of ``|aux|^2`` in the auxiliaries' objective: 2.5e-7 for projections
            (the original's ``1e-3 * l2_regularizer(5e-4)``), 2.5e-4 for poles (``l2_regularizer(5e-4)``,
            the original network's weight decay; ``torch.optim.SGD``'s ``weight_decay=5e-4``).
        t: temperature of ``uniformity`` (2).
        backend: passed to every kernel call (checked here): ``"auto"`` (default: the C++ kernel for CPU
            tensors, the CUDA or Triton kernel for CUDA tensors, the tiled ``"torch"`` path where neither can
            run; never ``"reference"`` unless nothing else can), ``"reference"`` (plain PyTorch, N x N
            matrices: the tests' oracle), ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``; see
            :func:`hsu_kernels.energy` for the full rule.

    Method-specific options (``power``, ``pd``, ``pn``, ``aux_*``, ``weight_decay``, ``t``) left at
    ``None`` take the method's default; giving one the method does not use is an error.

    Raises:
        ValueError/TypeError: naming the bad argument; see also ``collect_layers``.
    """

    def __init__(
        self,
        model: nn.Module,
        power: Optional[str] = None,
        half_space: Optional[bool] = None,
        hidden_coef: Optional[float] = None,
        output_coef: Optional[float] = None,
        *,
        method: str = "mhe",
        include: Optional[Union[Selector, Sequence[Selector]]] = None,
        exclude: Optional[Union[Selector, Sequence[Selector]]] = None,
        output_layer: Union[str, nn.Module, None] = "auto",
        pd: Optional[int] = None,
        pn: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        aux_lr: Optional[float] = None,
        aux_steps: Optional[int] = None,
        aux_momentum: Optional[float] = None,
        weight_decay: Optional[float] = None,
        t: Optional[float] = None,
        backend: str = "auto",
    ):
        super().__init__()
        options = dict(power=power, pd=pd, pn=pn, aux_lr=aux_lr, aux_steps=aux_steps, aux_momentum=aux_momentum,
                       weight_decay=weight_decay, t=t)
        self.preset = make_preset(method, backend=backend, generator=generator,
                                  **{k: v for k, v in options.items() if v is not None})
        self.method = method
        default_hs = self.preset.half_space
        if half_space is None:
            half_space = bool(default_hs)
        elif check_bool("half_space", half_space) and default_hs is None:
            raise ValueError(f"half_space=True: method={method!r} has no half-space variant")
        self.half_space = half_space
        dh, do = self.preset.coefficients()
        self.hidden_coef = dh if hidden_coef is None else check_number("hidden_coef", hidden_coef, nonneg=True)
        self.output_coef = do if output_coef is None else check_number("output_coef", output_coef, nonneg=True)

        layers = collect_layers(model, include=include, exclude=exclude, output_layer=output_layer)
        # Plain attributes, not submodules: the model's weights must not become the regularizer's.
        self.__dict__["_model"] = model
        self._hidden: List[NeuronLayer] = [layer for layer in layers if not layer.is_output]
        self._output: Optional[NeuronLayer] = next((layer for layer in layers if layer.is_output), None)

        self.aux = nn.ParameterList()
        self._aux_index: List[Optional[int]] = []  # per layer of self.layers: index into self.aux, or None
        for layer in self.layers:
            a = self.preset.make_aux(neuron_matrix(layer.module).detach(), hidden=not layer.is_output)
            if a is None:
                self._aux_index.append(None)
                continue
            self._aux_index.append(len(self.aux))
            self.register_buffer(f"aux_momentum_{len(self.aux)}", torch.zeros_like(a))
            self.aux.append(nn.Parameter(a))

    # -- layers and auxiliaries --------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The regularized model."""
        return self.__dict__["_model"]

    @property
    def layers(self) -> List[NeuronLayer]:
        """The collected layers, hidden first, then the output layer (if any)."""
        return self._hidden + ([self._output] if self._output is not None else [])

    @property
    def aux_lr(self) -> float:
        """The auxiliaries' learning rate (settable: keep it equal to the network's)."""
        if "aux_lr" not in self.preset.options():
            raise AttributeError(f"method={self.method!r} has no learned auxiliaries")
        return self.preset.aux_lr

    @aux_lr.setter
    def aux_lr(self, value: float) -> None:
        if "aux_lr" not in self.preset.options():
            raise AttributeError(f"method={self.method!r} has no learned auxiliaries")
        self.preset.aux_lr = check_number("aux_lr", value, positive=True)

    def auxiliaries(self) -> Dict[str, nn.Parameter]:
        """Each layer's learned auxiliary (projection or pole) by layer name; empty for methods without."""
        return {layer.name: self.aux[k] for layer, k in zip(self.layers, self._aux_index) if k is not None}

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={getattr(self.preset, k)!r}" for k in self.preset.options())
        return (f"method={self.method!r}{', ' + opts if opts else ''}, half_space={self.half_space}, "
                f"hidden_coef={self.hidden_coef}, output_coef={self.output_coef}, hidden_layers={len(self._hidden)}, "
                f"output_layer={self._output.name if self._output is not None else None!r}")

    def _follow_model(self) -> None:
        """Move each auxiliary (and its momentum) to its layer's device and compute dtype."""
        for layer, k in zip(self.layers, self._aux_index):
            if k is None:
                continue
            w = layer.module.weight
            dtype, param = compute_dtype(w.dtype), self.aux[k]
            if param.dtype != dtype or param.device != w.device:
                param.data = param.data.to(device=w.device, dtype=dtype)
                name = f"aux_momentum_{k}"
                setattr(self, name, getattr(self, name).to(device=w.device, dtype=dtype))

    @torch.no_grad()
    def update_aux(self) -> None:
        """Take ``aux_steps`` momentum-SGD steps on every learned auxiliary with the weights fixed (called by
        ``forward`` in training mode; call it yourself when you evaluate in ``eval`` mode)."""
        self._follow_model()
        p = self.preset
        for layer, k in zip(self.layers, self._aux_index):
            if k is None:
                continue
            param, buf = self.aux[k], getattr(self, f"aux_momentum_{k}")
            hidden = not layer.is_output
            w = neuron_matrix(layer.module).detach().to(param.dtype)
            coef = self.hidden_coef if hidden else self.output_coef
            for _ in range(p.aux_steps):
                with torch.enable_grad():
                    x = param.detach().requires_grad_(True)
                    obj = p.aux_objective(w, x, hidden=hidden, half_space=self.half_space and hidden, coef=coef)
                    (grad,) = torch.autograd.grad(obj, x)
                buf.mul_(p.aux_momentum).add_(grad)
                param.sub_(p.aux_lr * buf)

    # -- values ------------------------------------------------------------------------------------------------

    def _aux_of(self, position: int) -> Optional[torch.Tensor]:
        k = self._aux_index[position]
        return None if k is None else self.aux[k].detach()

    def _hidden_values(self) -> torch.Tensor:
        ws = [neuron_matrix(layer.module) for layer in self._hidden]
        auxs = [self._aux_of(k) for k in range(len(self._hidden))]
        return self.preset.values(ws, auxs, self.half_space)

    def _output_value(self) -> torch.Tensor:
        w = neuron_matrix(self._output.module)
        return self.preset.value(w, self._aux_of(len(self._hidden)), hidden=False, half_space=False)

    def layer_values(self) -> Dict[str, torch.Tensor]:
        """Each collected layer's term before its coefficient (differentiable), by layer name."""
        self._follow_model()
        out: Dict[str, torch.Tensor] = {}
        if self._hidden:
            for layer, v in zip(self._hidden, self._hidden_values().unbind(0)):
                out[layer.name] = v
        if self._output is not None:
            out[self._output.name] = self._output_value()
        return out

    @torch.no_grad()
    def layer_energies(self) -> Dict[str, float]:
        """Each layer's value as a float (for logging; no auxiliary update)."""
        return {name: float(v.detach()) for name, v in self.layer_values().items()}

    def forward(self) -> torch.Tensor:
        """The total regularization loss (a scalar), differentiable with respect to the model's weights."""
        self._follow_model()
        if self.training and torch.is_grad_enabled() and len(self.aux) > 0:
            self.update_aux()
        total: Optional[torch.Tensor] = None
        if self._hidden and self.hidden_coef != 0:
            total = self.hidden_coef * self._hidden_values().sum()
        if self._output is not None and self.output_coef != 0:
            o = self.output_coef * self._output_value()
            total = o if total is None else total + o.to(total.dtype)
        if total is None:
            total = neuron_matrix(self.layers[0].module).sum() * 0
        return total
