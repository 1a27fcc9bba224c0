"""Autograd for the fused backends: one-pass energy + gradient, second derivatives, torch.func, torch.compile.

Every fused backend (``cpu``/``cuda``: the C++ op ``torch.ops.hsu.energy_grad``; ``torch``: the tiled
PyTorch pass; ``triton``) is an opaque operator with a fake kernel and a registered autograd formula, so
``torch.compile`` sees one node per call whatever N is (no recompile per N, no graph break). Under
``torch.func`` transforms the operators are called through the autograd Functions below instead, written
in the ``setup_context`` style with a ``vmap`` rule (``torch.func.grad``, ``vjp``, ``jacrev``, ``vmap``).
(Outside them the operators' own autograd is used: ``Function.apply`` of a ``setup_context`` Function
binds its arguments with ``inspect`` on every call, ~60 us, a tenth of a small call such as the Thomson
solver's N = 100.)

Every pass takes the output ``scale`` (1, or ``1/pairs`` for a mean): the energy is ``scale * sum`` over
pairs, and for the Gaussian kind the log-mean ``log(scale * sum exp(-t d2))`` (docs/spec.md §4), with the
gradient of that; the scale enters before the log, so a log-mean near 0 is never the difference of two
numbers near ``log(pairs)``. The Triton backend applies it per row after its pass (a row whose plain sum
overflows float32 is recomputed, scaled, on the host: see ``triton.launch.row_pass``); its ragged batch
(``energy_many``) takes one pair count per matrix and divides each float64 sum by it.

Under ``torch.compile`` the mean's pair count is symbolic (an expression in N), and a float ``1/pairs``
passed to an operator would be specialized (one graph per N). The compiled graph therefore calls
``hsu::mean_energy_grad`` / ``hsu::mean_cross_energy_grad``, which take the count as an integer (a SymInt
in the schema, never specialized) and call the backend's operator with ``scale = 1/count`` when the graph
runs: the compiled mean is the eager one, bit for bit (a mean whose sum would overflow float32 included).

First derivatives: the forward pass returns the gradient with the energy; the backward scales it by
``grad_output``.

Second derivatives: when the backward itself is differentiated (``create_graph=True``, or nested
``torch.func`` transforms), it returns ``grad_output * G`` through :class:`GradTimes`, whose backward is a
Hessian-vector product computed block by block (rows ``I`` against all rows; forward-over-reverse
differentiation of each block's energy), O(N * block) memory like the forward; for the Gaussian log-sum
``L = log S`` it is ``H_S v / S - G (G . v)``, the blocks' terms taken as ``exp(-t d2 - L)``. Third
derivatives raise.
"""

from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Sequence

import torch

from . import reference, tiled
from ._params import EnergyParams, compute_dtype
from .kinds import kind_by_code

#: Rows per block of the Hessian-vector product (each block's autograd graph holds a few block x N tensors).
HVP_BLOCK = 256

#: Device types where torch.autocast exists (the ops switch it off inside, see ``autocast_off``).
_AUTOCAST_DEVICES = frozenset(
    d for d in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia") if torch.amp.is_autocast_available(d)
)


def autocast_off(device: torch.device):
    """A context in which ``torch.autocast`` does not touch this device's products: the ops compute in
    float32/float64 under any autocast (docs/spec.md's accuracy needs it: ``2 - 2g`` of close rows loses every digit
    in bf16)."""
    if device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # (entering torch.autocast costs ~10 us: the Thomson solver's N = 100 calls)


def _params(kind: int, s: float, t: float, eps_norm: float, eps_ang: float, half_space: bool,
            normalize: bool) -> EnergyParams:
    """The parameters of an op call (``kind`` is its code: an unknown code is a ``ValueError``, never another
    kind, as ``KINDS[-1]`` would be)."""
    return EnergyParams(kind_by_code(kind).name, s, t, eps_norm, eps_ang, half_space, normalize)


# ---- opaque operators of the Python backends (the C++ op is defined in csrc/hsu_ops.cpp) ----------------
# Their inputs are checked by the public functions (``check_matrix``), which under torch.compile put the
# NaN/Inf check into the graph as an assert.


