"""The table of energy kinds: one record per kind, the only place a kind is defined in Python.

Every kind is a per-pair term ``phi(x)`` of one variable ``x``:

- distance kinds: ``x = d2``, the squared distance of the two (normalized or raw) rows;
- angle kinds: ``x = a = theta / pi + eps_ang``, the angle of two normalized rows over pi plus ``eps_ang``.

A record gives ``phi(x)``, ``phi'(x)`` and ``x phi'(x)`` (the last two written in terms of ``phi``): the
careful paths scale the derivative by the pair's distance before forming it, because ``phi'(x)`` alone
overflows for close pairs whose term and gradient do not. The torch paths (the reference, the tiled
backend, the double backward, the closed-form self pairs) take the formulas from here. The compiled kernels
have their own copy of each formula (``csrc/hsu_pair.h`` for C++ and CUDA, ``hsu_kernels/triton/kernels.py``
for Triton), selected by :attr:`Kind.code`; tests check that they use this table's codes and reject any
other code.

Adding a kind: a record here, a row of ``HSU_KINDS`` in ``csrc/hsu_kinds.h`` and its formula in
``csrc/hsu_pair.h`` (C++ and CUDA), and a code constant and branch of ``_phi_x`` in
``hsu_kernels/triton/kernels.py``; see docs/development.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ["Kind", "KIND_TABLE", "KINDS", "KIND_CODE", "kind_by_name", "kind_by_code", "kinds_doc"]

Phi = Callable[[torch.Tensor, float, float], torch.Tensor]
DPhi = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


@dataclass(frozen=True)
class Kind:
    """One energy kind.

    Attributes:
        name: the ``kind=`` string of the public API.
        code: the integer the compiled ops take (C++, CUDA and Triton select the kind by it).
        angle: the term is a function of the angle (``x = theta / pi + eps_ang``) and needs ``normalize=True``;
            otherwise of the squared distance ``x = d2``.
        power: ``s`` is an exponent and must be > 0; the kernels specialize ``x^(-p)`` for
            ``p = s * power_scale`` in {1/2, 1, 2}.
        power_scale: see ``power`` (1/2 for Riesz, whose term is ``d2^(-s/2)``).
        logsum: the energy is reduced as a log-sum-exp (the backends return ``log(scale * sum phi)``), so it
            stays finite at any feature scale; ``log_phi`` is then ``log phi(x)``.
        phi: ``phi(x, s, t)``.
        dphi: ``phi'(x)`` as ``dphi(x, phi(x), s, t)``.
        x_dphi: ``x phi'(x)`` as ``x_dphi(x, phi(x), s, t)``.
        formula: the term as the docstrings write it (of ``d2``, or of ``a`` for the angle kinds).
    """

    name: str
    code: int
    angle: bool
    power: bool
    power_scale: float
    logsum: bool
    phi: Phi
    dphi: DPhi
    x_dphi: DPhi
    formula: str
    log_phi: Optional[Phi] = None


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


KIND_TABLE: Tuple[Kind, ...] = (
    Kind("riesz", 0, angle=False, power=True, power_scale=0.5, logsum=False,
         phi=lambda x, s, t: x.pow(-s / 2),
         dphi=lambda x, f, s, t: (-s / 2) * f / x,
         x_dphi=lambda x, f, s, t: (-s / 2) * f,
         formula="``d2^(-s/2)`` (``|u_i - u_j|^-s``), any real ``s > 0``"),
    Kind("log", 1, angle=False, power=False, power_scale=0.0, logsum=False,
         phi=lambda x, s, t: -torch.log(x),
         dphi=lambda x, f, s, t: -1 / x,
         x_dphi=lambda x, f, s, t: -_ones(x),
         formula="``-log d2``"),
    Kind("angular", 2, angle=True, power=True, power_scale=1.0, logsum=False,
         phi=lambda x, s, t: x.pow(-s),
         dphi=lambda x, f, s, t: -s * f / x,
         x_dphi=lambda x, f, s, t: -s * f,
         formula="``a^(-s)``, ``s > 0``"),
    Kind("angular_log", 3, angle=True, power=False, power_scale=0.0, logsum=False,
         phi=lambda x, s, t: -torch.log(x),
         dphi=lambda x, f, s, t: -1 / x,
         x_dphi=lambda x, f, s, t: -_ones(x),
         formula="``-log a``"),
    Kind("gaussian", 4, angle=False, power=False, power_scale=0.0, logsum=True,
         phi=lambda x, s, t: torch.exp(-t * x),
         dphi=lambda x, f, s, t: -t * f,
         x_dphi=lambda x, f, s, t: -t * x * f,
         formula="``exp(-t d2)``, reduced as a log-sum-exp (``uniformity_loss`` is the log of its mean)",
         log_phi=lambda x, s, t: -t * x),
)

KINDS: Tuple[str, ...] = tuple(k.name for k in KIND_TABLE)
KIND_CODE: Dict[str, int] = {k.name: k.code for k in KIND_TABLE}
_BY_NAME: Dict[str, Kind] = {k.name: k for k in KIND_TABLE}
_BY_CODE: Dict[int, Kind] = {k.code: k for k in KIND_TABLE}
assert all((k.log_phi is not None) == k.logsum for k in KIND_TABLE), "log_phi is given exactly for logsum kinds"
assert sorted(_BY_CODE) == list(range(len(KIND_TABLE))), "kind codes must be 0, 1, ..., len(KIND_TABLE) - 1"


def kind_by_name(name: str) -> Kind:
    """The record of ``name``; ``ValueError`` naming ``kind`` and the known kinds otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {list(KINDS)}, got {name!r}") from None


def kind_by_code(code: int) -> Kind:
    """The record of the kind code ``code``; ``ValueError`` otherwise (the compiled ops raise the same)."""
    try:
        return _BY_CODE[int(code)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown kind code {code!r} (known: {sorted(_BY_CODE)})") from None


def kinds_doc(indent: int = 12) -> str:
    """The kinds as a reST list for the docstrings, one line per kind, from the table."""
    pad = " " * indent
    return "".join(f"{pad}- ``{k.name}``: {k.formula}\n" for k in KIND_TABLE)
