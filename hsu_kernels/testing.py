"""Helpers the test suites share: backend lists, random inputs, and comparisons that explain themselves.

The float32 rule (from flash-attention's tests): a kernel's error against the float64 reference may be at
most about twice the error of the reference itself run in float32, plus a floor of a few float32 ulps
(an error below ~1e-6 relative is rounding, not a bug).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import ops
from .kinds import KIND_TABLE

FP32_FLOOR = 8 * torch.finfo(torch.float32).eps  # ~1e-6


def fast_backends(device: str = "cpu") -> List[str]:
    """Every backend that runs on ``device`` here, except the reference."""
    return [b for b in ops.available_backends(device) if b != "reference"]


def kind_cases(exponents: Tuple[float, ...] = (0.5, 1.0, 2.0), general: Tuple[float, ...] = (3.5,),
               normalize: Optional[bool] = None) -> List[Tuple[str, float]]:
    """``(kind, s)`` for every kind of :data:`hsu_kernels.kinds.KIND_TABLE`, so that suites parametrized by it
    cover a new kind without a fixed list: each power kind with ``s`` giving each specialized exponent in
    ``exponents`` (the kernels' rsqrt, reciprocal and squared-reciprocal forms) and each ``s`` in ``general``,
    the other kinds with ``s = 0``. ``normalize=False``: only the kinds defined on raw rows (distance kinds)."""
    out: List[Tuple[str, float]] = []
    for k in KIND_TABLE:
        if normalize is False and k.angle:
            continue
        if k.power:
            ss = [e / k.power_scale for e in exponents] + list(general)
            out += [(k.name, s) for i, s in enumerate(ss) if s not in ss[:i]]
        else:
            out.append((k.name, 0.0))
    return out


def rand_rows(*shape: int, dtype=torch.float64, device="cpu", seed: Optional[int] = None) -> torch.Tensor:
    """Fresh Gaussian rows (a new draw each call unless ``seed`` is given)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def energy_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``fn(w)`` and the gradient of its sum with respect to ``w`` (a fresh leaf)."""
    w = w.detach().clone().requires_grad_(True)
    e = fn(w)
    (g,) = torch.autograd.grad(e.sum(), w)
    return e.detach(), g


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst error relative to the reference's largest magnitude (norm-wise for tensors, so a single
    tiny entry cannot blow it up)."""
    x, ref = x.detach().double(), ref.detach().double()
    scale = ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((x - ref).abs().max() / scale)


def explain_mismatch(x: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float = 0.0) -> str:
    """How many entries exceed ``atol + rtol * |ref|``, where the worst one is, and its values."""
    x, ref = x.double().reshape(-1), ref.double().reshape(-1)
    bad = (x - ref).abs() > atol + rtol * ref.abs()
    if x.numel() == 0:
        return "empty"
    k = int((x - ref).abs().argmax())
    return (
        f"{int(bad.sum())}/{x.numel()} entries outside rtol={rtol:g} atol={atol:g}; worst at flat index {k}: "
        f"got {x[k].item():.10g}, expected {ref[k].item():.10g} (abs diff {abs(x[k] - ref[k]).item():.3g})"
    )


def assert_close(x: torch.Tensor, ref: torch.Tensor, rtol: float, what: str = "") -> None:
    """Norm-wise relative comparison (see :func:`rel_err`) with a self-explaining failure message."""
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    err = rel_err(x, ref)
    if not err <= rtol:
        scale = float(ref.double().abs().max())
        raise AssertionError(
            f"{what}: relative error {err:.3g} > {rtol:.3g}; " + explain_mismatch(x, ref, 0.0, rtol * scale)
        )


def reference_fp32_error(ref_fn, w64: torch.Tensor, e_ref: torch.Tensor, g_ref: torch.Tensor) -> Tuple[float, float]:
    """The reference's own float32 error (energy, gradient) against its float64 result.

    One float32 evaluation's error is a single draw of rounding noise, sometimes far below typical (for
    N = 2 the whole gradient is one pair). So it is the largest of three draws: the rows as given and
    two random permutations of the coordinates, which leave every energy unchanged but round every dot
    product in a different order. Where the float32 reference fails outright (u_i . u_i rounds to 1
    when eps_norm is far below |w_i|^2, and acos' is infinite), its error is unknown: 5e-6 is used.
    """
    errs_e, errs_g = [], []
    d = w64.shape[-1]
    gen = torch.Generator().manual_seed(d * 7919 + w64.shape[-2])
    for k in range(3):
        perm = torch.arange(d) if k == 0 else torch.randperm(d, generator=gen)
        e_low, g_low = energy_and_grad(ref_fn, w64[..., perm].float())
        if not (torch.isfinite(e_low).all() and torch.isfinite(g_low).all()):
            return 5e-6, 5e-6
        g_back = torch.empty_like(g_low)
        g_back[..., perm] = g_low
        errs_e.append(rel_err(e_low, e_ref))
        errs_g.append(rel_err(g_back, g_ref))
    return max(errs_e), max(errs_g)


def check_against_reference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    ref_fn: Callable[[torch.Tensor], torch.Tensor],
    w64: torch.Tensor,
    dtype: torch.dtype,
    what: str = "",
) -> Dict[str, float]:
    """Compare ``fn`` (energy and gradient) in ``dtype`` with ``ref_fn`` in float64 on the same rows.

    float64: relative error at most 1e-10. float32: at most twice the reference's own float32 error plus
    :data:`FP32_FLOOR`. float16/bfloat16 inputs are computed in float32 by every kernel, so they are held
    to the float32 rule on the rounded inputs, plus one rounding of the gradient to the input dtype.
    """
    if dtype in (torch.float16, torch.bfloat16):
        w64 = w64.to(dtype).double()
    e_ref, g_ref = energy_and_grad(ref_fn, w64)
    e, g = energy_and_grad(fn, w64.to(dtype))
    errs = {"energy": rel_err(e, e_ref), "grad": rel_err(g, g_ref)}
    if dtype == torch.float64:
        tol = {"energy": 1e-10, "grad": 1e-10}
    else:
        half = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps
        ref_e, ref_g = reference_fp32_error(ref_fn, w64, e_ref, g_ref)
        tol = {"energy": 2 * ref_e + FP32_FLOOR, "grad": 2 * ref_g + FP32_FLOOR + half}
    for key, x, ref in (("energy", e, e_ref), ("grad", g, g_ref)):
        if not errs[key] <= tol[key]:
            raise AssertionError(
                f"{what} {dtype} {key}: relative error {errs[key]:.3g} > tolerance {tol[key]:.3g}; "
                + explain_mismatch(x, ref, 0.0, tol[key] * float(ref.double().abs().max()))
            )
    return errs