@torch.library.custom_op("hsu::tiled_energy_grad", mutates_args=())
def tiled_energy_grad(w: torch.Tensor, kind: int, s: float, t: float, eps_norm: float, eps_ang: float,
                      half_space: bool, normalize: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled PyTorch pass (``tiled.energy_grad``) as one operator: ``(E: [B], G: [B, N, D])``."""
    return tiled.energy_grad(w, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize), scale=scale)


@tiled_energy_grad.register_fake
def _(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale):
    return w.new_empty((w.shape[0],), dtype=compute_dtype(w.dtype)), torch.empty_like(w)


@torch.library.custom_op("hsu::tiled_cross_energy_grad", mutates_args=())
def tiled_cross_energy_grad(x: torch.Tensor, y: torch.Tensor, kind: int, s: float, t: float, eps_norm: float,
                            eps_ang: float, half_space: bool, normalize: bool,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tiled.cross_energy_grad`` as one operator: ``(E: [B], Gx, Gy)``."""
    return tiled.cross_energy_grad(x, y, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize),
                                   scale=scale)


@tiled_cross_energy_grad.register_fake
def _(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale):
    return x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype)), torch.empty_like(x), torch.empty_like(y)


@torch.library.custom_op("hsu::tiled_energy", mutates_args=())
def tiled_energy(w: torch.Tensor, kind: int, s: float, t: float, eps_norm: float, eps_ang: float,
                 half_space: bool, normalize: bool, scale: float) -> torch.Tensor:
    """``tiled.energy_value`` as one operator: the ``E: [B]`` of ``hsu::tiled_energy_grad`` alone."""
    return tiled.energy_value(w, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize), scale=scale)


@tiled_energy.register_fake
def _(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale):
    return w.new_empty((w.shape[0],), dtype=compute_dtype(w.dtype))


@torch.library.custom_op("hsu::tiled_cross_energy", mutates_args=())
def tiled_cross_energy(x: torch.Tensor, y: torch.Tensor, kind: int, s: float, t: float, eps_norm: float,
                       eps_ang: float, half_space: bool, normalize: bool, scale: float) -> torch.Tensor:
    """``tiled.cross_energy_value`` as one operator."""
    return tiled.cross_energy_value(x, y, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize),
                                    scale=scale)


@tiled_cross_energy.register_fake
def _(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale):
    return x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype, y.dtype))


def _triton():
    from . import triton as hsu_triton

    return hsu_triton


