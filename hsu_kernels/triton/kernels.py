"""Triton kernels of the hyperspherical energies (docs/spec.md §2-§6): per-pair math, the fused kernel, and the
three kernels of the row-strip path for large D.

Every kernel walks a *ragged batch*: ``K`` matrices described by per-matrix tables (element offset of the
rows of ``x`` and of ``y``, offset of the first row in the per-row outputs, ``Nx``, ``Ny``, ``D``), and a
2-D grid ``(row blocks of the largest matrix, K)``; programs past the end of a smaller matrix return at once
(the layout of variable-length attention). A batch ``[B, N, D]`` is the uniform case (``UNIFORM=True``):
sizes are scalar arguments, so the compiler knows their divisibility and vectorizes the loads.

Notation of the per-pair terms (the same as ``csrc/hsu_pair.h`` and ``hsu_kernels/tiled.py``): for row ``i``
of ``x`` and row ``j`` of ``y`` with raw dot product ``dot`` and row statistics ``si``/``sj``
(``r = 1/sqrt(|w|^2 + eps_norm)`` when normalizing, ``q = |w|^2`` otherwise)

    e   = psi(i, j)                       phi(g), plus phi(-g) in half-space mode
    cj  : a_i += cj * y_j                 the gradient accumulator of row i
    ci  : b_i += ci                       (un-normalized only) the coefficient of x_i itself

and the row epilogue turns ``(a_i, b_i)`` into ``dE/dx_i`` (docs/spec.md §6):
``r G - r^3 (G . x_i) x_i`` with ``G = scale * a_i`` (normalized) or ``scale * (a_i + b_i x_i)``.

Every kernel that evaluates pairs also writes a per-row flag of the rows the host must recompute
(a close pair, :func:`_close`, whose energy is made NaN, or a term that is not finite; ``launch.row_pass``),
and takes the Gaussian kind as a
log-sum-exp with a running maximum per row.

The kinds are those of :data:`hsu_kernels.kinds.KIND_TABLE`: ``KIND`` is a record's ``code``, compared with
the constexpr codes below (taken from the table, never written as numbers). A kind's term is one branch of
:func:`_phi_x`; whether it is a function of the squared distance or of the angle follows the record's
``angle`` flag (:data:`ANGLE_KINDS`). Every switch on ``KIND`` ends in a compile-time error for a code
without a branch (``tl.static_assert``: the launch fails with the message, under the interpreter too), never
in another kind's formula. A new distance kind is a record in ``kinds.py``, its code constant here and its
branch of :func:`_phi_x`. (The log-sum reduction, the record's ``logsum``, is the Gaussian kind's own code
path, ``KIND == GAUSSIAN``: its log terms ``-t d2`` are :func:`_gauss_logs`.)

Only core Triton operations are used (``exp``, ``log``, ``sqrt``, arithmetic): ``acos`` is a polynomial
(Abramowitz & Stegun 4.4.46, |error| <= 2.2e-8 measured), so the same code runs on GPUs and in the CPU
interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from ..kinds import KIND_CODE, KIND_TABLE
from .configs import (  # noqa: F401  (re-exported: the tests and tools/triton_aot.py reach them here)
    FUSED_SPILLS,
    FUSED_TABLE,
    GEMM_TABLE,
    STRIP_SPILLS,
    STRIP_TABLE,
    _fused_configs,
    _gemm_configs,
    _key,
    _launch_variant,
    _prune_fused,
    _prune_gemm,
    _prune_strip,
    _strip_configs,
    product_mode,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The kind codes ``KIND`` is compared with, from hsu_kernels.kinds (constexpr: the only globals a Triton
# function may read; their values enter each kernel's cache key).
RIESZ = tl.constexpr(KIND_CODE["riesz"])
LOG = tl.constexpr(KIND_CODE["log"])
ANGULAR = tl.constexpr(KIND_CODE["angular"])
ANGULAR_LOG = tl.constexpr(KIND_CODE["angular_log"])
GAUSSIAN = tl.constexpr(KIND_CODE["gaussian"])
#: The angle kinds (the record's ``angle``: the term is a function of ``theta / pi + eps_ang``), as a bit mask
#: of their codes: ``(ANGLE_KINDS >> KIND) & 1``. Any other code is a distance kind, or unknown to
#: :func:`_phi_x`, which rejects it.
ANGLE_KINDS = tl.constexpr(sum(1 << k.code for k in KIND_TABLE if k.angle))

# Exponent modes of x^(-p): 0 general (exp/log), 1 p = 1/2, 2 p = 1, 3 p = 2.
POW_GENERAL, POW_RSQRT, POW_RECIP, POW_RECIP2 = 0, 1, 2, 3


def pow_mode(p: float) -> int:
    """The exponent mode of ``x^(-p)`` (fixed at compile time, so the common exponents skip exp/log)."""
    return {0.5: POW_RSQRT, 1.0: POW_RECIP, 2.0: POW_RECIP2}.get(float(p), POW_GENERAL)


# --------------------------------------------------------------------------------------------------------
# Per-pair math (jit helpers, inlined into every kernel)
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _acos_poly(ax):
    """``P(|x|)`` with ``acos(|x|) = sqrt(1 - |x|) P(|x|)`` (degree 7, A&S 4.4.46)."""
    p = ax * -0.0012624911 + 0.0066700901
    p = p * ax - 0.0170881256
    p = p * ax + 0.0308918810
    p = p * ax - 0.0501743046
    p = p * ax + 0.0889789874
    p = p * ax - 0.2145988016
    p = p * ax + 1.5707963050
    return p


@triton.jit
def _acos(x):
    """acos(x) on [-1, 1], reflected for x < 0."""
    ax = tl.abs(x)
    r = tl.sqrt(tl.maximum(1.0 - ax, 0.0)) * _acos_poly(ax)
    return tl.where(x < 0, 3.141592653589793 - r, r)


@triton.jit
def _pow_neg(x, p, mode):
    """``x^(-p)`` for ``x >= 0`` (``x = 0`` gives inf). ``mode`` (:func:`pow_mode`) is a runtime value: the
    branch is uniform across a launch, and one compiled kernel serves every exponent."""
    if mode == 1:
        y = 1.0 / tl.sqrt(x)
    elif mode == 2:
        y = 1.0 / x
    elif mode == 3:
        y = 1.0 / (x * x)
    else:
        y = tl.exp(-p * tl.log(x))
    return y


@triton.jit
def _phi_x(x, dx, s, t, KIND: tl.constexpr, pmode):
    """The kind's term ``phi(x)`` and ``phi'(x) dx``: ``x`` is ``d2`` for the distance kinds and
    ``a = theta / pi + eps_ang`` for the angle kinds (:data:`ANGLE_KINDS`), ``dx`` the derivative of ``x``
    along the caller's variable (``dtheta/dg`` of the angle kinds; the literal ``1.0`` for ``d2``, which the
    compiler folds away). One branch per record of :data:`hsu_kernels.kinds.KIND_TABLE` (its ``phi``); a code
    without one fails the compile."""
    if KIND == RIESZ:
        half = 0.5 * s
        f = _pow_neg(x, half, pmode)
        df = -half * f / x * dx
    elif KIND == LOG or KIND == ANGULAR_LOG:
        f = -tl.log(x)
        df = -dx / x
    elif KIND == ANGULAR:
        f = _pow_neg(x, s, pmode)
        df = -s * f / x * dx
    elif KIND == GAUSSIAN:
        f = tl.exp(-t * x)
        df = -t * f * dx
    else:
        tl.static_assert(False, f"unknown kind code KIND={KIND}: the Triton kernels have no formula for it "
                                "(hsu_kernels/triton/kernels.py, _phi_x; the codes are hsu_kernels.kinds.KIND_CODE)")
    return f, df


@triton.jit
def _phi_d2(d2, s, t, lim, KIND: tl.constexpr, pmode):
    """``f(d2)`` and ``df/dd2`` of a distance kind, d2 clamped at 0. ``f`` is NaN
    where ``d2 < lim`` (or d2 is NaN): a close pair (:func:`_close`), which poisons its row's energy so that
    the host recomputes the row; the check poisons the input, where ``d2`` is live anyway (no value is kept
    alive through the transcendentals for it)."""
    d2 = tl.where(d2 >= lim, tl.maximum(d2, 0.0), float("nan"))
    f, df = _phi_x(d2, 1.0, s, t, KIND, pmode)
    return f, df


@triton.jit
def _phi_g(g, s, t, eps_ang, tau, KIND: tl.constexpr, pmode):
    """``phi(g)`` and ``dphi/dg`` for normalized rows (docs/spec.md §3); ``phi`` is NaN where
    ``1 - |g| < tau`` (see :func:`_phi_d2`)."""
    if (ANGLE_KINDS >> KIND) & 1:
        gc = tl.minimum(tl.maximum(g, -1.0), 1.0)
        a = tl.where(1.0 - tl.abs(gc) >= tau, _acos(gc) * 0.3183098861837907 + eps_ang, float("nan"))
        # (1-g)(1+g) keeps its relative accuracy near |g| = 1, where 1 - g*g cancels.
        sin_t = tl.sqrt(tl.maximum((1.0 - gc) * (1.0 + gc), 0.0))
        dtheta = -0.3183098861837907 / sin_t
        f, df = _phi_x(a, dtheta, s, t, KIND, pmode)
    else:
        # a distance kind, of d2 = 2 - 2g; both sides, as the angular kinds: near g = -1 the row's gradient is
        # nearly radial and the float32 epilogue cannot resolve it (two antipodes at D = 1)
        gq = tl.where(1.0 - tl.abs(g) >= tau, g, float("nan"))
        f, dfd = _phi_d2(2.0 - 2.0 * gq, s, t, 0.0, KIND, pmode)
        df = -2.0 * dfd
    return f, df


@triton.jit
def _pair_terms(dot, si, sj, s, t, eps_ang, tau, KIND: tl.constexpr, pmode, hs, NORM: tl.constexpr):
    """``(e, cj, ci)`` of a tile of pairs (see the module docstring); ``si`` is ``[M, 1]``, ``sj`` ``[1, N]``.
    ``e`` is NaN for the pairs :func:`_close` names (the host recomputes their rows)."""
    if NORM:
        g = dot * si * sj
        e, c = _phi_g(g, s, t, eps_ang, tau, KIND, pmode)
        if hs != 0:
            e2, c2 = _phi_g(-g, s, t, eps_ang, tau, KIND, pmode)
            e = e + e2
            c = c - c2
        cj = c * sj
        ci = cj
    else:
        lim = tau * (si + sj)
        e, df = _phi_d2(si + sj - 2.0 * dot, s, t, lim, KIND, pmode)
        cj = -2.0 * df
        ci = 2.0 * df
        if hs != 0:
            e2, df2 = _phi_d2(si + sj + 2.0 * dot, s, t, lim, KIND, pmode)
            e = e + e2
            cj = cj + 2.0 * df2
            ci = ci + 2.0 * df2
    return e, cj, ci


@triton.jit
def _finite(v):
    """Whether ``v`` is finite (NaN compares false)."""
    return tl.abs(v) < 3.4028234663852886e38


@triton.jit
def _close(dot, si, sj, tau, hs, NORM: tl.constexpr):
    """The pairs of a tile that the fused path cannot get right from a float32 product (docs/spec.md §5):
    ``1 - |g| < tau`` (normalized), or an expanded distance (to ``y_j``, and to ``-y_j`` in half-space mode)
    below ``tau (|x_i|^2 + |y_j|^2)`` or not a number (un-normalized). Their rows are recomputed by the
    host's fix-up (``launch.py``), so the fast path needs no branch of its own for them."""
    if NORM:
        g = dot * si * sj
        close = (1.0 - tl.abs(g)) < tau
    else:
        sm = si + sj
        close = ~((sm - 2.0 * dot) >= tau * sm)
        if hs != 0:
            close = close | ~((sm + 2.0 * dot) >= tau * sm)
    return close


