"""Public functions and the one dispatch point that picks a backend.

Backends (``backend=``):

============  ==========================================================================================
``reference`` plain PyTorch that materializes the N x N matrix (``reference.py``): the oracle, O(N^2) memory
``torch``     tiled PyTorch (``tiled.py``): any device, O(N * block) memory, energy + gradient in one pass
``cpu``       the C++ kernel (``csrc/cpu/``), registered as ``torch.ops.hsu.energy_grad``
``cuda``      the CUDA C++ kernel (``csrc/cuda/``), same op for the CUDA dispatch key
``triton``    the Triton kernels (``hsu_kernels/triton/``); CPU tensors under ``TRITON_INTERPRET=1``
``auto``      the fastest available for the tensor's device and size; never the reference unless nothing
              else can run
============  ==========================================================================================
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Tuple

import torch

from . import _autograd, _ext, reference
from ._autograd import autocast_off
from ._params import (
    BACKENDS,
    EnergyParams,
    check_backend,
    check_matrix,
    check_precision,
    check_reduction,
    compute_dtype,
    is_batched_by_vmap,
    make_params,
    num_pairs,
)
from .kinds import kinds_doc

#: On CUDA tensors, ``auto`` uses the CUDA C++ kernel up to this D and Triton above it (where both exist).
CUDA_SMALL_D = 32


# The arguments whose description every public function shares, written once: ``@name@`` lines of a docstring
# are replaced by these (see _shared_args).
_SHARED_ARGS = {
    "@backend@": """
        backend: where to compute; ``"auto"`` (default) or a backend name:

            - ``"auto"``: the fastest backend available for the tensor's device, D and dtype, never
              ``"reference"`` unless nothing else can run. CPU tensors: ``"cpu"`` when the compiled
              extension is loaded, else ``"torch"``. CUDA tensors: for D <= 32 ``"cuda"``, then ``"triton"``,
              then ``"torch"``; for D > 32 ``"triton"``, then ``"cuda"``, then ``"torch"``; never ``"triton"``
              for float64. Other devices: ``"torch"``.
            - ``"reference"``: plain PyTorch that materializes the N x N matrix (``hsu_kernels/reference.py``),
              the float64 oracle of the tests; O(N^2) memory.
            - ``"torch"``: tiled PyTorch, any device, O(N * block) memory.
            - ``"cpu"``: the C++ kernel, CPU tensors.
            - ``"cuda"``: the CUDA C++ kernel, CUDA tensors (an extension built with CUDA).
            - ``"triton"``: the Triton kernels, CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``); needs
              triton; float32 and half types only.

            A backend that cannot run here raises ``ValueError``; :func:`available_backends` lists those that can.