@torch.library.custom_op("hsu::triton_energy_grad", mutates_args=())
def triton_energy_grad(w: torch.Tensor, kind: int, s: float, t: float, eps_norm: float, eps_ang: float,
                       half_space: bool, normalize: bool, scale: float,
                       precision: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton pass as one operator: ``(E: float32 [B], G: [B, N, D])``."""
    p = _params(kind, s, t, eps_norm, eps_ang, half_space, normalize)
    return _triton().energy_grad(w, p, precision=precision, scale=scale)


@triton_energy_grad.register_fake
def _(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale, precision):
    return w.new_empty((w.shape[0],), dtype=torch.float32), torch.empty_like(w)


@torch.library.custom_op("hsu::triton_cross_energy_grad", mutates_args=())
def triton_cross_energy_grad(x: torch.Tensor, y: torch.Tensor, kind: int, s: float, t: float, eps_norm: float,
                             eps_ang: float, half_space: bool, normalize: bool, scale: float,
                             precision: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton cross pass as one operator: ``(E: float32 [B], Gx, Gy)``."""
    p = _params(kind, s, t, eps_norm, eps_ang, half_space, normalize)
    return _triton().cross_energy_grad(x, y, p, precision=precision, scale=scale)


@triton_cross_energy_grad.register_fake
def _(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale, precision):
    return x.new_empty((x.shape[0],), dtype=torch.float32), torch.empty_like(x), torch.empty_like(y)


@torch.library.custom_op("hsu::triton_energy_many_grad", mutates_args=())
def triton_energy_many_grad(ws: List[torch.Tensor], counts: List[int], kind: int, s: float, t: float,
                            eps_norm: float, eps_ang: float, half_space: bool, normalize: bool,
                            precision: Optional[str]) -> tuple[torch.Tensor, List[torch.Tensor]]:
    """The Triton ragged batch as one operator: ``(E: float32 [K], [G_k])``, each sum divided by its entry of
    ``counts`` (integers, symbolic under torch.compile) in float64 before rounding (the Gaussian kind: the
    log-means ``log(sum exp(-t d2) / count)``), with their gradients."""
    p = _params(kind, s, t, eps_norm, eps_ang, half_space, normalize)
    e, grads = _triton().energy_many_grad(ws, p, precision=precision, counts=counts)
    # the launch returns views of one buffer; an operator's outputs may not alias each other
    return e, [g.clone() for g in grads]


@triton_energy_many_grad.register_fake
def _(ws, counts, kind, s, t, eps_norm, eps_ang, half_space, normalize, precision):
    return ws[0].new_empty((len(ws),), dtype=torch.float32), [torch.empty_like(w) for w in ws]


@torch.library.custom_op("hsu::mean_energy_grad", mutates_args=())
def mean_energy_grad(w: torch.Tensor, backend: str, kind: int, s: float, t: float, eps_norm: float, eps_ang: float,
                     half_space: bool, normalize: bool, count: int,
                     precision: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend``'s pass with ``scale = 1/count``, the count an integer (SymInt: symbolic under
    ``torch.compile(dynamic=True)`` without a graph per N). What compiled graphs call for a mean."""
    p = _params(kind, s, t, eps_norm, eps_ang, half_space, normalize)
    return self_pass(backend, w, p, precision, 1.0 / count)


@mean_energy_grad.register_fake
def _(w, backend, kind, s, t, eps_norm, eps_ang, half_space, normalize, count, precision):
    return self_pass(backend, w, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize), precision)


@torch.library.custom_op("hsu::mean_cross_energy_grad", mutates_args=())
def mean_cross_energy_grad(x: torch.Tensor, y: torch.Tensor, backend: str, kind: int, s: float, t: float,
                           eps_norm: float, eps_ang: float, half_space: bool, normalize: bool, count: int,
                           precision: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mean_energy_grad` for a cross energy: ``backend``'s cross pass with ``scale = 1/count``."""
    p = _params(kind, s, t, eps_norm, eps_ang, half_space, normalize)
    return cross_pass(backend, x, y, p, precision, 1.0 / count)


@mean_cross_energy_grad.register_fake
def _(x, y, backend, kind, s, t, eps_norm, eps_ang, half_space, normalize, count, precision):
    return cross_pass(backend, x, y, _params(kind, s, t, eps_norm, eps_ang, half_space, normalize), precision)


def self_pass(backend: str, w: torch.Tensor, p: EnergyParams, precision: Optional[str], scale: float = 1.0):
    """``(E, G)`` of ``w: [B, N, D]`` on a fused backend, without autograd (``E = scale * sum``, Gaussian:
    ``log(scale * sum exp)``)."""
    if backend in ("cpu", "cuda"):
        return torch.ops.hsu.energy_grad(w, *p.as_args(), scale)
    if backend == "triton":
        return torch.ops.hsu.triton_energy_grad(w, *p.as_args(), scale, precision)
    return torch.ops.hsu.tiled_energy_grad(w, *p.as_args(), scale)


def _value_op(name: str):
    """The compiled value-only operator ``torch.ops.hsu.<name>``, or None where this build has none."""
    return getattr(torch.ops.hsu, name, None) if hasattr(torch.ops, "hsu") else None


def self_value(backend: str, w: torch.Tensor, p: EnergyParams, precision: Optional[str],
               scale: float = 1.0) -> torch.Tensor:
    """The ``E`` of :func:`self_pass` alone, from a value-only pass where the backend has one (the torch
    backend; the C++ op ``hsu::energy`` where the extension has it). The Triton kernels have none yet: they
    run their energy + gradient pass."""
    if backend in ("cpu", "cuda"):
        op = _value_op("energy")
        return op(w, *p.as_args(), scale) if op is not None else self_pass(backend, w, p, precision, scale)[0]
    if backend == "torch":
        return torch.ops.hsu.tiled_energy(w, *p.as_args(), scale)
    return self_pass(backend, w, p, precision, scale)[0]


def cross_value(backend: str, x: torch.Tensor, y: torch.Tensor, p: EnergyParams, precision: Optional[str],
                scale: float = 1.0) -> torch.Tensor:
    """The ``E`` of :func:`cross_pass` alone (see :func:`self_value`)."""
    if backend in ("cpu", "cuda"):
        op = _value_op("cross_energy")
        if op is not None:
            return op(x, y, *p.as_args(), scale)
        return cross_pass(backend, x, y, p, precision, scale)[0]
    if backend == "torch":
        return torch.ops.hsu.tiled_cross_energy(x, y, *p.as_args(), scale)
    return cross_pass(backend, x, y, p, precision, scale)[0]


def wants_grad(*ts: torch.Tensor) -> bool:
    """Whether a call must compute gradients: grad mode on and an input requiring one, or the inputs seen
    through torch.func transforms or a compiled graph (where the pass with gradients always runs)."""
    if torch.compiler.is_compiling() or any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts):
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def cross_pass(backend: str, x: torch.Tensor, y: torch.Tensor, p: EnergyParams, precision: Optional[str],
               scale: float = 1.0):
    """``(E, Gx, Gy)`` of ``x: [B, Nx, D]`` against ``y: [B, Ny, D]`` on a fused backend, without autograd."""
    if backend in ("cpu", "cuda"):
        return torch.ops.hsu.cross_energy_grad(x, y, *p.as_args(), scale)
    if backend == "triton":
        return torch.ops.hsu.triton_cross_energy_grad(x, y, *p.as_args(), scale, precision)
    return torch.ops.hsu.tiled_cross_energy_grad(x, y, *p.as_args(), scale)