@triton.jit
def _gauss_logs(dot, si, sj, t, NORM: tl.constexpr):
    """The Gaussian kind's log terms ``x1 = -t d2`` (to ``y_j``) and ``x2`` (to ``-y_j``; half-space only,
    else unused) of a tile (docs/spec.md §4: the kind is reduced as a log-sum-exp)."""
    if NORM:
        g = tl.minimum(tl.maximum(dot * si * sj, -1.0), 1.0)
        x1 = -t * (2.0 - 2.0 * g)
        x2 = -t * (2.0 + 2.0 * g)
    else:
        sm = si + sj
        x1 = -t * tl.maximum(sm - 2.0 * dot, 0.0)
        x2 = -t * tl.maximum(sm + 2.0 * dot, 0.0)
    return x1, x2


@triton.jit
def _gauss_coefs(w1, w2, sj, t, hs, NORM: tl.constexpr):
    """``(e, cj, ci)`` of a Gaussian tile from its weights ``w1 = exp(x1 - m)``, ``w2`` (the row's shift
    ``m``): the same coefficients as :func:`_pair_terms` with ``exp(-t d2)`` replaced by the weights."""
    if hs != 0:
        e = w1 + w2
        c = 2.0 * t * (w1 - w2)
        ci = -2.0 * t * (w1 + w2)
    else:
        e = w1
        c = 2.0 * t * w1
        ci = -2.0 * t * w1
    if NORM:
        cj = c * sj
        ci = cj
    else:
        cj = c
    return e, cj, ci


