"""Triton backend (``backend="triton"``): the fused energy + gradient kernel and its strip path for large D.

Layout: ``kernels.py`` holds the Triton kernels and the per-pair math; ``launch.py`` the host launchers
(strategy by D, precision, ragged batches). The backend contract (the same as ``hsu_kernels/tiled.py``):

    energy_grad(w: Tensor[B, N, D], p) -> (E: Tensor[B], G: Tensor[B, N, D])   E = sum_{i<j}, float32
    cross_energy_grad(x, y, p) -> (E, Gx, Gy)                                   all pairs
    energy_many_grad(ws: list[Tensor[N_k, D_k]], p) -> (E: Tensor[K], [G_k])  a ragged batch

Triton is optional: importing this package never fails; :func:`available` says whether Triton imports.
Inputs are CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` is set before Triton is imported (the
CPU interpreter runs the same kernels, which is how the arithmetic is tested without a GPU).
"""

from __future__ import annotations

_IMPORT_ERROR = None
try:
    from .launch import (  # noqa: F401
        FUSED_MAX_D,
        TF32_MIN_D,
        cross_energy_grad,
        energy_grad,
        energy_many_grad,
    )
except Exception as exc:  # triton missing or broken: the rest of hsu_kernels works without it
    _IMPORT_ERROR = exc


def available() -> bool:
    """True when Triton imports and the kernels compiled into Python functions."""
    return _IMPORT_ERROR is None


def import_error():
    """Why the backend is unavailable (None when it is available)."""
    return _IMPORT_ERROR


__all__ = ["available", "import_error", "energy_grad", "cross_energy_grad", "energy_many_grad"]