def _op_setup(ctx, inputs, output, cross: bool, mean: bool = False):
    # tensor inputs first, then the parameters in schema order: the 7 of EnergyParams.as_args and the scale,
    # or (mean=True: the hsu::mean_* operators) the backend, the 7, the pair count and the precision
    nt = 2 if cross else 1
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(*inputs[:nt], output[0], *output[1:])
    first = nt + 1 if mean else nt
    ctx.p = _params(*inputs[first:first + 7])
    if mean:  # the count stays as given (symbolic in a compiled graph) until a second derivative needs 1/count
        ctx.scale, ctx.count = None, inputs[first + 7]
    else:
        ctx.scale = float(inputs[nt + 7]) if len(inputs) > nt + 7 else 1.0
    ctx.n_params = len(inputs) - nt  # the parameters get no gradient


def _op_scale(ctx) -> float:
    return ctx.scale if ctx.scale is not None else 1.0 / ctx.count


def _op_backward(ctx, ge, *_grads_of_gradients):
    saved = ctx.saved_tensors
    rest = (None,) * ctx.n_params
    if len(saved) == 3:  # (w, E, G)
        w, e, g = saved
        if torch.is_grad_enabled():  # the backward is being differentiated (create_graph=True)
            return (GradTimes.apply(w, ge, g, ctx.p, e, _op_scale(ctx)), *rest)
        return (ge.to(g.dtype)[:, None, None] * g, *rest)
    x, y, e, gx, gy = saved  # a cross energy
    if torch.is_grad_enabled():
        return (*CrossGradTimes.apply(x, y, ge, gx, gy, ctx.p, e, _op_scale(ctx)), *rest)
    s = ge[:, None, None]
    return (s.to(gx.dtype) * gx, s.to(gy.dtype) * gy, *rest)


def register_op_autograd(qualname: str, cross: bool, mean: bool = False) -> None:
    """The autograd formula of a fused operator ``(w, params...) -> (E, G)`` or ``(x, y, params...) ->
    (E, Gx, Gy)``: the backward scales the saved gradients; its gradient outputs are not differentiable
    (a loss built on them raises), and a differentiated backward gives second derivatives. ``mean``: the
    parameters of the ``hsu::mean_*`` operators (see :func:`_op_setup`)."""
    torch.library.register_autograd(
        qualname, _op_backward,
        setup_context=lambda ctx, inputs, output: _op_setup(ctx, inputs, output, cross, mean),
    )


for _name, _cross in (("hsu::tiled_energy_grad", False), ("hsu::tiled_cross_energy_grad", True),
                      ("hsu::triton_energy_grad", False), ("hsu::triton_cross_energy_grad", True)):
    register_op_autograd(_name, _cross)
register_op_autograd("hsu::mean_energy_grad", cross=False, mean=True)
register_op_autograd("hsu::mean_cross_energy_grad", cross=True, mean=True)


