"""The compiled ops (``torch.ops.hsu.*``): loading, fake kernels and autograd, registered once for every
dispatch key (the CPU kernel in csrc/cpu/, the CUDA kernel in csrc/cuda/).

``energy_grad`` returns the energy *and* its gradient from one pass; the registered backward only scales
the saved gradient by ``grad_output``. The energy is ``scale * sum`` over pairs (``scale`` a trailing
argument, default 1), and for the Gaussian kind (code 4) the log-sum ``log(scale * sum exp(-t d2))`` with
the gradient of that log (SPEC §4). The gradient output itself is not differentiable (no double
backward through the fused ops; use ``backend="reference"`` for higher derivatives).
"""

from __future__ import annotations

from typing import Optional

import torch

_LOAD_ERROR: Optional[BaseException] = None
try:
    from . import _C  # noqa: F401  (importing registers torch.ops.hsu.*)
except ImportError as exc:  # the package still works without its extension (reference / torch backends)
    _LOAD_ERROR = exc


def available() -> bool:
    """True when the compiled extension was built and loaded."""
    return _LOAD_ERROR is None


def has_cuda_kernel() -> bool:
    """True when the extension was built with the CUDA kernel."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("hsu::energy_grad", "CUDA")


def parallel() -> bool:
    """True when the CPU kernel's ``at::parallel_for`` loops run on torch's intra-op threads (the extension
    was compiled with OpenMP, torch's parallel backend); False means they run serially."""
    if not available():
        return False
    from . import _C

    return bool(getattr(_C, "openmp", 0))


def load_error() -> str:
    return "" if _LOAD_ERROR is None else f"{type(_LOAD_ERROR).__name__}: {_LOAD_ERROR}"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if available():

    @torch.library.register_fake("hsu::energy_grad")
    def _energy_grad_fake(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale=1.0):
        torch._check(w.dim() == 3, lambda: "w must have shape [B, N, D]")
        return w.new_empty((w.shape[0],), dtype=_acc_dtype(w.dtype)), torch.empty_like(w)

    @torch.library.register_fake("hsu::cross_energy_grad")
    def _cross_energy_grad_fake(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale=1.0):
        torch._check(x.dim() == 3 and y.dim() == 3, lambda: "x and y must have shape [B, N, D]")
        dt = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
        return x.new_empty((x.shape[0],), dtype=dt), torch.empty_like(x), torch.empty_like(y)

    def _energy_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    def _energy_backward(ctx, grad_energy, grad_grad):
        (g,) = ctx.saved_tensors
        return (grad_energy.to(g.dtype)[:, None, None] * g, None, None, None, None, None, None, None, None)

    def _cross_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1], output[2])

    def _cross_backward(ctx, grad_energy, grad_gx, grad_gy):
        gx, gy = ctx.saved_tensors
        scale = grad_energy[:, None, None]
        return (scale.to(gx.dtype) * gx, scale.to(gy.dtype) * gy, None, None, None, None, None, None, None, None)

    torch.library.register_autograd("hsu::energy_grad", _energy_backward, setup_context=_energy_setup)
    torch.library.register_autograd("hsu::cross_energy_grad", _cross_backward, setup_context=_cross_setup)
