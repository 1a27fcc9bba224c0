"""The compiled ops (``torch.ops.hsu.*``): loading, fake kernels and autograd, registered once for every
dispatch key (the CPU kernel in csrc/cpu/, the CUDA kernel in csrc/cuda/).

``energy_grad`` returns the energy *and* its gradient from one pass; the registered backward only scales
the saved gradient by ``grad_output``. The energy is ``scale * sum`` over pairs (``scale`` a trailing
argument, default 1), and for the Gaussian kind (code 4) the log-sum ``log(scale * sum exp(-t d2))`` with
the gradient of that log (docs/spec.md §4). The gradient output itself is not differentiable (it is marked
so: using it in a loss raises). Second derivatives of the energy work as through the public functions (see
``_autograd.py``); the public functions wrap the ops in their own autograd Functions, which also support
``torch.func``. Autocast kernels (csrc/hsu_autocast.cpp) make the ops compute in float32/float64 under any
``torch.autocast``.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch


def built_against() -> Optional[str]:
    """The torch version the extension was compiled against, as setup.py recorded it beside the extension
    (``hsu_kernels/_build_info.py``); None when there is no record (no build, or one from elsewhere)."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:
        return None
    return str(TORCH_VERSION)


def version_mismatch(built: Optional[str], running: str) -> Optional[str]:
    """The message for an extension built against torch ``built`` and imported under torch ``running``,
    or None when they agree (or nothing was recorded)."""
    if built is None or built == running:
        return None
    return (f"hsu_kernels._C was built against torch {built} but torch {running} is running, so it is not "
            f"loaded (torch's C++ ABI changes between versions; the 'reference', 'torch' and 'triton' backends "
            f"still work). Rebuild it against this torch, in the source folder: "
            f"pip install --no-build-isolation .  (a clone: pip install --no-build-isolation -e . or make build)")


_LOAD_ERROR: Optional[BaseException] = None
_MISMATCH = version_mismatch(built_against(), str(torch.__version__))
try:
    if _MISMATCH is not None:  # loading it could crash or misbehave: never load it, and say so once
        warnings.warn(_MISMATCH, RuntimeWarning)
        raise ImportError(_MISMATCH)
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


if available():
    from ._params import compute_dtype

    @torch.library.register_fake("hsu::energy_grad")
    def _energy_grad_fake(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale=1.0):
        torch._check(w.dim() == 3, lambda: "w must have shape [B, N, D]")
        return w.new_empty((w.shape[0],), dtype=compute_dtype(w.dtype)), torch.empty_like(w)

    @torch.library.register_fake("hsu::cross_energy_grad")
    def _cross_energy_grad_fake(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale=1.0):
        torch._check(x.dim() == 3 and y.dim() == 3, lambda: "x and y must have shape [B, N, D]")
        dt = compute_dtype(x.dtype, y.dtype)
        return x.new_empty((x.shape[0],), dtype=dt), torch.empty_like(x), torch.empty_like(y)

    from ._autograd import register_op_autograd

    register_op_autograd("hsu::energy_grad", cross=False)
    register_op_autograd("hsu::cross_energy_grad", cross=True)