def _symbolic_count(count) -> bool:
    """Whether a pair count must reach the operators as an integer: in a compiled graph, where it may be
    symbolic and ``1/count`` as a float argument would be specialized (one graph per N)."""
    return torch.compiler.is_compiling() and not (isinstance(count, int) and count == 1)


def energy_sum(backend: str, w: torch.Tensor, p: EnergyParams, precision: Optional[str], count=1) -> torch.Tensor:
    """Differentiable ``E: [B]`` of ``w: [B, N, D]`` on a fused backend: ``sum / count`` over pairs (the
    Gaussian kind: ``log(sum exp(-t d2) / count)``), the division inside the pass (see the module docstring).
    ``count``: an int, symbolic under torch.compile."""
    if _symbolic_count(count):
        return torch.ops.hsu.mean_energy_grad(w, backend, *p.as_args(), count, precision)[0]
    scale = 1.0 / count
    if not wants_grad(w):
        return self_value(backend, w, p, precision, scale)
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(w):
        return Energy.apply(w, backend, p, precision, scale)[0]
    return self_pass(backend, w, p, precision, scale)[0]


def cross_energy_sum(backend: str, x: torch.Tensor, y: torch.Tensor, p: EnergyParams,
                     precision: Optional[str], count=1) -> torch.Tensor:
    """Differentiable ``E: [B]`` of ``x: [B, Nx, D]`` against ``y: [B, Ny, D]`` on a fused backend (divided
    by ``count``, or a log-mean, as :func:`energy_sum`)."""
    if _symbolic_count(count):
        return torch.ops.hsu.mean_cross_energy_grad(x, y, backend, *p.as_args(), count, precision)[0]
    scale = 1.0 / count
    if not wants_grad(x, y):
        return cross_value(backend, x, y, p, precision, scale)
    if not torch.compiler.is_compiling() and (torch._C._functorch.is_functorch_wrapped_tensor(x)
                                               or torch._C._functorch.is_functorch_wrapped_tensor(y)):
        return CrossEnergy.apply(x, y, backend, p, precision, scale)[0]
    return cross_pass(backend, x, y, p, precision, scale)[0]


# ---- second derivatives ---------------------------------------------------------------------------------


def _phi_shifted(d2: torch.Tensor, p: EnergyParams, shift: Optional[torch.Tensor]) -> torch.Tensor:
    """``phi`` of squared distances; the Gaussian kind with ``shift: [B]`` as ``exp(-t d2 - shift_b)`` (its
    terms relative to the log-sum, which alone would underflow for features of large norm)."""
    if shift is not None:
        return torch.exp(p.log_phi(d2) - shift.reshape(-1, *([1] * (d2.dim() - 1))))
    return reference.phi_of_d2(d2, p)


