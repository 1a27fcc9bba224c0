"""Host side of the Triton backend: strategy choice, launchers, and the ragged ``energy_many`` Function.

Strategies, chosen by the largest row length ``D`` of a launch:

* ``fused`` (``D <= FUSED_MAX_D = 256``): one kernel. Each program keeps its rows ``x_I`` and the gradient
  accumulator ``a_I`` (``BLOCK_M x BLOCK_D`` fp32) in registers and streams the column blocks: ``S = x_I y_J^T``
  by ``tl.dot``, ``phi``/``phi'`` on ``S`` in registers, ``a_I += phi'(S) y_J``, and the row epilogue at the end.
  Nothing ``N x N`` is stored and the gradient costs no second pass (attention-forward style).
* ``strip`` (``D > 256``, conv layers up to 4608): a register accumulator of the whole row no longer fits,
  and splitting D with the cosine tile recomputed would redo the ``2 N^2 D`` product once per D chunk (18x at
  D = 4608). Instead a strip of rows is done in three kernels: ``coef_kernel`` (the cosine tile accumulated over
  D in chunks, then ``phi``/``phi'``; writes the coefficient strip ``C``, ``Rows x N``, and the row energies),
  ``gemm_kernel`` (``a = C y``, tiled over rows and D) and ``epilogue_kernel``. Each product is done exactly
  once; the only extra traffic is writing and reading ``C`` once, small next to ``4 N^2 D`` flops when D > 256.
  Strips are sized so that ``C`` stays under ``STRIP_BYTES``; the whole ragged batch goes in one strip when
  it fits (the usual case for a network's layers: 3 launches for all of them).

Precision (float32 inputs, ``precision=``): ``"ieee"`` (exact fp32 products) or ``"tf32"`` (tensor cores,
inputs rounded to 10 mantissa bits, ~5e-4 relative error in each cosine, which ``2 - 2g`` amplifies for nearly
parallel rows). Default: ``"ieee"`` when ``D < TF32_MIN_D = 128``, where the per-pair transcendentals, not the
products, bound the kernel and tf32 would lose accuracy for nothing; for larger D, ``"tf32"`` only if the user
opted in with ``torch.set_float32_matmul_precision("high"|"medium")``, else ``"ieee"``. bf16 inputs: their
products are exact in the fp32 accumulator; the second product ``phi'(S) y`` takes ``phi'`` rounded to bf16
(as attention does with ``P``). fp16 inputs run the float32 kernels on a float32 copy (O(N D)) with tf32
products: tf32 holds every float16 value exactly, so the first product is exact, and the second takes
``phi'`` in tf32 (float16's range cannot hold ``phi'`` of close pairs); the gradient is rounded to float16
once. (A float16 variant of the kernels would only halve their loads: at D <= 256 the per-pair math bounds
them, and every variant is one more set of kernels to compile and gate, ``tools/triton_aot.py``.) float64 is not
supported (TypeError): use ``backend="torch"``/``"cpu"``/``"cuda"``.

Determinism: no atomics anywhere. Every output element is written by exactly one program, per-row energies
are reduced on the host in float64 in a fixed order, so two runs give bitwise the same result. The price:
each unordered pair is evaluated from both of its rows. Visiting only tiles with ``i <= j`` would halve the
transcendentals but must add the column side's gradient into rows owned by other programs (atomics, or a
partial-gradient buffer of ``N^2 D / BLOCK_M`` elements); it is not implemented, since whether it wins can
only be measured on a GPU.

Numerics (docs/spec.md §5, docs/precision.md; issue 13), in :func:`row_pass`: the kernels flag the rows
they cannot be trusted with (a pair whose float32 ``1 - |g|`` is below :data:`CLOSE_TAU`, or whose expanded
distance is below that fraction of ``|x_i|^2 + |x_j|^2``: its energy is made NaN; an energy that is not
finite) in an int32 per row written by the row's own program; those rows, rows whose gradient is not finite,
and normalized rows the power-of-two rescaling could not make safe (see :data:`SAFE_EXP`), are recomputed
whole in float64 by the torch backend's row pass (:func:`_fix_rows`: close pairs from coordinate
differences). A pass costs one host sync (the ``any`` of the flags). The Gaussian kind
is an online log-sum-exp (per row in the kernels; rows and matrices combined in float64 here).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .. import tiled
from .._params import EnergyParams, check_precision
from . import kernels as K

FUSED_MAX_D = 256
TF32_MIN_D = 128
#: Largest coefficient strip (bytes) of the strip path; rows per strip follow from it.
STRIP_BYTES = 1 << 30
#: The fused kernel's row epilogue precision. float32: float64 changed the gradient's RMS error by under 15%
#: in every case measured (the fp32 accumulator's own error dominates), and would double the epilogue's
#: registers next to a BLOCK_M x BLOCK_D accumulator. The strip path's epilogue streams D and uses float64.
EPILOGUE_DTYPE = tl.float32
_EPILOGUE_BLOCK_M = 16  # 32 rows x 64 columns in float64 spill 8-16 bytes on sm_90 (ptxas)
_EPILOGUE_BLOCK_D = 64
#: CUDA's limits on a grid: x (the row blocks of a launch) up to 2^31 - 1, y and z (the matrix index, and
#: the D blocks of the strip path's GEMM) up to 65,535. A batch of more matrices is launched in chunks.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
#: Matrices per launch (the grid's y or z size).
MAX_MATRICES_PER_LAUNCH = MAX_GRID_YZ
#: A uniform batch (``[B, N, D]``) passes its sizes as scalars only when D is a multiple of this (which the
#: kernel states with ``tl.multiple_of``, so row loads are vectorized); other D read the table, as a ragged
#: batch. One compiled kernel per layout (see ``kernels._RUNTIME_INTS``).
UNIFORM_D_MULTIPLE = 16

#: Pairs whose float32 ``1 - |g|`` (or expanded distance relative to ``|x_i|^2 + |x_j|^2``) is below this
#: are not trusted to the kernels: their rows are recomputed by :func:`_fix_rows` (``close_tau<float,
#: float>`` of csrc/hsu_pair.h: the fast path's ``2 - 2g`` then keeps ~8 sqrt(D) ulp).
CLOSE_TAU = 2.0**-4
#: Normalized rows whose largest ``|w_d|`` is at least ``2^SAFE_EXP`` enter the kernels divided by a power of
#: two (so ``|w|^2``, the products and ``r^3`` neither overflow nor underflow) and are recomputed by
#: :func:`_fix_rows` (the kernels' half-space self pair needs ``eps_norm / |w|^2``); ``eps_norm`` is then
#: below ``2^-36`` of ``|w|^2`` before and after, so the other rows' pairs with them keep their value.
SAFE_EXP = 20
#: Normalized rows whose largest ``|w_d|`` is below ``2^TINY_EXP`` (products in float32 subnormals) are
#: recomputed by :func:`_fix_rows`.
TINY_EXP = -60
#: Rows per block of the fix-up (float64, ``O(block * N)`` memory).
FIX_BLOCK = 256

_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def check_input(t: torch.Tensor, name: str) -> None:
    """The dtype and device checks of the Triton backend (shape checks belong to ``ops.py``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.float64:
        raise TypeError(
            f"{name} is float64, which the Triton backend does not compute (it accumulates in float32); "
            "use backend='torch', 'cpu' or 'cuda' for float64, or cast to float32"
        )
    if t.dtype not in _TL_DTYPE:
        raise TypeError(f"{name} must be float32, bfloat16 or float16 for the Triton backend, got {t.dtype}")
    if t.device.type != "cuda" and not (K.INTERPRET and t.device.type == "cpu"):
        raise ValueError(f"{name} is a {t.device.type} tensor; the Triton backend runs CUDA tensors "
                         "(or CPU tensors with TRITON_INTERPRET=1)")


def _modes(dtype: torch.dtype, d: int, precision: Optional[str]):
    """(PREC, PREC2, C_DTYPE, UPCAST, c_torch_dtype) for the two products of a launch."""
    check_precision(precision)
    if precision is None:
        opted_in = torch.get_float32_matmul_precision() != "highest"
        precision = "tf32" if (d >= TF32_MIN_D and opted_in) else "ieee"
    upcast = K.INTERPRET and dtype != torch.float32
    if dtype == torch.float32:
        return precision, precision, tl.float32, False, torch.float32
    if dtype == torch.bfloat16:
        return "tf32", "tf32", tl.bfloat16, upcast, torch.bfloat16
    raise TypeError(f"the Triton kernels take float32 or bfloat16 buffers, got {dtype} (run() upcasts float16)")


def _pow_mode(p: EnergyParams) -> int:
    """The kernels' exponent mode of the energy (``kernels.pow_mode`` of ``x^(-s * power_scale)`` for the
    kinds whose ``s`` is an exponent, the record's ``power``; general, and unused, for the others)."""
    return K.pow_mode(p.s * p.spec.power_scale) if p.spec.power else K.POW_GENERAL


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when its data is not 16-byte aligned: the kernels are compiled (and gated by
    ``tools/triton_aot.py``) for 16-byte-aligned pointers only, as torch allocates them; a view that starts
    inside a buffer (``w[1:]``) would get another compiled kernel."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def batch_chunks(k: int, limit: Optional[int] = None) -> List[Tuple[int, int]]:
    """The matrices ``[k0, k1)`` of each launch of a batch of ``k``: at most ``limit`` (default
    :data:`MAX_MATRICES_PER_LAUNCH`, the grid's y/z limit, where the matrix index lives) per launch, in order."""
    limit = MAX_MATRICES_PER_LAUNCH if limit is None else limit
    return [(k0, min(k, k0 + limit)) for k0 in range(0, k, limit)]


def grid_of(blocks_x: int, *blocks_yz: int) -> Tuple[int, ...]:
    """The launch grid ``(blocks_x, *blocks_yz)``, checked against CUDA's limits (a grid over the limit
    would fail to launch with an unhelpful error, or wrap). Raises ValueError naming the axis."""
    if blocks_x > MAX_GRID_X:
        raise ValueError(f"a Triton launch needs {blocks_x} row blocks, over the grid's x limit of {MAX_GRID_X} "
                         "(too many rows in one matrix)")
    for axis, b in zip("yz", blocks_yz):
        if b > MAX_GRID_YZ:
            raise ValueError(f"a Triton launch needs {b} blocks on the grid's {axis} axis, over CUDA's limit "
                             f"of {MAX_GRID_YZ} (the matrices of a batch are launched in chunks that fit, so "
                             "this is the strip path's D blocks: the rows are too long)")
    return (blocks_x,) + tuple(blocks_yz)


def _bucket(n: int) -> int:
    return 1 << max(4, math.ceil(math.log2(max(n, 1))))


class _Layout:
    """The ragged batch of one launch: ``K`` matrices, rows of ``x`` (and columns from ``y``) in flat
    buffers. ``uniform`` when every matrix has the same ``nx, ny, D`` stored back to back."""

    def __init__(self, nx: Sequence[int], ny: Sequence[int], d: Sequence[int], device, uniform: bool):
        self.k = len(nx)
        self.nx, self.ny, self.d = list(nx), list(ny), list(d)
        self.uniform = uniform
        self.xoff = _cumsum0([a * b for a, b in zip(self.nx, self.d)])
        self.yoff = _cumsum0([a * b for a, b in zip(self.ny, self.d)])
        self.xrow = _cumsum0(self.nx)
        self.cbase = _cumsum0([a * b for a, b in zip(self.nx, self.ny)])
        self.total_rows = self.xrow[-1] + self.nx[-1]
        self.c_elems = self.cbase[-1] + self.nx[-1] * self.ny[-1]
        self.device = device
        self._tab: Optional[torch.Tensor] = None

    @property
    def tab(self) -> torch.Tensor:
        """The int64 ``[7, K]`` table on the device, built on first use (a uniform fused launch with
        D % 16 == 0 never reads it and gets a placeholder, saving a host-to-device copy per call)."""
        if self._tab is None:
            self._tab = self.table(range(self.k), with_cbase=True)
        return self._tab

    def table(self, ks, with_cbase: bool) -> torch.Tensor:
        ks = list(ks)
        rows = [[self.nx[k] for k in ks], [self.ny[k] for k in ks], [self.d[k] for k in ks],
                [self.xoff[k] for k in ks], [self.yoff[k] for k in ks], [self.xrow[k] for k in ks],
                [self.cbase[k] if with_cbase else 0 for k in ks]]
        return torch.tensor(rows, dtype=torch.int64).to(self.device)

    def tab_of(self, k0: int, k1: int) -> torch.Tensor:
        """The table of matrices ``[k0, k1)`` (offsets stay absolute: the buffers are not sliced)."""
        return self.tab if (k0, k1) == (0, self.k) else self.tab[:, k0:k1].contiguous()

    def scalars(self):
        """(nx_u, ny_u, d_u): the uniform sizes, or placeholders for a ragged batch."""
        return (self.nx[0], self.ny[0], self.d[0]) if self.uniform else (1, 1, 1)


def _cumsum0(v: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for x in v:
        out.append(acc)
        acc += x
    return out


def run(x: torch.Tensor, y: torch.Tensor, lay: _Layout, p: EnergyParams, self_mode: bool,
        precision: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass of the kernels, rows of ``x`` against rows of ``y`` for every matrix of ``lay`` (no fix-up:
    see :func:`row_pass`).

    Args:
        x, y: flat contiguous buffers holding the matrices back to back (``y is x`` for a self energy).
        lay: the layout of the batch.
        p: the energy.
        self_mode: skip ``j == i``, halve the pair sums (``sum_{i<j}``), add the half-space diagonal.

    Returns:
        ``(e, g, f)``: ``Tensor[total_rows]`` fp32 per-row energies (pair-scaled; summing a matrix's rows gives
        its energy; the Gaussian kind: the row's ``log sum_j exp(-t d2_ij)``, not pair-scaled, without the
        half-space self pair), ``g`` with ``x``'s shape and dtype, ``dE/dx`` (Gaussian: the gradient of the
        row sums divided by each row's sum), and ``f``, int32 per row: non-zero where the kernels
        cannot be trusted with the row (a close pair, or an energy that is not finite).
    """
    if x.dtype == torch.float16:  # the float32 kernels with tf32 products (see the module docstring)
        x32 = x.float()
        e, g, f = run(x32, x32 if y is x else y.float(), lay, p, self_mode, "tf32")
        return e, g.to(torch.float16), f
    dev = x.device
    logsum = p.spec.logsum  # rows reduced as log-sums: not pair-scaled, the half-space self pair on the host
    pair_scale = 1.0 if (p.half_space or not self_mode or logsum) else 0.5
    grad_scale = 2.0 * (1.0 if (p.half_space or not self_mode) else 0.5) if self_mode else 1.0
    diag = self_mode and p.half_space and not logsum
    max_nx, max_ny, max_d = max(lay.nx), max(lay.ny), max(lay.d)
    prec, prec2, c_dtype, upcast, c_torch = _modes(x.dtype, max_d, precision)
    x, y = (_aligned(x),) * 2 if y is x else (_aligned(x), _aligned(y))
    # the kind flags: KIND and NORM are compiled in, the others are runtime ints (kernels._RUNTIME_INTS)
    hs, self_pairs = int(p.half_space), int(self_mode)
    consts = dict(KIND=p.code, NORM=p.normalize)
    pmode = _pow_mode(p)
    # the uniform layout (sizes as scalars) only where D % 16 == 0, which the kernel assumes (tl.multiple_of);
    # a uniform batch of other D takes the table, as a ragged one
    uniform = lay.uniform and lay.d[0] % UNIFORM_D_MULTIPLE == 0
    nx_u, ny_u, d_u = lay.scalars() if uniform else (1, 1, 1)
    # floats as Python floats: an int would be typed (and specialized) as one, another compiled kernel
    scal = dict(s=float(p.s), t=float(p.t), eps_norm=float(p.eps_norm), eps_ang=float(p.eps_ang))
    keys = dict(N_KEY=_bucket(max(max_nx, max_ny)), D_KEY=_bucket(max_d))
    e = torch.empty(lay.total_rows, dtype=torch.float32, device=dev)
    f = torch.zeros(lay.total_rows, dtype=torch.int32, device=dev)
    g = torch.empty_like(x)
    with torch.cuda.device(dev) if dev.type == "cuda" else _nullctx():
        if max_d <= FUSED_MAX_D:
            block_d = max(16, triton.next_power_of_2(max_d))
            tab = _placeholder(dev) if uniform else lay.tab  # matrix k_base + y of the whole table
            for k0, k1 in batch_chunks(lay.k):
                kk = k1 - k0
                grid = lambda meta: grid_of(triton.cdiv(max_nx, meta["BLOCK_M"]), kk)  # noqa: E731
                K.fused_kernel[grid](
                    x, y, g, e, f, tab, lay.k, k0, nx_u, ny_u, d_u,
                    scal["s"], scal["t"], scal["eps_norm"], scal["eps_ang"], pair_scale, grad_scale, CLOSE_TAU,
                    hs, self_pairs, pmode, int(diag), keys["N_KEY"], keys["D_KEY"],
                    UNIFORM=uniform, PREC=prec, PREC2=prec2, C_DTYPE=c_dtype, UPCAST=upcast, EPI=EPILOGUE_DTYPE,
                    BLOCK_D=block_d, **consts,
                )
            return e, g, f
        a = torch.empty(x.shape, dtype=torch.float32, device=dev)
        b = torch.empty(lay.total_rows, dtype=torch.float32, device=dev)
        elt = torch.empty((), dtype=c_torch).element_size()
        if lay.c_elems * elt <= STRIP_BYTES:
            windows = [(lay.tab_of(k0, k1), k1 - k0, 0, max_nx, max_ny, lay.c_elems)
                       for k0, k1 in batch_chunks(lay.k)]
        else:  # one matrix at a time, in row strips that keep C under STRIP_BYTES
            windows = []
            for k in range(lay.k):
                rows = max(128, (STRIP_BYTES // (elt * lay.ny[k])) // 128 * 128)
                tab_k = lay.table([k], with_cbase=False)
                for lo in range(0, lay.nx[k], rows):
                    hi = min(lay.nx[k], lo + rows)
                    windows.append((tab_k, 1, lo, hi, lay.ny[k], (hi - lo) * lay.ny[k]))
        c = torch.empty(max(w[5] for w in windows), dtype=c_torch, device=dev)
        for tab, kk, lo, hi, _, _ in windows:
            span = hi - lo
            grid = lambda meta: grid_of(triton.cdiv(span, meta["BLOCK_M"]), kk)  # noqa: E731
            K.coef_kernel[grid](
                x, y, c, e, b, f, tab, kk, 1, 1, 1, lo, hi,
                scal["s"], scal["t"], scal["eps_norm"], scal["eps_ang"], pair_scale, CLOSE_TAU,
                hs, self_pairs, pmode, keys["N_KEY"], keys["D_KEY"],
                UNIFORM=False, PREC=prec, UPCAST=upcast, **consts,
            )
            grid2 = lambda meta: grid_of(  # noqa: E731
                triton.cdiv(span, meta["BLOCK_M"]), triton.cdiv(max_d, meta["BLOCK_D"]), kk)
            K.gemm_kernel[grid2](
                c, y, a, tab, kk, 1, 1, 1, lo, hi, hs, self_pairs, keys["N_KEY"], keys["D_KEY"],
                UNIFORM=False, PREC2=prec2, C_DTYPE=c_dtype, UPCAST=upcast, **consts,
            )
        for k0, k1 in batch_chunks(lay.k):
            K.epilogue_kernel[grid_of(triton.cdiv(max_nx, _EPILOGUE_BLOCK_M), k1 - k0)](
                x, a, b, e, g, lay.tab_of(k0, k1), k1 - k0, 1, 1, 1,
                scal["s"], scal["t"], scal["eps_norm"], scal["eps_ang"], grad_scale, pmode, int(diag),
                UNIFORM=False, BLOCK_M=_EPILOGUE_BLOCK_M, BLOCK_D=_EPILOGUE_BLOCK_D, **consts,
            )
    return e, g, f


def _row_ids(lay: _Layout, device) -> torch.Tensor:
    """The row (of the flat per-row outputs) of every element of a flat buffer of ``lay``'s ``x`` rows."""
    per_row = torch.repeat_interleave(torch.tensor(lay.d, device=device), torch.tensor(lay.nx, device=device))
    return torch.repeat_interleave(torch.arange(lay.total_rows, device=device), per_row)


def _by_row(v: torch.Tensor, lay: _Layout, rows: torch.Tensor) -> torch.Tensor:
    """``v * rows[i]`` for every element of row ``i`` of the flat buffer ``v`` (of ``lay``'s ``x`` rows), in
    float32 (a uniform batch as a ``[rows, D]`` view; a ragged one through :func:`_row_ids`)."""
    if lay.uniform:
        return (v.view(-1, lay.d[0]).to(torch.float32) * rows[:, None]).view(-1)
    return v.to(torch.float32) * rows[_row_ids(lay, v.device)]


def _rows_finite(g: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """Whether every entry of each row of the flat buffer ``g`` is finite (bool per row)."""
    fin = torch.isfinite(g)
    if lay.uniform:
        return fin.view(-1, lay.d[0]).all(1)
    bad = torch.zeros(lay.total_rows, dtype=torch.int32, device=g.device)
    return bad.index_add_(0, _row_ids(lay, g.device), (~fin).to(torch.int32)) == 0


def _safe_rows(x: torch.Tensor, lay: _Layout, p: EnergyParams):
    """Normalized rows rescaled by powers of two for the kernels (see :data:`SAFE_EXP`).

    Args:
        x: a flat buffer of the rows of ``lay``'s ``x``.

    Returns:
        ``(xs, fac, bad)``: the rescaled buffer (``x`` itself un-normalized), the per-row float32 factors
        (None: all 1) and the bool per-row mask of rows the host must recompute (None: none). With
        ``eps_norm = 0`` every row is brought to a largest entry in ``[1/2, 1)`` (exact: ``u`` does not change).
    """
    if not p.normalize:
        return x, None, None
    if lay.uniform:
        big = x.detach().view(-1, lay.d[0]).abs().amax(1).to(torch.float32)
    else:
        big = torch.zeros(lay.total_rows, dtype=torch.float32, device=x.device)
        big = big.scatter_reduce(0, _row_ids(lay, x.device), x.detach().abs().to(torch.float32), "amax")
    ex = torch.frexp(big).exponent  # big < 2^ex
    if p.eps_norm == 0:
        k = torch.where(big > 0, ex, torch.zeros_like(ex))
        bad = None
    else:
        k = torch.where(ex > SAFE_EXP, ex - SAFE_EXP, torch.zeros_like(ex))
        bad = (k > 0) | ((big > 0) & (ex < TINY_EXP))
    fac = torch.ldexp(torch.ones_like(big), -k)
    return _by_row(x, lay, fac).to(x.dtype), fac, bad


def _fix_rows(x: torch.Tensor, y: torch.Tensor, lay: _Layout, p: EnergyParams, self_mode: bool, rows: torch.Tensor,
              e: torch.Tensor, g: torch.Tensor, cs: float = 1.0) -> None:
    """Recomputes rows ``rows`` (indices into the per-row outputs) of ``e`` and ``g`` as :func:`row_pass`
    defines them (times ``cs``, but the Gaussian kind), in float64 from the original rows, in place: every
    pair of those rows on the torch backend's path (``tiled.row_pass``: float64 cosines, close pairs from
    coordinate differences, scale-safe statistics), in blocks of :data:`FIX_BLOCK` rows (``O(block * N)``
    memory), one matrix at a time."""
    logsum = p.spec.logsum
    pair_scale = (1.0 if (p.half_space or not self_mode) else 0.5) * cs
    grad_scale = (2.0 if self_mode else 1.0) * pair_scale
    starts = torch.tensor(lay.xrow, device=rows.device)
    mats = torch.searchsorted(starts, rows, right=True) - 1
    tau = tiled.CLOSE_F64_OF_F32
    for k in torch.unique(mats).tolist():
        sel = rows[mats == k]
        nx, ny, d = lay.nx[k], lay.ny[k], lay.d[k]
        local = sel - lay.xrow[k]
        xm = x[lay.xoff[k]: lay.xoff[k] + nx * d].view(1, nx, d).to(torch.float32)
        ym = xm if self_mode else y[lay.yoff[k]: lay.yoff[k] + ny * d].view(1, ny, d).to(torch.float32)
        xi = tiled._Rows(xm[:, local], p, torch.float64)
        yj = tiled._Rows(ym, p, torch.float64)
        ids = local if self_mode else None
        if logsum:
            sm, a, b, m = tiled.row_pass(xi, yj, p, self_mode, FIX_BLOCK, 1.0, tau, row_ids=ids)
            e_row = m + torch.log(sm)
            grad = tiled.row_grad(xi, a, b, torch.where(sm > 0, grad_scale / sm, 0.0), p)
        else:
            es, a, b, _ = tiled.row_pass(xi, yj, p, self_mode, FIX_BLOCK, cs, tau, row_ids=ids)
            e_row = pair_scale * es  # the pass's energies are plain sums, its coefficients carry cs already
            grad = tiled.row_grad(xi, a, b, grad_scale / cs, p)
            if self_mode and p.half_space:
                ed, vd = tiled.diag_terms(xi, p)
                e_row, grad = e_row + cs * ed, grad + cs * vd
        e[sel] = e_row[0].to(e.dtype)
        elems = lay.xoff[k] + local[:, None] * d + torch.arange(d, device=rows.device)[None, :]
        g.view(-1)[elems.reshape(-1)] = grad[0].reshape(-1).to(g.dtype)


def row_pass(x: torch.Tensor, y: torch.Tensor, lay: _Layout, p: EnergyParams, self_mode: bool,
             precision: Optional[str] = None, cs: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`run` with the numerics of docs/spec.md §5 (issue 13): normalized rows enter the kernels rescaled
    by powers of two (:func:`_safe_rows`), and the rows the kernels flag (a close or non-finite pair) or
    that the rescaling could not make safe are recomputed by :func:`_fix_rows`. On well-spread rows of
    ordinary scale the cost over :func:`run` is one elementwise pass over the rows and one host sync (the
    ``any`` of the per-row flags).

    ``cs`` (the part of a mean's ``1/pairs`` applied per row, ``tiled._coef_scale``; not for the Gaussian
    kind) multiplies ``e`` and ``g``: the kernels' rows are scaled after the pass, and a row whose unscaled sum
    overflows float32 is flagged and recomputed scaled, so a mean whose sum would overflow float32 fits.

    Returns:
        ``(e, g)`` as :func:`run` defines them, times ``cs``; ``e`` in float64, so that the rows recomputed on
        the host keep their float64 values (a row sum beyond float32, a Gaussian row's log-sum to more than
        float32's ulp of ``log N``: the mean's ``log(1/pairs)`` is added to the rows' combination in float64).
    """
    if p.spec.logsum:
        cs = 1.0
    xs, fac, bad = _safe_rows(x, lay, p)
    if y is x:
        ys = xs
    else:
        ys = _safe_rows(y, _Layout(lay.ny, lay.nx, lay.d, y.device, uniform=lay.uniform), p)[0]
    e, g, f = run(xs, ys, lay, p, self_mode, precision)
    e = e.to(torch.float64)
    redo = (f > 0) | ~_rows_finite(g, lay)  # before any scaling: an unscaled row that overflows is redone
    if fac is not None or cs != 1.0:
        g = (_by_row(g, lay, cs * fac) if fac is not None else g.to(torch.float32) * cs).to(g.dtype)
    if cs != 1.0:
        e = e * cs
    if bad is not None:
        redo = redo | bad
    if bool(redo.any()):  # the one host sync of a pass
        _fix_rows(x, y, lay, p, self_mode, redo.nonzero().view(-1), e, g, cs)
    return e, g


def _rest_of_scale(g: torch.Tensor, rest: float) -> torch.Tensor:
    """``g`` times the part of a scale not applied in the pass (1 but for scales outside ``[2^-40, 1]``)."""
    return g if rest == 1.0 else (g.to(torch.float32) * rest).to(g.dtype)


def _segment_lse(v: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """Per-matrix ``log sum exp`` of per-row values (float64)."""
    v = v.to(torch.float64)
    if lay.uniform:
        return v.view(lay.k, lay.nx[0]).logsumexp(-1)
    seg = torch.repeat_interleave(torch.arange(lay.k, device=v.device), torch.tensor(lay.nx, device=v.device))
    m = torch.full((lay.k,), -math.inf, dtype=v.dtype, device=v.device).scatter_reduce(0, seg, v, "amax")
    m = torch.where(torch.isinf(m), 0.0, m)
    tot = torch.zeros_like(m).index_add_(0, seg, torch.exp(v - m[seg]))
    return m + torch.log(tot)


def _gauss_diag(x: torch.Tensor, rid: torch.Tensor, n_rows: int, p: EnergyParams):
    """The Gaussian half-space self pairs ``(w_i, -w_i)`` (docs/spec.md §4) in float64: their log terms
    ``Tensor[rows]`` and the gradients of those terms, flat like ``x`` (csrc/hsu_pair.h ``diag_term``)."""
    xw = x.detach().to(torch.float64)
    sq = torch.zeros(n_rows, dtype=torch.float64, device=x.device).index_add_(0, rid, xw * xw)
    if p.normalize:
        n2 = sq + p.eps_norm
        a = p.eps_norm / n2
        return -p.t * (4.0 - 2.0 * a), (-4.0 * p.t * a / n2)[rid] * xw
    return -4.0 * p.t * sq, -8.0 * p.t * xw


def _gauss_self(x: torch.Tensor, lay: _Layout, p: EnergyParams, e: torch.Tensor, g: torch.Tensor):
    """A self pass of the Gaussian kind reduced to ``L = log sum_{i<j} exp(-t d2_ij)`` per matrix (plus the
    half-space self pairs) and ``dL/dx`` (float64 reductions of the rows' log-sums, :func:`_segment_lse`)."""
    rid = _row_ids(lay, x.device)
    seg = torch.repeat_interleave(torch.arange(lay.k, device=x.device), torch.tensor(lay.nx, device=x.device))
    terms = e.to(torch.float64) + (0.0 if p.half_space else math.log(0.5))
    big_l = _segment_lse(terms, lay)
    if p.half_space:
        xd, vd = _gauss_diag(x, rid, lay.total_rows, p)
        big_l = torch.logaddexp(big_l, _segment_lse(xd, lay))
    w = torch.exp(e.to(torch.float64) - big_l[seg])
    grad = g.to(torch.float64) * w[rid]
    if p.half_space:
        grad = grad + torch.exp(xd - big_l[seg])[rid] * vd
    return big_l, grad.to(g.dtype)


_PLACEHOLDERS = {}


def _placeholder(dev) -> torch.Tensor:
    """A one-element int64 tensor standing for the table of a uniform launch (never read)."""
    key = str(dev)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = torch.zeros(1, dtype=torch.int64, device=dev)
    return _PLACEHOLDERS[key]


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _segment_sums(e: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """Per-matrix sums of the per-row energies, in float64, in a fixed order (deterministic)."""
    if lay.uniform:
        return e.view(lay.k, lay.nx[0]).sum(-1, dtype=torch.float64)
    cs = torch.cat([e.new_zeros(1, dtype=torch.float64), torch.cumsum(e, 0, dtype=torch.float64)])
    starts = torch.tensor(lay.xrow, device=e.device)
    ends = starts + torch.tensor(lay.nx, device=e.device)
    return cs[ends] - cs[starts]


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")


def energy_grad(w: torch.Tensor, p: EnergyParams, precision: Optional[str] = None, scale: float = 1.0):
    """``E = scale * sum_{i<j} psi(w_i, w_j)`` of every matrix of a batch and ``dE/dw``, in one fused pass.

    Args:
        w: ``Tensor[B, N, D]``, float32/bfloat16/float16, on CUDA (or CPU under ``TRITON_INTERPRET=1``).
        p: the energy (every kind, half-space with its diagonal pairs ``(w_i, -w_i)``, normalize on/off).
        precision: ``"ieee"``, ``"tf32"`` or None (the default of the module docstring); float32 only.
        scale: a finite factor > 0, applied inside the pass (``1/pairs`` for a mean: a mean whose sum would
            overflow float32 is still computed); the Gaussian kind: ``E = log(scale * sum exp(-t d2))``.

    Returns:
        ``(E, G)``: ``E`` float32 ``Tensor[B]`` (the scaled sum over unordered pairs; the Gaussian kind: the
        log-sum ``log(scale * sum_{i<j} exp(-t d2_ij))``, docs/spec.md §4), ``G = dE/dw`` with ``w``'s shape
        and dtype.
    """
    _check_scale(scale)
    check_input(w, "w")
    if w.dim() != 3:
        raise ValueError(f"w must be [B, N, D], got shape {tuple(w.shape)}")
    if tiled.raw_rows_need_wide(w, p):  # squared distances beyond float32: the tiled path in float64
        e, g = tiled.energy_grad(w.to(torch.float64), p, scale=scale)
        return e.to(torch.float32), g.to(w.dtype)
    bsz, n, d = w.shape
    x = w.contiguous()
    lay = _Layout([n] * bsz, [n] * bsz, [d] * bsz, x.device, uniform=True)
    if p.spec.logsum:
        e, g = row_pass(x.view(-1), x.view(-1), lay, p, True, precision)
        big_l, g = _gauss_self(x.view(-1), lay, p, e, g)
        return (big_l + math.log(scale)).to(torch.float32), g.view(x.shape)
    cs = tiled._coef_scale(scale)
    e, g = row_pass(x.view(-1), x.view(-1), lay, p, True, precision, cs)
    return (_segment_sums(e, lay) * (scale / cs)).to(torch.float32), _rest_of_scale(g, scale / cs).view(x.shape)


def cross_energy_grad(x: torch.Tensor, y: torch.Tensor, p: EnergyParams, precision: Optional[str] = None,
                      scale: float = 1.0):
    """``E = scale * sum_i sum_j psi(x_i, y_j)`` (all pairs) and its gradients, by two passes of the same
    kernel (rows of x against y, rows of y against x), so each gradient is a per-row accumulation (no atomics).

    Args:
        x: ``Tensor[B, Nx, D]``; y: ``Tensor[B, Ny, D]`` of the same dtype and device.
        p: the energy (``half_space`` adds ``phi(-g)``).
        precision: as in :func:`energy_grad`.
        scale: as in :func:`energy_grad`.

    Returns:
        ``(E, Gx, Gy)``: float32 ``Tensor[B]`` (Gaussian: the log-sum ``log(scale * sum exp)``) and the
        gradients in the inputs' shapes and dtype.
    """
    _check_scale(scale)
    check_input(x, "x")
    check_input(y, "y")
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must be [B, Nx, D] and [B, Ny, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must share a dtype, got {x.dtype} and {y.dtype}")
    if tiled.raw_rows_need_wide(x, p) or tiled.raw_rows_need_wide(y, p):  # as in energy_grad
        e, gx, gy = tiled.cross_energy_grad(x.to(torch.float64), y.to(torch.float64), p, scale=scale)
        return e.to(torch.float32), gx.to(x.dtype), gy.to(y.dtype)
    bsz, nx, d = x.shape
    ny = y.shape[1]
    xc, yc = x.contiguous(), y.contiguous()
    lay_x = _Layout([nx] * bsz, [ny] * bsz, [d] * bsz, x.device, uniform=True)
    lay_y = _Layout([ny] * bsz, [nx] * bsz, [d] * bsz, x.device, uniform=True)
    cs = tiled._coef_scale(scale)  # (row_pass takes none for the Gaussian kind, scaled below)
    ex, gx = row_pass(xc.view(-1), yc.view(-1), lay_x, p, False, precision, cs)
    ey, gy = row_pass(yc.view(-1), xc.view(-1), lay_y, p, False, precision, cs)
    if p.spec.logsum:  # both passes' rows sum to the same S: scale each row by its share of it
        big_l = _segment_lse(ex, lay_x)
        sx = torch.repeat_interleave(torch.exp(ex.double().view(bsz, nx) - big_l[:, None]).view(-1), d)
        sy = torch.repeat_interleave(torch.exp(ey.double().view(bsz, ny) - big_l[:, None]).view(-1), d)
        gx = (gx.double() * sx).to(gx.dtype)
        gy = (gy.double() * sy).to(gy.dtype)
        return (big_l + math.log(scale)).to(torch.float32), gx.view(x.shape), gy.view(y.shape)
    rest = scale / cs
    return ((_segment_sums(ex, lay_x) * rest).to(torch.float32), _rest_of_scale(gx, rest).view(x.shape),
            _rest_of_scale(gy, rest).view(y.shape))


def _groups(ws: Sequence[torch.Tensor], skip: Sequence[int] = ()) -> List[List[int]]:
    """Matrices that share a launch (but those in ``skip``): same dtype and same strategy (fused: same
    padded D)."""
    groups = {}
    for k, w in enumerate(ws):
        if k in skip:
            continue
        d = w.shape[1]
        tag = max(16, triton.next_power_of_2(d)) if d <= FUSED_MAX_D else "strip"
        groups.setdefault((w.dtype, tag), []).append(k)
    return list(groups.values())


def energy_many_grad(ws: Sequence[torch.Tensor], p: EnergyParams, precision: Optional[str] = None,
                     counts: Optional[Sequence[int]] = None):
    """Energies and gradients of a list of matrices of different shapes, one ragged launch per group.

    Args:
        counts: one positive int per matrix, the sum's divisor (the pair count of a mean; default: 1 each).
            It is applied in float64 before rounding, with the pass's rows scaled by the group's smallest
            ``1/count`` (as ``cs`` in :func:`row_pass`), so a mean whose sum would overflow float32 is still
            computed; the Gaussian kind gets ``log(sum exp(-t d2) / count)`` with ``log(1/count)`` added in
            float64 (a float32 log-sum near ``log(pairs)`` minus ``log(pairs)`` would cancel).

    Returns:
        ``(E, Gs)``: float32 ``Tensor[K]`` (sums over unordered pairs divided by ``counts``; Gaussian:
        log-means) and the list of ``dE_k/dw_k``.
    """
    if len(ws) == 0:
        raise ValueError("ws must hold at least one matrix")
    for k, w in enumerate(ws):
        check_input(w, f"ws[{k}]")
        if w.dim() != 2:
            raise ValueError(f"ws[{k}] must be [N, D], got shape {tuple(w.shape)}")
    scales = [1.0] * len(ws) if counts is None else [1.0 / c for c in counts]
    if len(scales) != len(ws):
        raise ValueError(f"counts must hold one entry per matrix, got {len(scales)} for {len(ws)}")
    for sc in scales:
        _check_scale(sc)
    gauss = p.spec.logsum
    energies = torch.empty(len(ws), dtype=torch.float64, device=ws[0].device)
    grads: List[Optional[torch.Tensor]] = [None] * len(ws)
    wide = [k for k, w in enumerate(ws) if tiled.raw_rows_need_wide(w, p)]
    for k in wide:  # squared distances beyond float32: the tiled path in float64, as in energy_grad
        e, g = tiled.energy_grad(ws[k][None].to(torch.float64), p, scale=scales[k])
        energies[k], grads[k] = e[0], g[0].to(ws[k].dtype)
    for grp in _groups(ws, wide):
        flat = torch.cat([ws[k].reshape(-1) for k in grp])
        ns = [ws[k].shape[0] for k in grp]
        ds = [ws[k].shape[1] for k in grp]
        lay = _Layout(ns, ns, ds, flat.device, uniform=False)
        cs = 1.0 if gauss else tiled._coef_scale(min(scales[k] for k in grp))
        e, g = row_pass(flat, flat, lay, p, True, precision, cs)
        rest = [scales[k] / cs for k in grp]  # what the pass's cs leaves of each matrix's scale
        if gauss:
            big_l, g = _gauss_self(flat, lay, p, e, g)
            energies[grp] = big_l + torch.tensor([math.log(r) for r in rest], dtype=torch.float64, device=flat.device)
        else:
            energies[grp] = _segment_sums(e, lay) * torch.tensor(rest, dtype=torch.float64, device=flat.device)
        for j, k in enumerate(grp):
            gk = g[lay.xoff[j]: lay.xoff[j] + ns[j] * ds[j]].view(ns[j], ds[j])
            grads[k] = gk if gauss else _rest_of_scale(gk, rest[j])
    return energies.to(torch.float32), grads