@triton.jit
def _diag_terms(sq, s, t, eps_norm, eps_ang, KIND: tl.constexpr, pmode, NORM: tl.constexpr):
    """The half-space self pair ``(w_i, -w_i)``: its energy and ``k`` with ``dE/dw_i += k w_i``.

    Normalized, ``g_ii = -|w|^2/n^2`` with ``n^2 = |w|^2 + eps_norm`` rounds to exactly -1 in float32 once
    ``|w|^2`` is large (D in the thousands), where the angular derivative has ``1/sin(theta)``; so the
    angular kinds take ``1 + g_ii = eps/n^2`` and ``sin^2 = eps (2|w|^2 + eps) / n^4`` in closed form."""
    if NORM:
        n2 = sq + eps_norm
        if (ANGLE_KINDS >> KIND) & 1:
            ax = sq / n2
            theta = 3.141592653589793 - tl.sqrt(eps_norm / n2) * _acos_poly(ax)
            a = theta * 0.3183098861837907 + eps_ang
            dtheta = -0.3183098861837907 * n2 / tl.sqrt(eps_norm * (2.0 * sq + eps_norm))
            f, df = _phi_x(a, dtheta, s, t, KIND, pmode)
        else:
            f, df = _phi_g(-(sq / n2), s, t, eps_ang, 0.0, KIND, pmode)
        # d g_ii / d w_i = 2 eps w_i / n^4; with eps_norm = 0 the term is exactly 0 (never 0 * inf).
        k = tl.where(eps_norm > 0, -df * 2.0 * eps_norm / (n2 * n2), 0.0)
    else:
        f, df = _phi_d2(4.0 * sq, s, t, 0.0, KIND, pmode)
        k = 8.0 * df
    return f, k