""",
    "@geometry@": """
        normalize: project rows onto the sphere first (default). With ``False`` the rows are used as given and
            ``d2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clamped at 0 (not allowed for angular kinds).
        eps_norm: added to ``|w_i|^2`` inside the square root of the normalization (default 1e-4, the original
            code's value); 0 gives exact unit rows, and then a zero row is an error.
        eps_ang: the angular kinds' offset ``acos(g)/pi + eps_ang`` (default 1e-4).
        t: the Gaussian kind's temperature (> 0, default 2).
""",
    "@kind@": f"""
        kind: the per-pair term ``phi``, of ``d2 = 2 - 2g`` (``|x_i - x_j|^2`` with ``normalize=False``) or, for
            the angle kinds, of ``a = acos(g)/pi + eps_ang``; one of :data:`hsu_kernels.KINDS` (default
            ``"riesz"``):

{kinds_doc(12)}""",
    "@power@": """
        power: the original code's shorthand: ``"0"`` log, ``"1"`` Riesz s = 1, ``"2"`` Riesz s = 2, ``"a0"``
            angular log, ``"a1"`` angular s = 1, ``"a2"`` angular s = 2; overrides ``kind`` and ``s``. ``None``
            (default): ``kind`` and ``s`` as given.
""",
    "@precision@": """
        precision: the float32 products of the Triton backend (the other backends always compute exactly and
            ignore it): ``"ieee"`` (exact), ``"tf32"`` (tensor cores, ~5e-4 relative error in each cosine), or
            ``None``: ``"ieee"`` for D < 128; for D >= 128 ``"tf32"`` only if the user opted in with
            ``torch.set_float32_matmul_precision("high")`` (or ``"medium"``), else ``"ieee"``.

""",
}


def _shared_args(fn):
    """Fills the ``@kind@``, ``@geometry@``, ``@backend@``, ``@power@`` and ``@precision@`` lines of ``fn``'s
    docstring."""
    if fn.__doc__:  # None under python -OO
        for marker, text in _SHARED_ARGS.items():
            fn.__doc__ = fn.__doc__.replace("        " + marker + "\n", text[1:])  # text[0] is a newline
    return fn


def _triton_module():
    """The Triton backend module, or None when Triton is not installed."""
    try:
        from . import triton as hsu_triton
    except ImportError:
        return None
    return hsu_triton if hsu_triton.available() else None


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _no_gpu_reason() -> str:
    """Why CUDA tensors cannot be computed on here, or "" when they can."""
    if torch.cuda.is_available():
        return ""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch.cuda.is_available() is False: this torch ({torch.__version__}) is not a CUDA build"
    return "torch.cuda.is_available() is False: no GPU or no CUDA driver on this machine"


def _backend_ok(name: str, device: torch.device) -> Tuple[bool, str]:
    """Whether ``name`` can run on ``device``, and why not."""
    if name in ("reference", "torch"):
        return True, ""
    if name in ("cuda", "triton") and device.type == "cuda" and _no_gpu_reason():
        return False, _no_gpu_reason()
    if name == "cpu":
        if not _ext.available():
            return False, f"the compiled extension did not load ({_ext.load_error()})"
        return (device.type == "cpu", f"it runs on CPU tensors, got a {device.type} tensor")
    if name == "cuda":
        if device.type != "cuda":
            return False, f"it runs on CUDA tensors, got a {device.type} tensor"
        if not _ext.has_cuda_kernel():
            return False, "the extension was built without CUDA (see the README, Installation: the CUDA kernel)"
        return True, ""
    if name == "triton":
        if _triton_module() is None:
            return False, "triton is not installed (pip install triton)"
        if device.type == "cuda" or (device.type == "cpu" and _triton_interpret()):
            return True, ""
        return False, "it runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)"
    return False, "unknown backend"


def available_backends(device="cpu") -> List[str]:
    """The backends that can run on ``device`` on this machine (``auto`` excluded)."""
    device = torch.device(device)
    return [b for b in BACKENDS[1:] if _backend_ok(b, device)[0]]


def resolve_backend(backend: str, device: torch.device, d: int = 0, dtype: Optional[torch.dtype] = None) -> str:
    """The concrete backend ``backend`` stands for on ``device`` with rows of length ``d`` and ``dtype``
    (Triton serves float32 and half types only, so ``auto`` never picks it for float64)."""
    check_backend(backend)
    if backend != "auto":
        ok, why = _backend_ok(backend, device)
        if not ok:
            raise ValueError(
                f"backend={backend!r} is not available for {device.type} tensors here: {why}. "
                f"Available: {available_backends(device)}"
            )
        return backend
    if device.type == "cpu":
        order = ["cpu", "torch"]
    elif device.type == "cuda":
        order = ["cuda", "triton", "torch"] if d <= CUDA_SMALL_D else ["triton", "cuda", "torch"]
        if dtype == torch.float64:
            order.remove("triton")
    else:
        order = ["torch"]
    for name in order:
        if _backend_ok(name, device)[0]:
            return name
    return "reference"  # pragma: no cover  (torch always runs)


def _is_log(p: EnergyParams) -> bool:
    """The log-sum kinds (the Gaussian, docs/spec.md §4): the backends return ``log(scale * sum phi)``."""
    return p.spec.logsum


def _energy_out(w3: torch.Tensor, p: EnergyParams, backend: str, precision: Optional[str] = None,
                count=1) -> torch.Tensor:
    """``sum_{i<j} / count`` energy of each ``[N, D]`` in ``w3: [B, N, D]`` (for the Gaussian kind
    ``log(sum_{i<j} exp(-t d2) / count)``), differentiable, on ``backend``: float32 (float64 for float64
    input), computed with autocast off (the caller holds ``autocast_off``). ``count`` (an int, symbolic under
    torch.compile) is applied inside the backends, eager or compiled: so that a mean whose sum (or whose sum's
    gradient) would overflow is still computed, and a log-mean near 0 is not ``log(sum) - log(count)``."""
    if backend in ("reference", "cpu") and w3.dtype in (torch.float16, torch.bfloat16):
        w3 = w3.to(compute_dtype(w3.dtype))  # the cast's backward returns the gradient in the input's dtype
    if backend == "reference":
        return reference.gaussian_logsum(w3, p, count) if _is_log(p) else reference.energy_sum(w3, p, count)
    return _autograd.energy_sum(backend, w3, p, precision, count)


def _energy_value(w: torch.Tensor, p: EnergyParams, reduction: str, backend: str,
                  precision: Optional[str], name: str = "w") -> torch.Tensor:
    """:func:`energy` after its parameters are made, but for the Gaussian kind the log of the energy (the
    log-mean itself, as the regularizers want it: ``log(exp(L))`` would round ``exp(L)``, and underflow)."""
    check_reduction(reduction)
    check_precision(precision)
    check_matrix(w, name, eps_norm=p.eps_norm if p.normalize else None)
    backend = resolve_backend(backend, w.device, w.shape[-1], w.dtype)
    w3 = w if w.dim() == 3 else w.unsqueeze(0)
    count = num_pairs(w.shape[-2], p.half_space) if reduction == "mean" else 1
    with autocast_off(w.device):
        e = _energy_out(w3, p, backend, precision, count)
    return e if w.dim() == 3 else e[0]


@_shared_args
def energy(
    w: torch.Tensor,
    kind: str = "riesz",
    s: float = 1.0,
    *,
    half_space: bool = False,
    normalize: bool = True,
    eps_norm: float = 1e-4,
    eps_ang: float = 1e-4,
    t: float = 2.0,
    reduction: str = "mean",
    backend: str = "auto",
    power: Optional[str] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """Hyperspherical energy of the rows of ``w`` (docs/spec.md §3-§5), differentiable.

    ``E = sum_{i<j} phi(g_ij)`` with ``g_ij`` the cosine of rows ``i`` and ``j`` after
    ``u_i = w_i / sqrt(|w_i|^2 + eps_norm)``, and ``phi`` by ``kind`` (below).

    Energy and gradient are computed in one pass; no backend but ``reference`` allocates O(N^2).

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``, float32/float64 (float16/bfloat16 computed in float32).
        @kind@
        s: exponent of ``riesz``/``angular`` (> 0); ignored by the other kinds.
        half_space: the energy of the 2N points ``{u_i} u {-u_i}`` (mean over their ``N(2N-1)`` pairs),
            computed without concatenating ``[W, -W]``.
        @geometry@
        reduction: ``"mean"`` over unordered pairs (default, the original code's value) or ``"sum"``.
        @backend@
        @power@
        @precision@
    Returns:
        A scalar for ``[N, D]`` input, ``Tensor[B]`` for ``[B, N, D]``; float32 for half inputs, else
        ``w``'s dtype, whatever ``torch.autocast`` is active (the products are never autocast); the gradient
        comes back in ``w``'s dtype. Differentiable twice on every backend (``create_graph=True``), and
        usable under ``torch.func`` transforms and ``torch.compile``.
    """
    p = make_params(kind, s, half_space=half_space, normalize=normalize, eps_norm=eps_norm, eps_ang=eps_ang,
                    t=t, power=power)
    e = _energy_value(w, p, reduction, backend, precision)
    return torch.exp(e) if _is_log(p) else e


@_shared_args
def energy_many(
    ws: Sequence[torch.Tensor],
    kind: str = "riesz",
    s: float = 1.0,
    *,
    half_space: bool = False,
    normalize: bool = True,
    eps_norm: float = 1e-4,
    eps_ang: float = 1e-4,
    t: float = 2.0,
    reduction: str = "mean",
    backend: str = "auto",
    power: Optional[str] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """The energies of several matrices of different shapes (a network's layers) in one call.

    The same energy as :func:`energy` (``E = sum_{i<j} phi(g_ij)`` of each matrix's rows), with one set of
    arguments shared by every matrix.

    Args:
        ws: a non-empty sequence of ``Tensor[N_k, D_k]`` on one device, of one dtype; ``N_k``/``D_k`` may all
            differ.
        @kind@
        s: exponent of ``riesz``/``angular`` (> 0); ignored by the other kinds.
        half_space: each energy over the 2N points ``{u_i} u {-u_i}`` of its matrix (mean over their
            ``N(2N-1)`` pairs).
        @geometry@
        reduction: ``"mean"`` over each matrix's unordered pairs (default) or ``"sum"``.
        @backend@
            Here one backend serves the whole list, chosen with the largest ``D_k``.
        @power@
        @precision@
    Returns:
        ``Tensor[K]``, one energy per matrix, differentiable with respect to each. The Triton backend runs
        the whole list in a few launches (a ragged batch); the others loop over the list.
    """
    p = make_params(kind, s, half_space=half_space, normalize=normalize, eps_norm=eps_norm, eps_ang=eps_ang,
                    t=t, power=power)
    e = _energy_many_value(ws, p, reduction, backend, precision)
    return torch.exp(e) if _is_log(p) else e


def _energy_many_value(ws: Sequence[torch.Tensor], p: EnergyParams, reduction: str, backend: str,
                       precision: Optional[str]) -> torch.Tensor:
    """:func:`energy_many` after its parameters are made; the Gaussian kind's log-means (see
    :func:`_energy_value`)."""
    if isinstance(ws, torch.Tensor) or not isinstance(ws, (list, tuple)):
        raise TypeError("ws must be a list or tuple of [N, D] tensors")
    if len(ws) == 0:
        raise ValueError("ws must hold at least one matrix")
    check_reduction(reduction)
    check_precision(precision)
    for k, w in enumerate(ws):
        check_matrix(w, f"ws[{k}]", allow_batch=False, eps_norm=p.eps_norm if p.normalize else None)
        if w.device != ws[0].device:
            raise ValueError(f"ws[{k}] is on {w.device}, ws[0] on {ws[0].device}: all must share a device")
        if w.dtype != ws[0].dtype:
            raise TypeError(f"ws[{k}] is {w.dtype}, ws[0] is {ws[0].dtype}: all must share a dtype")
    name = resolve_backend(backend, ws[0].device, max(w.shape[-1] for w in ws), ws[0].dtype)
    counts = [num_pairs(w.shape[0], p.half_space) if reduction == "mean" else 1 for w in ws]
    with autocast_off(ws[0].device):
        if name == "triton" and not any(is_batched_by_vmap(w) for w in ws):
            # the ragged launch divides each sum by its count (the Gaussian kind: inside the log)
            return _autograd.EnergyMany.apply(p, precision, counts, *ws)[0]
        return torch.stack([_energy_out(w.unsqueeze(0), p, name, precision, c)[0] for w, c in zip(ws, counts)])


@_shared_args
def cross_energy(
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str = "riesz",
    s: float = 1.0,
    *,
    half_space: bool = False,
    normalize: bool = True,
    eps_norm: float = 1e-4,
    eps_ang: float = 1e-4,
    t: float = 2.0,
    reduction: str = "sum",
    backend: str = "auto",
    power: Optional[str] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """``sum_i sum_j phi(g(x_i, y_j))`` over all pairs of two sets (no diagonal removed), with gradients to
    both. ``half_space=True`` adds ``phi(-g)`` (the pairs of ``x`` with ``-y``).

    Args:
        x: ``Tensor[Nx, D]`` or ``Tensor[B, Nx, D]``.
        y: ``Tensor[Ny, D]`` or ``Tensor[B, Ny, D]``, same batch size, D, device and dtype as ``x``.
        @kind@
        s: exponent of ``riesz``/``angular`` (> 0); ignored by the other kinds.
        half_space: also the pairs of ``x`` with ``-y`` (adds ``phi(-g)``).
        @geometry@
        reduction: ``"sum"`` (default) or ``"mean"`` over the ``Nx * Ny`` pairs (``2 Nx Ny`` terms are still
            divided by ``Nx * Ny`` with ``half_space``).
        @backend@
        @power@
        @precision@
    Returns:
        A scalar, or ``Tensor[B]`` for batched input.
    """
    p = make_params(kind, s, half_space=half_space, normalize=normalize, eps_norm=eps_norm, eps_ang=eps_ang,
                    t=t, power=power)
    check_reduction(reduction)
    e = _cross_value(x, y, p, "mean" if reduction == "mean" else 1, backend, precision)
    return torch.exp(e) if _is_log(p) else e


def _cross_value(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, count, backend: str,
                 precision: Optional[str]) -> torch.Tensor:
    """:func:`cross_energy` after its parameters are made: the sum divided by ``count`` (an int, or ``"mean"``
    for ``Nx * Ny``) inside the backends; the Gaussian kind's log of it (see :func:`_energy_value`)."""
    check_matrix(x, "x", min_rows=1, eps_norm=p.eps_norm if p.normalize else None)
    check_matrix(y, "y", min_rows=1, eps_norm=p.eps_norm if p.normalize else None)
    if x.dim() != y.dim() or x.shape[-1] != y.shape[-1] or (x.dim() == 3 and x.shape[0] != y.shape[0]):
        raise ValueError(f"x and y must agree in rank, batch size and D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} and y on {y.device}: both must be on one device")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    check_precision(precision)
    name = resolve_backend(backend, x.device, x.shape[-1], x.dtype)
    x3, y3 = (x, y) if x.dim() == 3 else (x.unsqueeze(0), y.unsqueeze(0))
    if isinstance(count, str):  # "mean"
        count = x.shape[-2] * y.shape[-2]
    if name in ("reference", "cpu") and x3.dtype in (torch.float16, torch.bfloat16):
        x3, y3 = x3.to(compute_dtype(x3.dtype)), y3.to(compute_dtype(y3.dtype))
    with autocast_off(x.device):
        if name == "reference":
            e = (reference.cross_logsum(x3, y3, p, count) if _is_log(p)
                 else reference.cross_energy(x3, y3, p, count=count))
        else:
            e = _autograd.cross_energy_sum(name, x3, y3, p, precision, count)
    return e if x.dim() == 3 else e[0]


@_shared_args
def uniformity_loss(x: torch.Tensor, t: float = 2.0, *, backend: str = "auto") -> torch.Tensor:
    """The contrastive uniformity loss ``log mean_{i<j} exp(-t |x_i - x_j|^2)`` on the rows as given
    (the caller normalizes features if it wants them on the sphere).

    Computed as a log-sum-exp (docs/spec.md §4), so it is finite for features of any scale, where the terms
    ``exp(-t d2)`` themselves underflow (float32 features of norm 10 and above).

    Args:
        x: ``Tensor[N, D]`` or ``Tensor[B, N, D]`` features, N >= 2.
        t: temperature, > 0 (2 in the paper).
        @backend@

    Returns:
        A scalar (``Tensor[B]`` for batched input).
    """
    return _energy_value(x, make_params("gaussian", 0.0, normalize=False, t=t), "mean", backend, None, "x")


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """The contrastive alignment loss ``mean_i |x_i - y_i|^alpha`` of positive pairs (rows as given),
    computed with plain PyTorch operations (O(N D): no backend to choose).

    Args:
        x, y: ``Tensor[N, D]`` of the same shape, dtype and device (mixed dtypes are refused, not promoted).
        alpha: exponent, a finite number > 0.

    Returns:
        A scalar.
    """
    check_matrix(x, "x", allow_batch=False, min_rows=1)
    check_matrix(y, "y", allow_batch=False, min_rows=1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:  # no silent promotion: the pair would be computed in the wider dtype
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return (x - y).norm(dim=1).pow(alpha).mean()


class _MinSeparation(torch.autograd.Function):
    """``-min d2`` by tiles; the backward spreads ``grad_output`` evenly over every pair attaining the
    minimum (as ``torch.amin`` does), differentiating only those pairs."""

    @staticmethod
    def forward(ctx, w3, half_space, eps_norm, block):
        x = w3.to(compute_dtype(w3.dtype))
        r = torch.rsqrt((x * x).sum(-1) + eps_norm)
        u = x * r[..., None]
        best = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
        for _, _, d2 in pair_d2_tiles(u, half_space, block):
            best = torch.minimum(best, d2.flatten(1).amin(-1))
        hits: List[torch.Tensor] = []  # rows (batch, i, j, sign) of every pair attaining the minimum
        for i0, sign, d2 in pair_d2_tiles(u, half_space, block):  # the same tiles, bit for bit
            b, i, j = torch.nonzero(d2 == best[:, None, None], as_tuple=True)
            hits.append(torch.stack([b, i + i0, j, torch.full_like(b, sign)], 1))
        ctx.save_for_backward(w3, torch.cat(hits), best)
        ctx.eps_norm = eps_norm
        return -best.to(compute_dtype(w3.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        w3, hits, best = ctx.saved_tensors
        b, i, j, sign = hits.unbind(1)
        with torch.enable_grad():
            w = w3.detach().to(compute_dtype(w3.dtype)).requires_grad_(True)
            u = reference.normalize_rows(w, ctx.eps_norm)
            d2 = 2 - 2 * sign.to(u.dtype) * (u[b, i] * u[b, j]).sum(-1)
            count = torch.zeros_like(best).index_add_(0, b, torch.ones_like(d2))
            loss = (-(d2 * grad_out.to(u.dtype)[b] / count[b])).sum()
            (grad,) = torch.autograd.grad(loss, w)
        return grad.to(w3.dtype), None, None, None


def pair_d2_tiles(u: torch.Tensor, half_space: bool, block: int, *, ordered: bool = False):
    """The squared distances of the rows of ``u: [B, N, D]`` (unit rows), by row tiles: yields
    ``(i0, sign, d2)`` with ``d2: [B, rows, N]`` ``= 2 - 2 sign g_ij`` for the rows ``i0..`` (``sign = -1``: the
    half-space pairs of ``u_i`` with ``-u_j``, with ``half_space`` only) and ``+inf`` wherever ``(i, j)`` is not
    a pair: ``j <= i`` (``j < i`` for ``sign = -1``, where ``j = i`` is a point and its antipode), or with
    ``ordered`` only ``j = i`` (``sign = 1``), so that each row sees every other row. The one minimum-distance
    search of the package (:func:`min_separation`, the Thomson solver's nearest-neighbour distances)."""
    n = u.shape[1]
    cols = torch.arange(n, device=u.device)[None, :]
    for i0 in range(0, n, block):
        g = torch.bmm(u[:, i0:i0 + block], u.transpose(1, 2))
        rows = torch.arange(i0, i0 + g.shape[1], device=u.device)[:, None]
        yield i0, 1, torch.where((cols != rows if ordered else cols > rows)[None], 2 - 2 * g, torch.inf)
        if half_space:
            d2 = 2 + 2 * g
            yield i0, -1, d2 if ordered else torch.where((cols >= rows)[None], d2, torch.inf)


def min_separation(
    w: torch.Tensor, half_space: bool = False, *, eps_norm: float = 1e-4, block: int = 256
) -> torch.Tensor:
    """The MHS value ``-min_{i<j} d2_ij`` (``d2 = 2 - 2g``) with its subgradient, tiled (O(N * block)).

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``.
        half_space: the minimum over the 2N points ``{u_i} u {-u_i}``.
        eps_norm: added to ``|w_i|^2`` inside the square root of the normalization (default 1e-4, the
            original code's value); 0 gives exact unit rows, and then a zero row is an error.
        block: rows per tile, an int >= 1 (memory O(N * block)). The search runs in tiled PyTorch on ``w``'s
            device (no ``backend`` argument), in float64 for float64 input and float32 otherwise.

    Returns:
        A scalar (``Tensor[B]`` batched). Its gradient goes to every pair attaining the minimum, shared
        evenly among ties (as ``torch.amin``'s does).
    """
    check_matrix(w, "w", eps_norm=eps_norm)
    if not isinstance(half_space, bool):
        raise TypeError(f"half_space must be a bool, got {type(half_space).__name__}")
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"block must be an int, got {type(block).__name__} ({block!r})")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    make_params("riesz", 1.0, eps_norm=eps_norm)
    w3 = w if w.dim() == 3 else w.unsqueeze(0)
    out = _MinSeparation.apply(w3, half_space, float(eps_norm), int(block))
    return out if w.dim() == 3 else out[0]