def _psi_block(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, diag_from: Optional[int],
               shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum_i sum_j psi(x_i, y_j)`` per batch entry (``psi = phi(g) + phi(-g)`` in half-space mode) for
    ``x: [B, m, D]`` and ``y: [B, n, D]``; with ``diag_from = i0`` the rows of ``x`` are rows ``i0..`` of
    ``y`` and the pairs of a row with itself are left out (selected away before ``phi``, so their
    infinite or undefined terms never enter the graph). ``shift``: the Gaussian kind's terms divided by
    ``exp(shift_b)`` (see :func:`_phi_shifted`)."""
    if p.normalize:
        geo = reference.normalize_rows(x, p.eps_norm) @ reference.normalize_rows(y, p.eps_norm).transpose(-1, -2)
        safe = 0.0
    else:
        sx, sy = (x * x).sum(-1)[..., :, None], (y * y).sum(-1)[..., None, :]
        dot = x @ y.transpose(-1, -2)
        safe = 1.0
    mask = None
    if diag_from is not None:
        rows = torch.arange(x.shape[-2], device=x.device)[:, None] + diag_from
        mask = rows == torch.arange(y.shape[-2], device=x.device)[None, :]

    def phi(v, of_g):
        if mask is not None:
            v = torch.where(mask, safe, v)
        if shift is not None:
            out = _phi_shifted((2 - 2 * v) if of_g else v.clamp_min(0), p, shift)
        else:
            out = reference.phi_of_g(v, p) if of_g else reference.phi_of_d2(v.clamp_min(0), p)
        return torch.where(mask, 0.0, out) if mask is not None else out

    if p.normalize:
        total = phi(geo, True) + (phi(-geo, True) if p.half_space else 0.0)
    else:
        total = phi(sx + sy - 2 * dot, False) + (phi(sx + sy + 2 * dot, False) if p.half_space else 0.0)
    return total.sum((-1, -2))


def _self_pair_energy(w: torch.Tensor, p: EnergyParams, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The half-space pairs ``(w_i, -w_i)``, summed per batch entry; in closed form (``1 - g_ii =
    eps_norm / (|w|^2 + eps_norm)``), as the kernels take it. ``shift`` as in :func:`_psi_block`."""
    sq = (w * w).sum(-1)
    if not p.normalize:
        return _phi_shifted(4 * sq, p, shift).sum(-1)
    n2 = sq + p.eps_norm
    if p.spec.angle:
        theta = math.pi - 2 * torch.asin(torch.sqrt(0.5 * p.eps_norm / n2))  # acos(-g_ii)
        return p.phi(theta / math.pi + p.eps_ang).sum(-1)
    return _phi_shifted(2 + 2 * sq / n2, p, shift).sum(-1)


def _hvp(inputs: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], parts) -> List[torch.Tensor]:
    """``H v`` with respect to ``inputs`` of ``E = sum of the parts``, where ``parts`` yields functions of
    the inputs, one block of E each. Each block is forward-mode over reverse-mode (``jvp`` of ``grad``),
    freed before the next; torch.func rather than ``autograd.grad`` so that it also runs inside torch.func
    transforms. In float32/float64."""
    dt = compute_dtype(inputs[0].dtype)
    xs = tuple(t.detach().to(dt) for t in inputs)
    vv = tuple(v.detach().to(dt) for v in vs)
    argnums = tuple(range(len(xs)))
    out = [torch.zeros_like(x) for x in xs]
    with autocast_off(inputs[0].device):
        for part in parts:
            _, hv = torch.func.jvp(torch.func.grad(part, argnums=argnums), xs, vv)
            for o, h in zip(out, hv):
                o.add_(h)
    return [o.to(t.dtype) for o, t in zip(out, inputs)]


def _log_shift(p: EnergyParams, e: Optional[torch.Tensor], out_scale: float, dt: torch.dtype):
    """The Gaussian kind's ``L = log S`` (the op returned ``e = L + log(out_scale)``), else None."""
    if not p.spec.logsum:
        return None
    return e.detach().to(dt) - math.log(out_scale)


def _minus_outer(h: torch.Tensor, ge: torch.Tensor, grads: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                 k: int) -> torch.Tensor:
    """``h - ge G_k (G . v)``: the second half of the log-sum's Hessian ``H_S / S - G G^T``."""
    gv = sum((g.to(h.dtype) * v.to(h.dtype)).sum((-1, -2)) for g, v in zip(grads, vs))
    return h - (ge.to(h.dtype) * gv)[:, None, None] * grads[k].to(h.dtype)


def self_hvp(w: torch.Tensor, ge: torch.Tensor, v: torch.Tensor, p: EnergyParams, e: Optional[torch.Tensor] = None,
             g: Optional[torch.Tensor] = None, out_scale: float = 1.0, block: int = HVP_BLOCK) -> torch.Tensor:
    """``d/dw sum_b ge_b (G_b . v_b)``, i.e. the Hessian of ``sum_b ge_b E_b(w_b)`` times ``v``, for the self
    energy ``E = out_scale * sum_{i<j} psi`` (plus the half-space self pairs) of ``w: [B, N, D]``; for the
    Gaussian kind ``E = log(out_scale * S)``, which needs the op's ``e`` and gradient ``g``."""
    n = w.shape[-2]
    pair_scale = 1.0 if p.half_space else 0.5  # ordered pairs i != j count each unordered pair twice
    dt = compute_dtype(w.dtype)
    shift = _log_shift(p, e, out_scale, dt)
    scale = ge.detach().to(dt) * (1.0 if shift is not None else out_scale)

    def rows(i0):
        return lambda x: (scale * _psi_block(x[:, i0:i0 + block], x, p, i0, shift)).sum() * pair_scale

    parts = [rows(i0) for i0 in range(0, n, block)]
    if p.half_space and not (p.normalize and p.eps_norm == 0):  # else the self pairs are constants
        parts.append(lambda x: (scale * _self_pair_energy(x, p, shift)).sum())
    h = _hvp([w], [v], parts)[0]
    if shift is None:
        return h
    return _minus_outer(h.to(dt), ge, [g], [v], 0).to(w.dtype)