@triton.jit
def _row_stat(sq, eps_norm, NORM: tl.constexpr):
    if NORM:
        st = 1.0 / tl.sqrt(sq + eps_norm)
    else:
        st = sq
    return st


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32. ``UPCAST`` (interpreter only) multiplies 16-bit operands as fp32, which is
    exact for their products; the interpreter's native 16-bit dot is not usable."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def _matrix(k, K, tab_ptr, nx_u, ny_u, d_u, UNIFORM: tl.constexpr):
    """Sizes and offsets of matrix ``k``: (nx, ny, D, x element offset, y element offset, first output row,
    first coefficient element). ``tab_ptr`` is an int64 ``[7, K]`` table (ragged) or unused (uniform)."""
    if UNIFORM:  # the launcher takes this layout only for D % 16 == 0 (launch.UNIFORM_D_MULTIPLE)
        nx = nx_u
        ny = ny_u
        D = tl.multiple_of(d_u, 16)
        kk = k.to(tl.int64)
        xoff = kk * nx * D
        yoff = kk * ny * D
        xrow = kk * nx
        cbase = kk * nx * ny
    else:
        nx = tl.load(tab_ptr + 0 * K + k)
        ny = tl.load(tab_ptr + 1 * K + k)
        D = tl.load(tab_ptr + 2 * K + k)
        xoff = tl.load(tab_ptr + 3 * K + k)
        yoff = tl.load(tab_ptr + 4 * K + k)
        xrow = tl.load(tab_ptr + 5 * K + k)
        cbase = tl.load(tab_ptr + 6 * K + k)
    return nx, ny, D, xoff, yoff, xrow, cbase


# --------------------------------------------------------------------------------------------------------
# Autotuning
# --------------------------------------------------------------------------------------------------------
# Keys: N_KEY (the largest N, bucketed to a power of two by the host), D_KEY (the padded D), the kind and
# mode flags, the product precisions; Triton adds the tensor dtypes. The configs and their pruners are in
# configs.py (under the interpreter one small config keeps tests fast).


_KEYS = ["N_KEY", "D_KEY", "KIND", "hs", "NORM", "self_pairs"]
#: Every integer argument of a kernel is exempt from Triton's specialization on its value (an int equal to 1
#: becomes a constant, one divisible by 16 gets an alignment attribute: each a different compiled kernel).
#: So the compiled kernels are exactly one per config and constexpr set, which is what the spill gate
#: (``tools/triton_aot.py``) compiles and gates; what a size's divisibility would give the uniform layout,
#: ``_matrix`` states with ``tl.multiple_of``.
_RUNTIME_INTS = ["K", "k_base", "nx_u", "ny_u", "d_u", "row_lo", "row_hi", "hs", "self_pairs", "pmode", "diag",
                 "N_KEY", "D_KEY"]


# --------------------------------------------------------------------------------------------------------
# The fused kernel (D <= FUSED_MAX_D): energy and gradient in one pass, nothing N x N stored
# --------------------------------------------------------------------------------------------------------


