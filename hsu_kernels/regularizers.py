"""Model-level regularizers of the hyperspherical-uniformity family (SPEC.md §7), on top of ``ops.py``.

Each variant is a plain function of one neuron matrix ``W: Tensor[N, D]`` and an option of
:class:`MHERegularizer` (``method=``), which collects a model's layers (``layers.py``), applies the variant to
every hidden layer (half-space when asked) and to the output layer (never half-space), and returns

    ``hidden_coef * sum_hidden value(W_l) + output_coef * value(W_out)``

to add to the task loss. Values are per-layer means, as in the reference code (wy1iu/MHE ``architecture.py``,
rmlin/CoMHE); where SPEC.md is silent, each function's docstring says how the reference code was read.

=====================  ==================================================================  ==================
``method``             per-layer value                                                     default coefs
=====================  ==================================================================  ==================
``"mhe"``              ``energy(W, power)`` mean over pairs (one ``energy_many`` call)     1, 10 (0.1, 1 a1/a2)
``"comhe_random"``     mean over ``pn`` fresh projections ``W P_k^T``, ``P_k ~ N(0,1)``    100, 10
``"comhe_angle"``      energy of ``W P^T``, ``P`` learned to preserve angles               1, 10
``"comhe_adversarial"``energy of ``W P^T``, ``P`` learned to maximize the energy           1, 10
``"mhs"``              ``-min d2`` (:func:`hsu_kernels.min_separation`)                    0.1, 1
``"mgd"``              ``-logdet(exp(-(2 - 2G)) + 1e-6 I)``, materializes ``N x N``         0.01, 0.1
``"mhp"``              ``-mean_i (2 - 2cos(v, u_i))^-1`` at a learned pole ``v``           1, 10
``"rmhp"``             as ``mhp`` at the worst of ``n_poles`` fresh random poles           1, 10
``"mhc"``              ``softmin_i d2(v, u_i)`` at a learned pole ``v``                    1, 10
``"uniformity"``       ``log mean_{i<j} exp(-t d2_ij)`` of the normalized neurons          1, 10
=====================  ==================================================================  ==================
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ._params import POWERS, check_matrix
from .layers import NeuronLayer, Selector, collect_layers, neuron_matrix
from .ops import align_loss, cross_energy, energy, energy_many, min_separation, uniformity_loss

METHODS = (
    "mhe",
    "comhe_random",
    "comhe_angle",
    "comhe_adversarial",
    "mhs",
    "mgd",
    "mhp",
    "rmhp",
    "mhc",
    "uniformity",
)

#: Default (hidden, output) coefficients per method. MHE's are the reference code's (its angular powers
#: a1/a2 use 0.1 and 1, see :func:`default_coefs`); CoMHE random projection's 100 is rmlin/CoMHE's
#: ``random_projection`` value; MHS and MGD's are SPEC §7's; the others (no reference code) follow MHE.
PRESET_COEFS = {
    "mhe": (1.0, 10.0),
    "comhe_random": (100.0, 10.0),
    "comhe_angle": (1.0, 10.0),
    "comhe_adversarial": (1.0, 10.0),
    "mhs": (0.1, 1.0),
    "mgd": (0.01, 0.1),
    "mhp": (1.0, 10.0),
    "rmhp": (1.0, 10.0),
    "mhc": (1.0, 10.0),
    "uniformity": (1.0, 10.0),
}

_REF_EPS = 1e-4  # the reference code's eps inside every norm


def default_coefs(method: str, power: str = "2"):
    """The (hidden, output) coefficients ``MHERegularizer`` uses when none are given.

    Args:
        method: one of :data:`METHODS`.
        power: the MHE power; the reference code scales ``a1``/``a2`` by 0.1 (hidden 0.1, output 1).

    Returns:
        ``(hidden_coef, output_coef)``.
    """
    hidden, output = PRESET_COEFS[method]
    if method == "mhe" and power in ("a1", "a2"):
        hidden, output = 0.1 * hidden, 0.1 * output
    return hidden, output


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_power(power) -> str:
    if not isinstance(power, str) or power not in POWERS:
        raise ValueError(f"power must be one of {sorted(POWERS)}, got {power!r}")
    return power


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_float(name: str, value, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or (nonneg and value < 0):
        cond = "> 0" if positive else ">= 0" if nonneg else "finite"
        raise ValueError(f"{name} must be finite and {cond}, got {value}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


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
# The variants as functions of one neuron matrix
# ----------------------------------------------------------------------------------------------------------


def mhe_loss(w: torch.Tensor, power: str = "2", half_space: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """MHE of one layer: the reference code's per-layer value, ``energy(W, power)`` averaged over pairs
    (over the ``N(2N-1)`` pairs of ``{u_i} u {-u_i}`` with ``half_space``), before its coefficient.

    Args:
        w: ``Tensor[N, D]`` (or ``Tensor[B, N, D]``) neuron matrix.
        power: ``"0","1","2","a0","a1","a2"`` (SPEC §3).
        half_space: the half-space variant.

    Returns:
        A scalar (``Tensor[B]`` batched).
    """
    return energy(w, power=_check_power(power), half_space=half_space, backend=backend)


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
    """Random-projection CoMHE of one layer (SPEC §7): the mean over ``pn`` projections of the energy of the
    projected neurons ``W P_k^T`` (``Tensor[N, pd]`` each), with a fresh ``P_k ~ N(0, 1)`` of shape
    ``[pd, D]`` on every call. All ``pn`` projections go through one batched ``energy([pn, N, pd])`` call.

    The reference code (rmlin/CoMHE ``random_projection``) uses s = 2 Riesz, half-space, pd = 40, pn = 20, and
    regularizes its first layer (D = 27 < pd) without projection; :class:`MHERegularizer` does the same for
    every layer with ``D <= pd``.

    Args:
        w: ``Tensor[N, D]`` neuron matrix.
        pd, pn: projected dimension and number of projections.
        power: the energy (SPEC §3), ``"2"`` in the reference code.
        half_space: the half-space energy of the projected neurons.
        generator: a seeded ``torch.Generator`` on ``w``'s device makes the draws reproducible.
        p: ``Tensor[pn, pd, D]`` projections to use instead of drawing (``pd``/``pn``/``generator`` ignored).

    Returns:
        A scalar: ``mean_k energy(W P_k^T)``.
    """
    check_matrix(w, "w", allow_batch=False)
    _check_generator(generator)
    if p is None:
        p = random_projections(w.shape[1], _check_int("pd", pd), _check_int("pn", pn), generator=generator,
                               device=w.device, dtype=w.dtype)
    elif not isinstance(p, torch.Tensor) or p.dim() != 3 or p.shape[2] != w.shape[1]:
        raise ValueError(f"p must be a Tensor[pn, pd, D={w.shape[1]}], got {getattr(p, 'shape', type(p).__name__)}")
    return energy(_project(w, p), power=_check_power(power), half_space=half_space, backend=backend).mean()


def _ref_cosines(x: torch.Tensor) -> torch.Tensor:
    """The reference code's ``cal``: ``x_i . x_j / (n_i n_j)``, ``n_i = sqrt(|x_i|^2 + 1e-4)``, full matrix."""
    n = torch.sqrt((x * x).sum(-1) + _REF_EPS)
    return (x @ x.transpose(-1, -2)) / (n[..., :, None] * n[..., None, :])