def cross_hvp(x: torch.Tensor, y: torch.Tensor, ge: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor,
              p: EnergyParams, e: Optional[torch.Tensor] = None, gx: Optional[torch.Tensor] = None,
              gy: Optional[torch.Tensor] = None, out_scale: float = 1.0, block: int = HVP_BLOCK):
    """The Hessian of ``sum_b ge_b E_b(x_b, y_b)`` (``E = out_scale * sum_i sum_j psi(x_i, y_j)``; Gaussian:
    ``log(out_scale * S)``, with the op's ``e``, ``gx``, ``gy``) times ``(vx, vy)``."""
    dt = compute_dtype(x.dtype)
    shift = _log_shift(p, e, out_scale, dt)
    scale = ge.detach().to(dt) * (1.0 if shift is not None else out_scale)

    def rows(i0):
        return lambda xa, ya: (scale * _psi_block(xa[:, i0:i0 + block], ya, p, None, shift)).sum()

    hx, hy = _hvp([x, y], [vx, vy], [rows(i0) for i0 in range(0, x.shape[-2], block)])
    if shift is not None:
        hx = _minus_outer(hx.to(dt), ge, [gx, gy], [vx, vy], 0).to(x.dtype)
        hy = _minus_outer(hy.to(dt), ge, [gx, gy], [vx, vy], 1).to(y.dtype)
    return hx, hy


class _NoThirdDerivative(torch.autograd.Function):
    """Passes a second derivative through, tied to the tensors it depends on; differentiating it raises
    (never a silent zero: a tensor that merely did not require grad would drop out of a larger graph)."""

    @staticmethod
    def forward(x, *deps):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "hsu_kernels: third derivatives of the fused backends are not implemented (their second "
            "derivatives come from a Hessian-vector product that is not differentiable again); use "
            "backend='reference' for higher derivatives"
        )


def _second_derivatives(outs, deps):
    """``outs`` as returned by a backward that is itself being differentiated (create_graph=True)."""
    if not torch.is_grad_enabled():
        return outs
    return tuple(None if o is None else _NoThirdDerivative.apply(o, *deps) for o in outs)


class GradTimes(torch.autograd.Function):
    """``ge[:, None, None] * G`` with ``G = dE/dw`` already computed: the backward of :class:`Energy` when
    that backward is itself differentiated. Its own backward gives the second derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w, ge, g, p, e, scale):
        return ge.to(g.dtype)[:, None, None] * g

    @staticmethod
    def setup_context(ctx, inputs, output):
        w, ge, g, p, e, scale = inputs
        ctx.save_for_backward(w, ge, g, e)
        ctx.p, ctx.scale = p, scale

    @staticmethod
    def backward(ctx, v):
        w, ge, g, e = ctx.saved_tensors
        with torch.no_grad():
            dw = self_hvp(w, ge, v, ctx.p, e, g, ctx.scale) if ctx.needs_input_grad[0] else None
            dge = (g * v).sum((-1, -2), dtype=ge.dtype) if ctx.needs_input_grad[1] else None
        return (*_second_derivatives((dw, dge), (w, ge, v)), None, None, None, None)


class CrossGradTimes(torch.autograd.Function):
    """``(ge * Gx, ge * Gy)`` for :class:`CrossEnergy`, as :class:`GradTimes` is for :class:`Energy`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, ge, gx, gy, p, e, scale):
        s = ge[:, None, None]
        return s.to(gx.dtype) * gx, s.to(gy.dtype) * gy

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, ge, gx, gy, p, e, scale = inputs
        ctx.save_for_backward(x, y, ge, gx, gy, e)
        ctx.p, ctx.scale = p, scale

    @staticmethod
    def backward(ctx, vx, vy):
        x, y, ge, gx, gy, e = ctx.saved_tensors
        hx = hy = dge = None
        with torch.no_grad():
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                hx, hy = cross_hvp(x, y, ge, vx, vy, ctx.p, e, gx, gy, ctx.scale)
            if ctx.needs_input_grad[2]:
                dge = (gx * vx).sum((-1, -2), dtype=ge.dtype) + (gy * vy).sum((-1, -2), dtype=ge.dtype)
        return (*_second_derivatives((hx, hy, dge), (x, y, ge, vx, vy)), None, None, None, None, None)


