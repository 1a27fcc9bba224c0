"""Argument parsing and validation shared by every public function.

Every check runs before any work and raises ``ValueError``/``TypeError`` naming the argument, so a bad
call never reaches a kernel. The kinds themselves are defined in :mod:`hsu_kernels.kinds`.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .kinds import Kind, kind_by_name

REDUCTIONS = ("mean", "sum")
BACKENDS = ("auto", "reference", "torch", "cpu", "cuda", "triton")
PRECISIONS = ("ieee", "tf32")

#: The original code's ``power`` strings and the (kind, s) they stand for.
POWERS = {
    "0": ("log", 0.0),
    "1": ("riesz", 1.0),
    "2": ("riesz", 2.0),
    "a0": ("angular_log", 0.0),
    "a1": ("angular", 1.0),
    "a2": ("angular", 2.0),
}

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: With eps_norm = 0, a row whose largest entry is below this has no direction the kernels can form.
_TINY_ROW = 2.0**-1000


@dataclass(frozen=True)
class EnergyParams:
    """The validated parameters of one energy (everything but the tensor)."""

    kind: str
    s: float
    t: float
    eps_norm: float
    eps_ang: float
    half_space: bool
    normalize: bool

    @property
    def spec(self) -> Kind:
        """The kind's record in :data:`hsu_kernels.kinds.KIND_TABLE`."""
        return kind_by_name(self.kind)

    @property
    def code(self) -> int:
        """The kind's code in the compiled ops."""
        return self.spec.code

    def as_args(self) -> Tuple[int, float, float, float, float, bool, bool]:
        """Positional arguments of the compiled ops, in schema order."""
        return (self.code, self.s, self.t, self.eps_norm, self.eps_ang, self.half_space, self.normalize)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pair term of the kind at ``x`` (``d2``, or ``theta / pi + eps_ang`` for angle kinds)."""
        return self.spec.phi(x, self.s, self.t)

    def log_phi(self, x: torch.Tensor) -> torch.Tensor:
        """``log phi(x)``, for the kinds reduced as a log-sum (``spec.logsum``)."""
        if self.spec.log_phi is None:
            raise ValueError(f"kind={self.kind!r} is not reduced as a log-sum")
        return self.spec.log_phi(x, self.s, self.t)

    def dphi(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``phi'(x)``, given ``f = phi(x)``."""
        return self.spec.dphi(x, f, self.s, self.t)

    def x_dphi(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``x phi'(x)``, given ``f = phi(x)`` (finite where ``phi'`` alone overflows for the singular kinds)."""
        return self.spec.x_dphi(x, f, self.s, self.t)


def check_number(name: str, value, *, positive: bool = False, nonneg: bool = False) -> float:
    """``value`` as a finite float (``positive``: at least the smallest normal float64; ``nonneg``: >= 0);
    ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not -math.inf < value < math.inf:  # not math.isfinite: under torch.compile the value may be symbolic
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if positive and value < sys.float_info.min:
        # a subnormal exponent or scale: every term rounds to its value at 0 (s = 1e-320 gave an energy of
        # exactly 1), and the float32 kernels would flush it to 0
        raise ValueError(f"{name} must be at least the smallest normal float64, {sys.float_info.min!r}, "
                         f"got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools refused); ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_backend(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


def check_precision(precision: Optional[str]) -> Optional[str]:
    """``precision``: None, ``"ieee"`` or ``"tf32"`` (the Triton backend's float32 products)."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'ieee', 'tf32' or None, got {precision!r}")
    return precision


def check_power(power) -> str:
    """``power`` as one of the :data:`POWERS` strings: the ints 0, 1, 2 stand for ``"0"``, ``"1"``, ``"2"``
    (as users write ``power=2``); anything else (bools, other numbers, other strings) is a ``ValueError``
    naming ``power`` and the allowed values."""
    if isinstance(power, numbers.Integral) and not isinstance(power, bool) and str(int(power)) in POWERS:
        return str(int(power))
    if not isinstance(power, str) or power not in POWERS:
        raise ValueError(f"power must be one of {sorted(POWERS)} (or the int 0, 1 or 2), got {power!r}")
    return power


def make_params(
    kind: str = "riesz",
    s: float = 1.0,
    *,
    half_space: bool = False,
    normalize: bool = True,
    eps_norm: float = 1e-4,
    eps_ang: float = 1e-4,
    t: float = 2.0,
    power: Optional[str] = None,
) -> EnergyParams:
    """Validate the scalar arguments of an energy and resolve ``power`` into ``kind``/``s``."""
    if power is not None:
        kind, s = POWERS[check_power(power)]
    spec = kind_by_name(kind)
    s = check_number("s", s, positive=spec.power)
    t = check_number("t", t, positive=True)
    eps_norm = check_number("eps_norm", eps_norm, nonneg=True)
    eps_ang = check_number("eps_ang", eps_ang, nonneg=True)
    check_bool("half_space", half_space)
    check_bool("normalize", normalize)
    if spec.angle and not normalize:
        raise ValueError(f"kind={kind!r} measures angles and needs normalize=True")
    return EnergyParams(kind, s, t, eps_norm, eps_ang, half_space, normalize)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


def check_matrix(
    w, name: str = "w", *, allow_batch: bool = True, min_rows: int = 2, eps_norm: Optional[float] = None
) -> torch.Tensor:
    """Check a ``[N, D]`` (or ``[B, N, D]``) floating tensor and return it as given.

    Args:
        w: the tensor to check.
        name: the argument's name, used in every message.
        allow_batch: accept a leading batch dimension.
        min_rows: the smallest N allowed (2 for a self energy, 1 for one side of a cross energy).
        eps_norm: when exactly 0, zero rows are an error (they have no direction), and so are rows whose
            largest entry is below 2^-1000 (their 1/|w|, and their gradient, overflows float64).
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if torch.jit.is_tracing():
        # a trace records the Python-side sizes of this call (the mean's pair count, the tiling) as constants:
        # traced at N = 5, called at N = 9, the mean came out 3.6x too large
        raise RuntimeError(f"hsu_kernels does not support torch.jit.trace ({name} of shape {tuple(w.shape)}): the "
                           "trace would fix this call's sizes (the pair count of the mean, the tiling) and give "
                           "wrong results at other sizes; use torch.compile(..., dynamic=True) or call eagerly")
    if w.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor, got a nested tensor")
    if w.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {w.layout}")
    ranks = "2 ([N, D]) or 3 ([B, N, D])" if allow_batch else "2 ([N, D])"
    if w.dim() not in ((2, 3) if allow_batch else (2,)):
        raise ValueError(f"{name} must have rank {ranks}, got shape {tuple(w.shape)}")
    if w.is_complex() or not w.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor (float32, float64, float16, bfloat16), got {w.dtype}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {w.dtype}")
    n, d = w.shape[-2], w.shape[-1]
    if n < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows (N >= {min_rows}), got N = {n}")
    if d < 1:
        raise ValueError(f"{name} must have at least one column (D >= 1), got D = {d}")
    if w.dim() == 3 and w.shape[0] < 1:
        raise ValueError(f"{name} has an empty batch dimension (B = 0)")
    if w.device.type == "meta" or _is_fake(w):
        return w
    tiny = (f"{name} has a zero row (or one whose largest entry is below 2^-1000), which has no direction "
            "when eps_norm=0")
    if torch.compiler.is_compiling():
        # A compiled graph cannot raise from Python on data; these asserts raise when the graph runs.
        torch._assert_async(torch.isfinite(w).all(), f"{name} contains NaN or Inf")
        if eps_norm == 0:
            torch._assert_async((w.abs().amax(dim=-1).double() >= _TINY_ROW).all(), tiny)
        return w
    # Under torch.func transforms the checks look at the plain tensor underneath (vmap cannot branch on
    # a batched tensor's data).
    data = _functorch_unwrapped(w.detach())
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    # compared in float64: 2^-1000 is 0 in float32
    if eps_norm == 0 and bool((data.abs().amax(dim=-1).double() < _TINY_ROW).any()):
        raise ValueError(tiny)
    return w


def _functorch_unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under any torch.func wrappers (vmap's batched tensors, grad's tracking tensors)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def is_batched_by_vmap(t: torch.Tensor) -> bool:
    """True when ``t`` is seen through ``torch.func.vmap`` (its logical shape hides a batch dimension)."""
    return torch._C._functorch.is_batchedtensor(t) if not torch.compiler.is_compiling() else False


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor

        return isinstance(t, FakeTensor)
    except ImportError:  # pragma: no cover
        return False


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype every backend computes and returns in: float64 if any of ``dtypes`` is float64, else float32
    (half inputs are computed in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def num_pairs(n: int, half_space: bool) -> int:
    """Unordered pairs the mean divides by: N(N-1)/2, or N(2N-1) for the 2N half-space points."""
    return n * (2 * n - 1) if half_space else n * (n - 1) // 2