def comhe_angle_loss(p: torch.Tensor, w: torch.Tensor, weight_decay: float = 1e-3) -> torch.Tensor:
    """The angle-preserving CoMHE objective of a learned projection (SPEC §7):
    ``sum_k ||cos(W P_k^T) - cos(W)||_F + weight_decay * |P|^2``.

    ``cos(.)`` is the reference code's full ``N x N`` cosine matrix (diagonal included, norms with the
    1e-4 eps), so this materializes ``N x N``; N is one layer's width, so that is small. The reference code
    writes the decay as ``1e-3 * l2_regularizer(5e-4)`` (= 2.5e-7 |P|^2); SPEC §7 says ``1e-3 |P|^2``, our
    default; pass ``weight_decay=2.5e-7`` for the reference code's value.

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
    weight_decay = _check_float("weight_decay", weight_decay, nonneg=True)
    p3 = p if p.dim() == 3 else p.unsqueeze(0)
    diff = _ref_cosines(_project(w, p3)) - _ref_cosines(w)
    return torch.linalg.matrix_norm(diff).sum() + weight_decay * (p * p).sum()


def comhe_adversarial_objective(
    p: torch.Tensor, w: torch.Tensor, power: str = "2", weight_decay: float = 1e-3, *, backend: str = "auto"
) -> torch.Tensor:
    """What the adversarial CoMHE projection minimizes: ``-mean_k energy(W P_k^T) + weight_decay |P|^2``,
    i.e. ``P`` maximizes the (full-space) energy of the projected neurons, as rmlin/CoMHE
    ``adversarial_projection`` does (its projection's objective is the plain, not half-space, s = 2 energy;
    the network then minimizes the half-space energy under that projection).

    Args:
        p: ``Tensor[pd, D]`` or ``Tensor[pn, pd, D]``.
        w: ``Tensor[N, D]``.
        power: the energy.
        weight_decay: the weight of ``|P|^2`` (see :func:`comhe_angle_loss` for the reference code's value).

    Returns:
        A scalar, differentiable in ``p`` and ``w``.
    """
    check_matrix(w, "w", allow_batch=False)
    check_matrix(p, "p", min_rows=1)
    weight_decay = _check_float("weight_decay", weight_decay, nonneg=True)
    p3 = p if p.dim() == 3 else p.unsqueeze(0)
    e = energy(_project(w, p3), power=_check_power(power), backend=backend).mean()
    return -e + weight_decay * (p * p).sum()


def mhs_loss(w: torch.Tensor, half_space: bool = False) -> torch.Tensor:
    """MHS (maximum hyperspherical separation, SPEC §7): ``-min_{i<j} d2_ij``, tiled, with the subgradient to
    every pair attaining the minimum. See :func:`hsu_kernels.min_separation`.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        half_space: over the 2N points ``{u_i} u {-u_i}``.
    """
    return min_separation(w, half_space=half_space)


def mgd_loss(
    w: torch.Tensor, half_space: bool = False, *, t: float = 1.0, jitter: float = 1e-6, eps_norm: float = 1e-4
) -> torch.Tensor:
    """MGD (maximum Gram determinant, SPEC §7): ``-logdet(K + jitter I)`` with the Gaussian kernel
    ``K_ij = exp(-t (2 - 2 G_ij))`` of the normalized neurons (``G_ii = |w_i|^2 / (|w_i|^2 + eps_norm)``, so
    ``K_ii`` is ``exp(-2t eps_norm/(|w_i|^2 + eps_norm))``, essentially 1).

    **This one materializes the** ``N x N`` **(``2N x 2N`` half-space) matrix and factors it** (Cholesky,
    O(N^3)): a determinant couples every pair, so no tiled kernel applies. It is meant for layers
    (N <= a few thousand), not for 100,000-class heads.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        half_space: the determinant over ``{u_i} u {-u_i}``.
        t: kernel bandwidth (SPEC §7: 1, i.e. ``exp(-(2 - 2G))``).
        jitter: added to the diagonal (1e-6).
        eps_norm: as in :func:`hsu_kernels.energy`.

    Returns:
        A scalar (``Tensor[B]`` batched). Computed in float64 at least (the log-determinant of a nearly
        singular kernel loses everything in float32), returned in ``w``'s dtype.
    """
    check_matrix(w, "w", eps_norm=eps_norm)
    _check_bool("half_space", half_space)
    t = _check_float("t", t, positive=True)
    jitter = _check_float("jitter", jitter, positive=True)
    eps_norm = _check_float("eps_norm", eps_norm, nonneg=True)
    x = w.to(torch.float64)
    if half_space:
        x = torch.cat([x, -x], dim=-2)
    u = x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps_norm)
    k = torch.exp(-t * (2 - 2 * (u @ u.transpose(-1, -2))))
    k = k + jitter * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    chol = torch.linalg.cholesky(k)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (-logdet).to(w.dtype if w.dtype == torch.float64 else torch.float32)


def _pole_sets(w: torch.Tensor, v: torch.Tensor):
    """Poles as ``[K, 1, D]`` against ``K`` copies of ``w`` (``[K, N, D]``, expanded): one batched cross call."""
    k = v.shape[0]
    return v.unsqueeze(1), w.unsqueeze(0).expand(k, *w.shape).to(v.dtype)


def pole_potential(
    w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, s: float = 2.0, backend: str = "auto"
) -> torch.Tensor:
    """The Riesz potential of the neurons at each pole: ``mean_i (2 - 2cos(v_k, u_i))^(-s/2)`` (SPEC §7's
    MHP term, s = 2), over the N neurons, or the 2N points ``{u_i} u {-u_i}`` with ``half_space``.

    Computed by the fused ``cross_energy`` kernel (poles against neurons), so it never builds a matrix.

    Args:
        w: ``Tensor[N, D]`` neurons.
        v: ``Tensor[K, D]`` poles (normalized like the neurons, so any nonzero scale works).
        half_space: include the antipodes ``-u_i``.
        s: Riesz exponent (> 0).

    Returns:
        ``Tensor[K]``, differentiable in ``w`` and ``v``.
    """
    check_matrix(w, "w", allow_batch=False)
    _check_poles(v, w)
    x, y = _pole_sets(w, v)
    e = cross_energy(x, y, "riesz", s, half_space=_check_bool("half_space", half_space), reduction="sum",
                     backend=backend)
    return e / (w.shape[0] * (2 if half_space else 1))


def pole_softmin(
    w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, beta: float = 10.0, backend: str = "auto"
) -> torch.Tensor:
    """The soft distance from each pole to its nearest neuron (SPEC §7's MHC term):
    ``-log(mean_i exp(-beta d2(v_k, u_i))) / beta`` with ``beta = 10``, ``d2 = 2 - 2cos``.

    Computed by the fused ``cross_energy`` kernel (Gaussian kind, ``t = beta``).

    Args:
        w: ``Tensor[N, D]`` neurons.
        v: ``Tensor[K, D]`` poles.
        half_space: include the antipodes ``-u_i``.
        beta: the soft-min sharpness (> 0).

    Returns:
        ``Tensor[K]``, differentiable in ``w`` and ``v``.
    """
    check_matrix(w, "w", allow_batch=False)
    _check_poles(v, w)
    beta = _check_float("beta", beta, positive=True)
    x, y = _pole_sets(w, v)
    e = cross_energy(x, y, "gaussian", t=beta, half_space=_check_bool("half_space", half_space), reduction="sum",
                     backend=backend)
    return -torch.log(e / (w.shape[0] * (2 if half_space else 1))) / beta


def mhp_loss(w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """MHP (maximum hyperspherical polarization) for the network: ``-min_k pole_potential(w, v)_k``.

    Our reading of the uniformity paper (SPEC §7 gives only the term): polarization is
    ``max_W min_v sum_i |v - u_i|^-2``; the poles descend the potential (they find the least covered
    directions, see :class:`MHERegularizer`), and the network maximizes the potential there, so its loss is
    the negated potential at the worst pole.

    Args:
        w: ``Tensor[N, D]``; v: ``Tensor[K, D]`` poles.

    Returns:
        A scalar.
    """
    return -pole_potential(w, v, half_space, backend=backend).min()


def rmhp_loss(
    w: torch.Tensor, n_poles: int = 64, half_space: bool = False, *, generator: Optional[torch.Generator] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """R-MHP (randomized MHP): :func:`mhp_loss` at ``n_poles`` fresh uniformly random poles instead of learned
    ones (our reading of the "R-" variant: the inner minimization over the pole replaced by the minimum over
    random candidates, so there is no pole state to train).

    Args:
        w: ``Tensor[N, D]``.
        n_poles: random candidate poles per call.
        generator: a seeded ``torch.Generator`` on ``w``'s device makes the draws reproducible.

    Returns:
        A scalar.
    """
    check_matrix(w, "w", allow_batch=False)
    _check_generator(generator)
    v = torch.randn(_check_int("n_poles", n_poles), w.shape[1], generator=generator, device=w.device,
                    dtype=torch.float64 if w.dtype == torch.float64 else torch.float32)
    return mhp_loss(w, v, half_space, backend=backend)


def mhc_loss(w: torch.Tensor, v: torch.Tensor, half_space: bool = False, *, beta: float = 10.0,
             backend: str = "auto") -> torch.Tensor:
    """MHC (minimum hyperspherical covering) for the network: ``max_k pole_softmin(w, v)_k``.

    Our reading: the covering radius is ``max_v min_i d(v, u_i)``; the poles ascend the soft distance to
    their nearest neuron (they find the largest holes), and the network minimizes that distance.

    Args:
        w: ``Tensor[N, D]``; v: ``Tensor[K, D]`` poles; beta: soft-min sharpness (10).

    Returns:
        A scalar.
    """
    return pole_softmin(w, v, half_space, beta=beta, backend=backend).max()


def neuron_uniformity(w: torch.Tensor, t: float = 2.0, half_space: bool = False, *,
                      backend: str = "auto") -> torch.Tensor:
    """The contrastive uniformity loss applied to a layer's normalized neurons:
    ``log mean_{i<j} exp(-t d2_ij)`` with ``d2 = 2 - 2 g_ij`` (SPEC §4), the ``"uniformity"`` method.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        t: temperature (> 0).
        half_space: over ``{u_i} u {-u_i}``.
    """
    return torch.log(energy(w, "gaussian", t=t, half_space=half_space, backend=backend))


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
    lam = _check_float("lam", lam, nonneg=True)
    return align_loss(x, y, alpha) + lam * (uniformity_loss(x, t) + uniformity_loss(y, t)) / 2


# ----------------------------------------------------------------------------------------------------------
# The model-level regularizer
# ----------------------------------------------------------------------------------------------------------


class MHERegularizer(nn.Module):
    """The hyperspherical-uniformity regularizer of a whole model; calling it returns the loss to add.

    ``reg = MHERegularizer(model)`` then ``loss = task_loss + reg()`` in the training loop. The value is
    ``hidden_coef * sum_l value(W_l) + output_coef * value(W_out)`` over the collected layers (SPEC §1, §7),
    ``value`` by ``method`` (see the module docstring). The output layer is never half-space. With
    ``method="mhe"`` all hidden layers go through one ``energy_many`` call; CoMHE's ``pn`` projections of a
    layer go through one batched ``energy`` call.

    Learned auxiliaries (CoMHE projections, MHP/MHC poles) are parameters of this module, not of the model,
    and are trained by the module itself: each call in training mode with gradients enabled first takes
    ``aux_steps`` SGD steps (learning rate ``aux_lr``) on them with the weights held fixed, as the reference
    code's ``updatep_op`` runs before the network update, then evaluates the network's loss with them fixed.
    (The reference code also takes one look-ahead step inside the network's graph; we do not.) Call
    ``reg.eval()`` to evaluate without updating them.

    Args:
        model: the network.
        power: ``"0","1","2","a0","a1","a2"``: the energy of ``mhe`` and the CoMHE methods (SPEC §3).
        half_space: half-space values for the hidden layers.
        hidden_coef: coefficient of the hidden layers' sum; ``None``: :func:`default_coefs`.
        output_coef: coefficient of the output layer; ``None``: :func:`default_coefs`.
        method: one of :data:`METHODS`.
        include, exclude, output_layer: which layers, see :func:`hsu_kernels.layers.collect_layers`
            (``output_layer="auto"``: the last ``nn.Linear``; the reference code's CIFAR network has a 1x1
            convolution there, so name it).
        pd: projected dimension of the CoMHE methods (default 40 for ``comhe_random``, 30 for the learned
            ones, as in the reference code); layers with ``D <= pd`` are regularized without projection.
        pn: projections per layer (20 random, 1 learned).
        generator: ``torch.Generator`` for every random draw (projections, initial projections and poles,
            R-MHP poles), on the weights' device; seed it for reproducible values. ``None``: the global RNG.
            Learned projections/poles are created on the weights' device at construction: build the
            regularizer after ``model.to(device)``, or move it too (``reg.to(device)``).
        aux_lr: learning rate of the auxiliaries' SGD (0.1 for projections as the reference code's base
            learning rate; also for poles).
        aux_steps: SGD steps per call (1 angle-preserving, 10 adversarial, 1 poles; the reference code's).
        weight_decay: the projections' ``|P|^2`` weight (SPEC's 1e-3).
        n_poles: poles per layer (``mhp``/``mhc``: learned, default 1; ``rmhp``: random, default 64).
        t: temperature of ``uniformity``.
        backend: passed to every kernel call.

    Raises:
        ValueError/TypeError: naming the bad argument; see also ``collect_layers``.
    """

    def __init__(
        self,
        model: nn.Module,
        power: str = "2",
        half_space: bool = True,
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
        aux_lr: float = 0.1,
        aux_steps: Optional[int] = None,
        weight_decay: float = 1e-3,
        n_poles: Optional[int] = None,
        t: float = 2.0,
        backend: str = "auto",
    ):
        super().__init__()
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.method = method
        self.power = _check_power(power)
        self.half_space = _check_bool("half_space", half_space)
        dh, do = default_coefs(method, power)
        self.hidden_coef = dh if hidden_coef is None else _check_float("hidden_coef", hidden_coef, nonneg=True)
        self.output_coef = do if output_coef is None else _check_float("output_coef", output_coef, nonneg=True)
        learned_proj = method in ("comhe_angle", "comhe_adversarial")
        self.pd = _check_int("pd", pd if pd is not None else (30 if learned_proj else 40))
        self.pn = _check_int("pn", pn if pn is not None else (1 if learned_proj else 20))
        self.generator = _check_generator(generator)
        self.aux_lr = _check_float("aux_lr", aux_lr, positive=True)
        self.aux_steps = _check_int("aux_steps", aux_steps if aux_steps is not None
                                    else (10 if method == "comhe_adversarial" else 1), minimum=0)
        self.weight_decay = _check_float("weight_decay", weight_decay, nonneg=True)
        self.n_poles = _check_int("n_poles", n_poles if n_poles is not None else (64 if method == "rmhp" else 1))
        self.t = _check_float("t", t, positive=True)
        self.backend = backend

        layers = collect_layers(model, include=include, exclude=exclude, output_layer=output_layer)
        # Plain lists: the model's layers must not become submodules (their weights are the model's).
        self._hidden: List[NeuronLayer] = [layer for layer in layers if not layer.is_output]
        self._output: Optional[NeuronLayer] = next((layer for layer in layers if layer.is_output), None)

        ref = neuron_matrix(layers[0].module)
        self.aux = nn.ParameterList()
        self._aux_index: Dict[int, int] = {}  # hidden layer position -> index into self.aux
        if learned_proj:
            for k, layer in enumerate(self._hidden):
                d = neuron_matrix(layer.module).shape[1]
                if d > self.pd:
                    self._aux_index[k] = len(self.aux)
                    self.aux.append(nn.Parameter(self._randn(self.pn, self.pd, d, like=ref)))
        elif method in ("mhp", "mhc"):
            for k, layer in enumerate(self._all_layers()):
                d = neuron_matrix(layer.module).shape[1]
                self._aux_index[k] = len(self.aux)
                v = self._randn(self.n_poles, d, like=ref)
                self.aux.append(nn.Parameter(v / v.norm(dim=1, keepdim=True)))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _randn(self, *shape, like: torch.Tensor) -> torch.Tensor:
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.randn(*shape, generator=self.generator, device=like.device, dtype=dtype)

    def _all_layers(self) -> List[NeuronLayer]:
        return self._hidden + ([self._output] if self._output is not None else [])

    @property
    def layers(self) -> List[NeuronLayer]:
        """The collected layers, hidden first, then the output layer (if any)."""
        return self._all_layers()

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, power={self.power!r}, half_space={self.half_space}, "
                f"hidden_coef={self.hidden_coef}, output_coef={self.output_coef}, hidden_layers={len(self._hidden)}, "
                f"output_layer={self._output.name if self._output is not None else None!r}")

    # -- auxiliaries -------------------------------------------------------------------------------------------

    def _aux_objective(self, k: int, w: torch.Tensor, param: torch.Tensor, hidden: bool) -> torch.Tensor:
        if self.method == "comhe_angle":
            return comhe_angle_loss(param, w, self.weight_decay)
        if self.method == "comhe_adversarial":
            return comhe_adversarial_objective(param, w, self.power, self.weight_decay, backend=self.backend)
        hs = self.half_space and hidden
        if self.method == "mhp":  # poles descend the potential
            return pole_potential(w, param, hs, backend=self.backend).sum()
        return -pole_softmin(w, param, hs, backend=self.backend).sum()  # mhc: poles ascend the distance

    @torch.no_grad()
    def update_aux(self) -> None:
        """Take ``aux_steps`` SGD steps on the learned projections/poles with the weights fixed (called by
        ``forward`` in training mode; call it yourself when you evaluate in ``eval`` mode)."""
        if len(self.aux) == 0:
            return
        layers = self._hidden if self.method.startswith("comhe") else self._all_layers()
        for k, layer in enumerate(layers):
            if k not in self._aux_index:
                continue
            param = self.aux[self._aux_index[k]]
            w = neuron_matrix(layer.module).detach().to(param.dtype)
            for _ in range(self.aux_steps):
                with torch.enable_grad():
                    p = param.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self._aux_objective(k, w, p, not layer.is_output), p)
                param.sub_(self.aux_lr * grad)
                if self.method in ("mhp", "mhc"):
                    param.div_(param.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # -- values ------------------------------------------------------------------------------------------------

    def _mean_energies(self, ws: List[torch.Tensor], half_space: bool) -> torch.Tensor:
        if self.method == "uniformity":
            return torch.log(energy_many(ws, "gaussian", t=self.t, half_space=half_space, backend=self.backend))
        return energy_many(ws, power=self.power, half_space=half_space, backend=self.backend)

    def _hidden_values(self, ws: List[torch.Tensor]) -> torch.Tensor:
        hs, m = self.half_space, self.method
        if m in ("mhe", "uniformity"):
            return self._mean_energies(ws, hs)
        if m.startswith("comhe"):
            vals: List[Optional[torch.Tensor]] = [None] * len(ws)
            plain = [k for k, w in enumerate(ws) if w.shape[1] <= self.pd]
            if plain:
                e = self._mean_energies([ws[k] for k in plain], hs)
                for j, k in enumerate(plain):
                    vals[k] = e[j]
            for k, w in enumerate(ws):
                if vals[k] is not None:
                    continue
                if m == "comhe_random":
                    vals[k] = comhe_random_loss(w, self.pd, self.pn, self.power, hs, generator=self.generator,
                                                backend=self.backend)
                else:
                    p = self.aux[self._aux_index[k]].detach().to(w.dtype)
                    vals[k] = energy(_project(w, p), power=self.power, half_space=hs, backend=self.backend).mean()
            return torch.stack(vals)
        return torch.stack([self._layer_value(k, w, hs) for k, w in enumerate(ws)])

    def _layer_value(self, k: int, w: torch.Tensor, hs: bool) -> torch.Tensor:
        """One layer's value for the per-layer methods (and every output layer)."""
        m = self.method
        if m == "mhs":
            return mhs_loss(w, hs)
        if m == "mgd":
            return mgd_loss(w, hs)
        if m == "rmhp":
            return rmhp_loss(w, self.n_poles, hs, generator=self.generator, backend=self.backend)
        if m in ("mhp", "mhc"):
            v = self.aux[self._aux_index[k]].detach()
            return mhp_loss(w, v, hs, backend=self.backend) if m == "mhp" else mhc_loss(w, v, hs,
                                                                                     backend=self.backend)
        if m == "uniformity":
            return neuron_uniformity(w, self.t, hs, backend=self.backend)
        return energy(w, power=self.power, half_space=hs, backend=self.backend)  # mhe and every CoMHE output

    def layer_values(self) -> Dict[str, torch.Tensor]:
        """Each collected layer's value before its coefficient (differentiable), by layer name."""
        ws = [neuron_matrix(layer.module) for layer in self._hidden]
        out: Dict[str, torch.Tensor] = {}
        if ws:
            for layer, v in zip(self._hidden, self._hidden_values(ws).unbind(0)):
                out[layer.name] = v
        if self._output is not None:
            k = len(self._hidden)
            out[self._output.name] = self._layer_value(k, neuron_matrix(self._output.module), False)
        return out

    @torch.no_grad()
    def layer_energies(self) -> Dict[str, float]:
        """Each layer's value as a float (for logging; no auxiliary update)."""
        return {name: float(v.detach()) for name, v in self.layer_values().items()}

    def forward(self) -> torch.Tensor:
        """The total regularization loss (a scalar), differentiable with respect to the model's weights."""
        if self.training and torch.is_grad_enabled() and len(self.aux) > 0 and self.aux_steps > 0:
            self.update_aux()
        total: Optional[torch.Tensor] = None
        if self._hidden and self.hidden_coef != 0:
            ws = [neuron_matrix(layer.module) for layer in self._hidden]
            total = self.hidden_coef * self._hidden_values(ws).sum()
        if self._output is not None and self.output_coef != 0:
            k = len(self._hidden)
            o = self.output_coef * self._layer_value(k, neuron_matrix(self._output.module), False)
            total = o if total is None else total + o.to(total.dtype)
        if total is None:
            total = neuron_matrix(self._all_layers()[0].module).sum() * 0
        return total