def _flatten_vmap(t: torch.Tensor, bdim: Optional[int]):
    """A ``vmap`` level's ``[V, B, ...]`` as the op's own batch ``[V * B, ...]``."""
    t = t.movedim(bdim, 0)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:]), t.shape[0]


class Energy(torch.autograd.Function):
    """``(E, G)`` of ``w: [B, N, D]`` on a fused backend; ``E`` is differentiable, ``G`` is not (it is the
    saved gradient). ``vmap`` maps onto the op's own batch dimension."""

    @staticmethod
    def forward(w, backend, p, precision, scale):
        return self_pass(backend, w, p, precision, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        w, _, p, _, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(w, output[0], output[1])
        ctx.p, ctx.scale = p, scale

    @staticmethod
    def backward(ctx, ge, _unused):
        w, e, g = ctx.saved_tensors
        if torch.is_grad_enabled():  # the backward is being differentiated (create_graph, torch.func)
            return GradTimes.apply(w, ge, g, ctx.p, e, ctx.scale), None, None, None, None
        return ge.to(g.dtype)[:, None, None] * g, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, w, backend, p, precision, scale):
        if in_dims[0] is None:
            return Energy.apply(w, backend, p, precision, scale), (None, None)
        flat, v = _flatten_vmap(w, in_dims[0])
        e, g = Energy.apply(flat, backend, p, precision, scale)
        return (e.view(v, -1), g.view(v, -1, *g.shape[1:])), (0, 0)


class CrossEnergy(torch.autograd.Function):
    """``(E, Gx, Gy)`` of ``x: [B, Nx, D]`` against ``y: [B, Ny, D]`` on a fused backend."""

    @staticmethod
    def forward(x, y, backend, p, precision, scale):
        return cross_pass(backend, x, y, p, precision, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, _, p, _, scale = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(x, y, output[0], output[1], output[2])
        ctx.p, ctx.scale = p, scale

    @staticmethod
    def backward(ctx, ge, _gx, _gy):
        x, y, e, gx, gy = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*CrossGradTimes.apply(x, y, ge, gx, gy, ctx.p, e, ctx.scale), None, None, None, None)
        s = ge[:, None, None]
        return s.to(gx.dtype) * gx, s.to(gy.dtype) * gy, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, y, backend, p, precision, scale):
        xd, yd = in_dims[0], in_dims[1]
        if xd is None and yd is None:
            return CrossEnergy.apply(x, y, backend, p, precision, scale), (None, None, None)
        v = info.batch_size
        x = x.movedim(xd, 0) if xd is not None else x.expand(v, *x.shape)
        y = y.movedim(yd, 0) if yd is not None else y.expand(v, *y.shape)
        e, gx, gy = CrossEnergy.apply(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]), backend, p,
                                      precision, scale)
        return (e.view(v, -1), gx.view(v, -1, *gx.shape[1:]), gy.view(v, -1, *gy.shape[1:])), (0, 0, 0)


class EnergyMany(torch.autograd.Function):
    """``E: [K]`` of a list of ``[N_k, D_k]`` matrices in one Triton ragged launch, with the gradients: each
    sum divided by its entry of ``counts`` (the Gaussian kind: the log-means)."""

    @staticmethod
    def forward(p, precision, counts, *ws):
        e, grads = torch.ops.hsu.triton_energy_many_grad(list(ws), list(counts), *p.as_args(), precision)
        return (e, *grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        p, _, counts, *ws = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(output[0], *ws, *output[1:])
        ctx.p, ctx.counts = p, counts

    @staticmethod
    def backward(ctx, ge, *_unused):
        e, *saved = ctx.saved_tensors
        k = len(saved) // 2
        ws, grads = saved[:k], saved[k:]
        if torch.is_grad_enabled():
            return (None, None, None,
                    *(GradTimes.apply(w[None], ge[i:i + 1], g[None], ctx.p, e[i:i + 1], 1.0 / ctx.counts[i])[0]
                      for i, (w, g) in enumerate(zip(ws, grads))))
        return (None, None, None, *(ge[i].to(g.dtype) * g for i, g in enumerate(grads)))