@triton.autotune(
    configs=_fused_configs(),
    key=_KEYS + ["UNIFORM", "BLOCK_D", "PREC", "C_DTYPE"],
    prune_configs_by={"early_config_prune": _prune_fused},
)
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def fused_kernel(
    x_ptr, y_ptr, g_ptr, e_ptr, f_ptr, tab_ptr, K, k_base,
    nx_u, ny_u, d_u,
    s, t, eps_norm, eps_ang, pair_scale, grad_scale, tau,
    hs, self_pairs, pmode, diag,
    N_KEY, D_KEY,
    KIND: tl.constexpr, NORM: tl.constexpr, UNIFORM: tl.constexpr, PREC: tl.constexpr, PREC2: tl.constexpr,
    C_DTYPE: tl.constexpr, UPCAST: tl.constexpr, EPI: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: rows ``[row0, row0 + BLOCK_M)`` of matrix ``k`` against every row of its ``y``.

    Writes ``e[xrow + i] = pair_scale * sum_j psi_ij (+ diagonal term)`` (fp32), ``g[x_i] = dE/dx_i`` and
    ``f[xrow + i]``, 1 where the row's energy is not finite: a close pair (:func:`_close`; its energy is
    NaN) or a term that overflowed; the host recomputes such rows, and those whose gradient is not finite.
    The Gaussian kind is an online log-sum-exp (running maximum per row, as attention's softmax):
    ``e`` is the row's ``log sum_j exp(-t d2_ij)`` and ``g`` the gradient of that row sum divided by the sum.

    Flags: ``KIND``, ``NORM`` and ``UNIFORM`` change what each pair holds and are compiled in; ``hs``
    (half-space), ``self_pairs`` (skip ``j == i``), ``pmode`` (the exponent mode) and ``diag`` (add the
    half-space self pair) are runtime ints, branches uniform across the launch, so that one compiled kernel
    per config serves them all (see :data:`_RUNTIME_INTS`). ``k_base`` is the first matrix of the launch (a
    batch of more matrices than the grid's y axis holds takes several launches): matrix ``k_base + y``.
    """
    pid = tl.program_id(0)
    k = k_base + tl.program_id(1)
    nx, ny, D, xoff, yoff, xrow, cbase = _matrix(k, K, tab_ptr, nx_u, ny_u, d_u, UNIFORM)
    row0 = pid * BLOCK_M
    if row0 >= nx:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < nx
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    xi_off = xoff + rows[:, None].to(tl.int64) * D + offs_d[None, :]
    xi = tl.load(x_ptr + xi_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
    xi32 = xi.to(tl.float32)
    sq_i = tl.sum(xi32 * xi32, 1)
    si = _row_stat(sq_i, eps_norm, NORM)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    e_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_run = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for c0 in range(0, ny, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < ny
        y_rows = y_ptr + yoff + cols[:, None].to(tl.int64) * D
        yj = tl.load(y_rows + offs_d[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        yj32 = yj.to(tl.float32)
        sj = _row_stat(tl.sum(yj32 * yj32, 1), eps_norm, NORM)
        if BLOCK_K < BLOCK_D:
            # Long rows: the product x_I y_J^T over D in chunks re-read from L1/L2, so that neither operand is
            # held whole in the product's register layout (those copies of the two row tiles spill).
            dot = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for d0 in tl.static_range(0, BLOCK_D, BLOCK_K):
                offs_c = d0 + tl.arange(0, BLOCK_K)
                cm = offs_c < D
                xc = tl.load(x_ptr + xoff + rows[:, None].to(tl.int64) * D + offs_c[None, :],
                             mask=rmask[:, None] & cm[None, :], other=0.0)
                yc = tl.load(y_rows + offs_c[None, :], mask=cmask[:, None] & cm[None, :], other=0.0)
                dot = _mma(xc, tl.trans(yc), dot, PREC, UPCAST)
        else:
            dot = _mma(xi, tl.trans(yj), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), PREC, UPCAST)
        valid = rmask[:, None] & cmask[None, :]
        if self_pairs != 0:
            valid = valid & (rows[:, None] != cols[None, :])
        if KIND == GAUSSIAN:
            x1, x2 = _gauss_logs(dot, si[:, None], sj[None, :], t, NORM)
            x1 = tl.where(valid, x1, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(x1, 1))
            if hs != 0:
                x2 = tl.where(valid, x2, float("-inf"))
                m_new = tl.maximum(m_new, tl.max(x2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_run - m_safe)  # the earlier tiles' weights, moved to the new maximum
            acc = acc * alpha[:, None]
            e_acc = e_acc * alpha
            b_acc = b_acc * alpha
            m_run = m_new
            w1 = tl.exp(x1 - m_safe[:, None])
            w2 = w1
            if hs != 0:
                w2 = tl.exp(x2 - m_safe[:, None])
            e, cj, ci = _gauss_coefs(w1, w2, sj[None, :], t, hs, NORM)
            e = tl.where(_close(dot, si[:, None], sj[None, :], tau, hs, NORM), float("nan"), e)
        else:
            # A close pair's energy is NaN (_phi_d2, _phi_g), which flags its row at the end, with no count
            # per tile (the tiles of the angular variant are at the register limit); a term or coefficient
            # that is not finite shows in the row's energy or gradient.
            e, cj, ci = _pair_terms(dot, si[:, None], sj[None, :], s, t, eps_ang, tau, KIND, pmode, hs, NORM)
        # where, never a product with the mask: masked lanes may hold inf/NaN (zero rows of the padding).
        e_acc += tl.sum(tl.where(valid, e, 0.0), 1)
        if not NORM:
            b_acc += tl.sum(tl.where(valid, ci, 0.0), 1)
        cj = tl.where(valid, cj, 0.0)
        acc = _mma(cj.to(C_DTYPE), yj.to(C_DTYPE), acc, PREC2, UPCAST)

    if BLOCK_K < BLOCK_D:  # reloaded rather than kept live through the loop
        xi32 = tl.load(x_ptr + xi_off, mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    # Row epilogue (docs/spec.md §6) in EPI precision: its two normalized terms cancel when a row's gradient is
    # nearly radial.
    if KIND == GAUSSIAN:  # the row's log-sum; its gradient relative to the row sum (0 for a row without pairs)
        e_row = m_run + tl.log(e_acc)
        inv_s = tl.where(e_acc > 0, 1.0 / e_acc, 0.0)
        acc = acc * inv_s[:, None]
        b_acc = b_acc * inv_s
    else:
        e_row = pair_scale * e_acc
    xe = xi32.to(EPI)  # via fp32: the interpreter cannot convert bf16 to fp64 directly
    acc_e = acc.to(EPI)
    kd = tl.zeros([BLOCK_M], dtype=EPI)
    if diag != 0:
        ed, kd32 = _diag_terms(sq_i, s, t, eps_norm, eps_ang, KIND, pmode, NORM)
        e_row += ed
        kd = kd32.to(EPI)
    if NORM:
        r_e = 1.0 / tl.sqrt(tl.sum(xe * xe, 1) + eps_norm)
        gw = tl.sum(acc_e * xe, 1)
        ca = grad_scale * r_e
        cx = kd - r_e * r_e * r_e * grad_scale * gw
    else:
        ca = tl.zeros([BLOCK_M], dtype=EPI) + grad_scale
        cx = kd + grad_scale * b_acc.to(EPI)
    grad = ca[:, None] * acc_e + cx[:, None] * xe
    tl.store(g_ptr + xi_off, grad.to(tl.float32).to(g_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    tl.store(e_ptr + xrow + rows, e_row, mask=rmask)
    tl.store(f_ptr + xrow + rows, tl.where(_finite(e_row), 0, 1), mask=rmask)


# --------------------------------------------------------------------------------------------------------
# The row-strip path (D > FUSED_MAX_D): coefficients, then a GEMM, then the row epilogue
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _strip_tile(x_rows, y_rows, rmask, cmask, D, eps_norm, NORM: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The raw products of a tile of the strip path and the row statistics of both sides, over D in chunks
    of ``BLOCK_K`` (so nothing is precomputed on the host)."""
    offs_k = tl.arange(0, BLOCK_K)
    dot = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    sq_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    sq_j = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        dm = (d0 + offs_k) < D
        xc = tl.load(x_rows + d0 + offs_k[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
        yc = tl.load(y_rows + d0 + offs_k[None, :], mask=cmask[:, None] & dm[None, :], other=0.0)
        dot = _mma(xc, tl.trans(yc), dot, PREC, UPCAST)
        xc32 = xc.to(tl.float32)
        yc32 = yc.to(tl.float32)
        sq_i += tl.sum(xc32 * xc32, 1)
        sq_j += tl.sum(yc32 * yc32, 1)
    return dot, _row_stat(sq_i, eps_norm, NORM), _row_stat(sq_j, eps_norm, NORM)


@triton.autotune(configs=_strip_configs(), key=_KEYS + ["PREC"],
                 prune_configs_by={"early_config_prune": _prune_strip})
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def coef_kernel(
    x_ptr, y_ptr, c_ptr, e_ptr, b_ptr, f_ptr, tab_ptr, K,
    nx_u, ny_u, d_u, row_lo, row_hi,
    s, t, eps_norm, eps_ang, pair_scale, tau,
    hs, self_pairs, pmode,
    N_KEY, D_KEY,
    KIND: tl.constexpr, NORM: tl.constexpr, UNIFORM: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Rows ``[row_lo, row_hi)`` (of every matrix): the coefficient matrix ``C[i - row_lo, j] = cj_ij``
    (stored in ``c_ptr``'s dtype at ``cbase``), row energies ``e``, (un-normalized) ``b``, and ``f``, the
    rows' flags (as :func:`fused_kernel`).

    The Gaussian kind takes two sweeps over the columns: the first finds each row's maximum log term and
    its sum of weights, the second stores the coefficients relative to that sum (``e`` is the row's
    log-sum, as in :func:`fused_kernel`)."""
    pid = tl.program_id(0)
    k = tl.program_id(1)
    nx, ny, D, xoff, yoff, xrow, cbase = _matrix(k, K, tab_ptr, nx_u, ny_u, d_u, UNIFORM)
    row0 = row_lo + pid * BLOCK_M
    row_end = tl.minimum(nx, row_hi)
    if row0 >= row_end:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < row_end
    x_rows = x_ptr + xoff + rows[:, None].to(tl.int64) * D
    e_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    c_rows = c_ptr + cbase + (rows - row_lo)[:, None].to(tl.int64) * ny
    shift = tl.zeros([BLOCK_M], dtype=tl.float32)
    if KIND == GAUSSIAN:
        m_run = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        s_run = tl.zeros([BLOCK_M], dtype=tl.float32)
        for c0 in range(0, ny, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < ny
            y_rows = y_ptr + yoff + cols[:, None].to(tl.int64) * D
            dot, si, sj = _strip_tile(x_rows, y_rows, rmask, cmask, D, eps_norm, NORM, PREC, UPCAST,
                                      BLOCK_M, BLOCK_N, BLOCK_K)
            valid = rmask[:, None] & cmask[None, :]
            if self_pairs != 0:
                valid = valid & (rows[:, None] != cols[None, :])
            x1, x2 = _gauss_logs(dot, si[:, None], sj[None, :], t, NORM)
            x1 = tl.where(valid, x1, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(x1, 1))
            if hs != 0:
                x2 = tl.where(valid, x2, float("-inf"))
                m_new = tl.maximum(m_new, tl.max(x2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_run = s_run * tl.exp(m_run - m_safe) + tl.sum(tl.exp(x1 - m_safe[:, None]), 1)
            if hs != 0:
                s_run += tl.sum(tl.exp(x2 - m_safe[:, None]), 1)
            m_run = m_new
        # weights relative to the row sum: exp(x - m - log s); a row without pairs gets weights 0
        shift = tl.where(s_run > 0, tl.where(m_run == float("-inf"), 0.0, m_run) + tl.log(s_run),
                         float("inf"))
    for c0 in range(0, ny, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < ny
        y_rows = y_ptr + yoff + cols[:, None].to(tl.int64) * D
        dot, si, sj = _strip_tile(x_rows, y_rows, rmask, cmask, D, eps_norm, NORM, PREC, UPCAST,
                                  BLOCK_M, BLOCK_N, BLOCK_K)
        valid = rmask[:, None] & cmask[None, :]
        if self_pairs != 0:
            valid = valid & (rows[:, None] != cols[None, :])
        if KIND == GAUSSIAN:
            x1, x2 = _gauss_logs(dot, si[:, None], sj[None, :], t, NORM)
            w1 = tl.exp(x1 - shift[:, None])
            w2 = w1
            if hs != 0:
                w2 = tl.exp(x2 - shift[:, None])
            e, cj, ci = _gauss_coefs(w1, w2, sj[None, :], t, hs, NORM)
            e = tl.where(_close(dot, si[:, None], sj[None, :], tau, hs, NORM), float("nan"), e)
        else:  # close pairs: NaN energies, as in fused_kernel
            e, cj, ci = _pair_terms(dot, si[:, None], sj[None, :], s, t, eps_ang, tau, KIND, pmode, hs, NORM)
        e_acc += tl.sum(tl.where(valid, e, 0.0), 1)
        if not NORM:
            b_acc += tl.sum(tl.where(valid, ci, 0.0), 1)
        tl.store(c_rows + cols[None, :], tl.where(valid, cj, 0.0).to(c_ptr.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])
    if KIND == GAUSSIAN:
        e_row = tl.where(e_acc > 0, shift + tl.log(e_acc), float("-inf"))
    else:
        e_row = pair_scale * e_acc
    tl.store(e_ptr + xrow + rows, e_row, mask=rmask)
    tl.store(b_ptr + xrow + rows, b_acc, mask=rmask)
    tl.store(f_ptr + xrow + rows, tl.where(_finite(e_row), 0, 1), mask=rmask)


@triton.autotune(configs=_gemm_configs(), key=_KEYS + ["PREC2", "C_DTYPE"],
                 prune_configs_by={"early_config_prune": _prune_gemm})
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def gemm_kernel(
    c_ptr, y_ptr, a_ptr, tab_ptr, K,
    nx_u, ny_u, d_u, row_lo, row_hi,
    hs, self_pairs,
    N_KEY, D_KEY,
    KIND: tl.constexpr, NORM: tl.constexpr,
    UNIFORM: tl.constexpr, PREC2: tl.constexpr, C_DTYPE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``a[i, d] = sum_j C[i - row_lo, j] y[j, d]`` for rows ``[row_lo, row_hi)``, fp32 out, x's layout.
    Grid ``(row blocks, D blocks, K)``; the kind flags are autotuning keys only."""
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    k = tl.program_id(2)
    nx, ny, D, xoff, yoff, xrow, cbase = _matrix(k, K, tab_ptr, nx_u, ny_u, d_u, UNIFORM)
    row0 = row_lo + pid * BLOCK_M
    row_end = tl.minimum(nx, row_hi)
    d0 = pid_d * BLOCK_D
    if row0 >= row_end or d0 >= D:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < row_end
    offs_d = d0 + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    offs_k = tl.arange(0, BLOCK_K)
    c_rows = c_ptr + cbase + (rows - row_lo)[:, None].to(tl.int64) * ny
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for c0 in range(0, ny, BLOCK_K):
        cols = c0 + offs_k
        cmask = cols < ny
        ct = tl.load(c_rows + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        yt = tl.load(y_ptr + yoff + cols[:, None].to(tl.int64) * D + offs_d[None, :],
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = _mma(ct.to(C_DTYPE), yt.to(C_DTYPE), acc, PREC2, UPCAST)
    tl.store(a_ptr + xoff + rows[:, None].to(tl.int64) * D + offs_d[None, :], acc,
             mask=rmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def epilogue_kernel(
    x_ptr, a_ptr, b_ptr, e_ptr, g_ptr, tab_ptr, K,
    nx_u, ny_u, d_u,
    s, t, eps_norm, eps_ang, grad_scale,
    pmode, diag,
    KIND: tl.constexpr, NORM: tl.constexpr, UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The row epilogue of the strip path (docs/spec.md §6) over D in chunks: one pass for ``|x_i|^2`` and
    ``G . x_i``, one to write ``dE/dx_i``; adds the half-space diagonal term to ``e`` and ``g``."""
    pid = tl.program_id(0)
    k = tl.program_id(1)
    nx, ny, D, xoff, yoff, xrow, cbase = _matrix(k, K, tab_ptr, nx_u, ny_u, d_u, UNIFORM)
    row0 = pid * BLOCK_M
    if row0 >= nx:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < nx
    offs = tl.arange(0, BLOCK_D)
    base = xoff + rows[:, None].to(tl.int64) * D
    sq = tl.zeros([BLOCK_M], dtype=tl.float64)
    aw = tl.zeros([BLOCK_M], dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        m = rmask[:, None] & ((d0 + offs) < D)[None, :]
        xc = tl.load(x_ptr + base + d0 + offs[None, :], mask=m, other=0.0).to(tl.float32).to(tl.float64)
        ac = tl.load(a_ptr + base + d0 + offs[None, :], mask=m, other=0.0).to(tl.float64)
        sq += tl.sum(xc * xc, 1)
        aw += tl.sum(ac * xc, 1)
    b = tl.load(b_ptr + xrow + rows, mask=rmask, other=0.0).to(tl.float64)
    r = 1.0 / tl.sqrt(sq + eps_norm)
    kd = tl.zeros([BLOCK_M], dtype=tl.float64)
    if diag != 0:
        ed, kd32 = _diag_terms(sq.to(tl.float32), s, t, eps_norm, eps_ang, KIND, pmode, NORM)
        kd = kd32.to(tl.float64)
        e_old = tl.load(e_ptr + xrow + rows, mask=rmask, other=0.0)
        tl.store(e_ptr + xrow + rows, e_old + ed, mask=rmask)
    # In float64 (the two normalized terms cancel for nearly radial gradients).
    # normalized: r G - r^3 (G . x) x + k x with G = scale a;  un-normalized: scale (a + b x) + k x
    if NORM:
        ca = grad_scale * r
        cx = kd - r * r * r * grad_scale * aw
    else:
        ca = tl.zeros([BLOCK_M], dtype=tl.float64) + grad_scale
        cx = kd + grad_scale * b
    for d0 in range(0, D, BLOCK_D):
        m = rmask[:, None] & ((d0 + offs) < D)[None, :]
        xc = tl.load(x_ptr + base + d0 + offs[None, :], mask=m, other=0.0).to(tl.float32).to(tl.float64)
        ac = tl.load(a_ptr + base + d0 + offs[None, :], mask=m, other=0.0).to(tl.float64)
        gr = ca[:, None] * ac + cx[:, None] * xc
        tl.store(g_ptr + base + d0 + offs[None, :], gr.to(tl.float32).to(g_ptr.dtype.element_ty), mask=m)
