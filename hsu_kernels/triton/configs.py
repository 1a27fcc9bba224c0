"""The autotuning configs of the Triton kernels (``kernels.py``) and the pruners that pick a launch's own.

Kept apart from the kernels so that editing a table leaves the kernels' source, and so their compiled form
and Triton's cache key (``JITFunction.cache_key``, which ``_aot --cache`` keys on), unchanged. Every config
a pruner can return is compiled by ``python -m hsu_kernels.triton._aot --fail-on-spill`` (the CI gate) for
sm_80 and sm_90, for every kind, with no register spills.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Kind codes, as in hsu_kernels/_params.py and csrc/hsu_pair.h (the exclusion tables name launches by them).
RIESZ, LOG, ANGULAR, ANGULAR_LOG, GAUSSIAN = 0, 1, 2, 3, 4


#: The fused kernel's GPU configs per product mode and padded row length ``BLOCK_D``:
#: ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages[, maxnreg])``. ``BLOCK_K < BLOCK_D`` takes the first product in
#: chunks of ``BLOCK_K`` columns; ``BLOCK_K = 256`` (``FUSED_MAX_D``) never chunks. ``maxnreg`` caps the
#: registers per thread (PTX ``.maxnreg``); without it ptxas picks its own budget, and for 8 warps it settles
#: on 128 registers (two blocks per SM) even where that spills: the ieee 16 x 16 tile at ``BLOCK_D = 256``
#: with one stage spilled 40 bytes at 128 registers (Riesz, un-normalized, sm_80) and fits in 220 with 255
#: allowed, so it is listed both ways. The tiles are small because the per-pair epilogue (acos, sqrt,
#: exp/log, twice in half-space) holds many values per pair on top of the row tile, its gradient
#: accumulator and the column tile: bigger tiles (e.g. 128 x 64 rows at BLOCK_D 64) spilled kilobytes per
#: thread. Each config is compiled for sm_80 and sm_90 by ``python -m hsu_kernels.triton._aot
#: --fail-on-spill`` in every kind's variant with the most live values; the few that spill for some kinds
#: are left out for those (:data:`FUSED_SPILLS`). Modes: ``ieee`` is float32 with exact products (FMA),
#: ``tf32`` float32 (or float16) on tensor cores, ``bf16`` bfloat16 inputs and coefficients.
FUSED_TABLE = {
    "ieee": {
        16: ((128, 32, 256, 8, 2), (32, 32, 256, 4, 2), (16, 64, 256, 8, 2), (16, 32, 256, 4, 2),
             (64, 16, 256, 4, 2)),
        32: ((32, 64, 256, 8, 2), (16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (32, 32, 256, 8, 2)),
        64: ((16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (16, 32, 256, 8, 2), (16, 16, 256, 4, 2)),
        128: ((16, 64, 256, 8, 2), (16, 32, 256, 8, 1)),
        256: ((16, 16, 256, 8, 2), (16, 16, 256, 8, 1), (16, 16, 256, 8, 1, 255)),
    },
    "tf32": {
        16: ((32, 32, 256, 8, 2), (16, 32, 256, 8, 2), (32, 32, 256, 4, 2), (16, 32, 256, 4, 2)),
        32: ((16, 64, 256, 8, 2), (16, 32, 256, 8, 2), (16, 32, 256, 4, 2)),
        64: ((32, 32, 256, 8, 2), (16, 64, 256, 8, 2), (16, 32, 256, 4, 2)),
        128: ((16, 64, 256, 8, 2), (16, 32, 256, 8, 2)),
        256: ((16, 32, 64, 8, 2), (16, 16, 64, 8, 2)),
    },
    "bf16": {
        16: ((64, 32, 256, 4, 3), (32, 32, 256, 8, 2), (16, 32, 256, 4, 2)),
        32: ((16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (16, 32, 256, 8, 2)),
        64: ((32, 32, 256, 8, 2), (16, 64, 256, 8, 2), (16, 32, 256, 8, 2)),
        128: ((16, 64, 256, 8, 2), (16, 32, 256, 8, 2)),
        256: ((16, 16, 256, 8, 2), (16, 16, 256, 8, 1), (16, 16, 128, 8, 2)),
    },
}

_R1, _R0 = (RIESZ, True), (RIESZ, False)
_L1, _L0 = (LOG, True), (LOG, False)
_A, _AL = (ANGULAR, True), (ANGULAR_LOG, True)
_G1, _G0 = (GAUSSIAN, True), (GAUSSIAN, False)
_L1_RAGGED, _L1_UNIFORM = (LOG, True, False), (LOG, True, True)

#: Configs of :data:`FUSED_TABLE` left out for some kinds: ``(mode, BLOCK_D, config)`` -> the ``(KIND, NORM)``
#: launches that spill registers with it on sm_80 or sm_90 (4-52 bytes, measured by ``_aot``; see
#: bench/results/triton-ptxas-*.md): in the variant ``_aot`` gates (ragged or uniform batch) or in a spot
#: check of another flag (an exponent mode, no half-space, a cross energy). Most of these spill at 64-128
#: registers, a budget ptxas picks for itself, not at the 255 limit, so which flag tips a config over is not
#: predictable from its live values: the table follows the measurement. Every (kind, mode, BLOCK_D) keeps at
#: least one config, and two but for the 11 named in tests/test_triton.py's ``ONE_CONFIG`` (mostly BLOCK_D
#: 256: there 16 x 16 and 16 x 32 tiles with 4 or 8 warps, BLOCK_K 64, 128 or 256, one or two stages, with
#: and without maxnreg, spilled 8-412 bytes for some kind).
FUSED_SPILLS = {
    ("ieee", 16, (128, 32, 256, 8, 2)): (_R1, _L0, _L1, _A),
    ("ieee", 16, (32, 32, 256, 4, 2)): (_R1, _L0, _A),
    ("ieee", 16, (16, 64, 256, 8, 2)): (_R1, _L0, _G0),
    ("ieee", 16, (16, 32, 256, 4, 2)): (_A,),
    ("ieee", 16, (64, 16, 256, 4, 2)): (_L1, _AL),
    ("ieee", 32, (32, 64, 256, 8, 2)): (_R1, _G0),
    ("ieee", 32, (16, 64, 256, 8, 2)): (_R0, _G0),
    ("ieee", 32, (16, 32, 256, 4, 2)): (_R0, _G1),
    ("ieee", 32, (32, 32, 256, 8, 2)): (_A, _AL),
    ("ieee", 64, (16, 64, 256, 8, 2)): (_R1, _L0, _A, _AL, _G0),
    ("ieee", 64, (16, 32, 256, 8, 2)): (_A, _G0, _G1),
    ("ieee", 128, (16, 64, 256, 8, 2)): (_G0,),
    ("ieee", 256, (16, 16, 256, 8, 2)): (_R0, _L0, _G0, _G1),
    ("ieee", 256, (16, 16, 256, 8, 1)): (_R0, _L0, _G1),
    ("tf32", 16, (32, 32, 256, 8, 2)): (_R0, _L1),
    ("tf32", 16, (16, 32, 256, 8, 2)): (_R0, _L1, _G0),
    ("tf32", 16, (32, 32, 256, 4, 2)): (_A, _G0),
    ("tf32", 16, (16, 32, 256, 4, 2)): (_L1, _A),
    ("tf32", 64, (16, 64, 256, 8, 2)): (_R0, _L0, _L1),
    ("tf32", 256, (16, 32, 64, 8, 2)): (_R1, _L1, _A, _AL),
    ("bf16", 16, (64, 32, 256, 4, 3)): (_L0,),
    ("bf16", 16, (32, 32, 256, 8, 2)): (_AL,),
    ("bf16", 16, (16, 32, 256, 4, 2)): (_A, _AL),
    ("bf16", 32, (16, 64, 256, 8, 2)): (_R0,),
    ("bf16", 32, (16, 32, 256, 4, 2)): (_G1,),
    ("bf16", 32, (16, 32, 256, 8, 2)): (_A,),
    ("bf16", 64, (16, 64, 256, 8, 2)): (_R0,),
    ("bf16", 256, (16, 16, 256, 8, 2)): (_L1_UNIFORM,),
    ("bf16", 256, (16, 16, 256, 8, 1)): (_L1_UNIFORM,),
    ("bf16", 256, (16, 16, 128, 8, 2)): (_R1, _A, _AL, _L1_RAGGED),
}

#: The coefficient kernel's configs per product precision, ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)``
#: (``tf32`` also serves bfloat16 and float16 inputs: the pruner sees the precision, not the input dtype).
#: Exact fp32 products hold a ``BLOCK_K`` slice of both operands per output: ieee has a 64 x 32 tile with
#: ``BLOCK_K = 16`` for the kinds whose 32-wide slices spill.
STRIP_TABLE = {
    "ieee": ((64, 32, 32, 8, 3), (32, 64, 32, 8, 3), (32, 32, 32, 4, 3), (64, 32, 16, 8, 3)),
    "tf32": ((64, 32, 32, 8, 3), (32, 64, 32, 8, 3), (32, 32, 32, 4, 3)),
}
#: Configs of :data:`STRIP_TABLE` left out for some kinds, as :data:`FUSED_SPILLS`: ``(PREC, config)`` ->
#: ``(KIND, NORM)`` launches.
STRIP_SPILLS = {
    ("ieee", (32, 32, 32, 4, 3)): (_R1, _G0, _G1),
    ("ieee", (64, 32, 32, 8, 3)): (_G0, _G1),
}


def _key(c, size: str = "BLOCK_N"):
    """A config as a table row: ``(BLOCK_M, <size>, BLOCK_K, warps, stages)``, plus ``maxnreg`` when set."""
    row = (c.kwargs["BLOCK_M"], c.kwargs[size], c.kwargs.get("BLOCK_K", 256), c.num_warps, c.num_stages)
    return row + ((c.maxnreg,) if c.maxnreg else ())


def _config(row, size: str = "BLOCK_N"):
    """The ``triton.Config`` of a table row (see :func:`_key`)."""
    bm, bn, bk, w, st = row[:5]
    return triton.Config({"BLOCK_M": bm, size: bn, "BLOCK_K": bk}, num_warps=w, num_stages=st,
                         maxnreg=row[5] if len(row) > 5 else None)


def _fused_configs(interpret: bool = INTERPRET):
    """The fused kernel's autotuning list: every config of :data:`FUSED_TABLE` once (the pruner picks a
    launch's own); under the interpreter one small config."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=1)]
    seen = []
    for per_d in FUSED_TABLE.values():
        for rows in per_d.values():
            seen += [r for r in rows if r not in seen]
    return [_config(r) for r in seen]


def product_mode(prec, c_dtype) -> str:
    """The :data:`FUSED_TABLE` / :data:`GEMM_TABLE` mode of a launch's product precision and coefficient
    dtype: ``ieee`` (exact fp32 products), ``bf16`` (bfloat16 coefficients), else ``tf32``."""
    if c_dtype == tl.bfloat16:
        return "bf16"
    return "ieee" if prec == "ieee" and c_dtype == tl.float32 else "tf32"


def _launch_variant(kwargs):
    """``(KIND, NORM, UNIFORM)`` of a launch, from the constexpr keyword arguments the autotuner passes to a
    pruner (``launch.run`` passes every kind flag by keyword; the strip path is always ragged); all three are
    autotuning keys of the kernels that prune by them, so a pruned list is never reused for another launch."""
    missing = [k for k in ("KIND", "NORM") if k not in kwargs]
    if missing:
        raise ValueError(f"a config pruner needs the launch's {' and '.join(missing)} keyword argument(s)")
    return int(kwargs["KIND"]), bool(kwargs["NORM"]), bool(kwargs.get("UNIFORM", False))


def _left_out(var, launches) -> bool:
    """Whether a launch ``(KIND, NORM, UNIFORM)`` is among ``launches``, which name ``(KIND, NORM)`` (both
    batch layouts) or ``(KIND, NORM, UNIFORM)`` (one)."""
    return var in launches or var[:2] in launches


def _prune_fused(configs, named_args, **kwargs):
    """The configs of :data:`FUSED_TABLE` for the launch's product mode and padded D, less those
    :data:`FUSED_SPILLS` leaves out for its kind, in the table's order (configs outside it may spill
    registers: they are never autotuned on a GPU). A list that holds none of the table's configs (a test's
    pinned config) is kept as it is. ``python -m hsu_kernels.triton._aot`` compiles what this returns."""
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 16))
    mode = product_mode(kwargs.get("PREC", "ieee"), kwargs.get("C_DTYPE", tl.float32))
    table = FUSED_TABLE[mode][bd]
    var = _launch_variant(kwargs)
    rows = [r for r in table if not _left_out(var, FUSED_SPILLS.get((mode, bd, r), ()))]
    if not any(_key(c) in table for c in configs):
        return list(configs)
    return sorted((c for c in configs if _key(c) in rows), key=lambda c: rows.index(_key(c)))


def _strip_configs(interpret: bool = INTERPRET):
    """The coefficient kernel's autotuning list: every config of :data:`STRIP_TABLE` once. Its tile evaluates
    the per-pair terms on ``BLOCK_M x BLOCK_N`` values (64 x 64 tiles with 8 warps spill 8-48 bytes,
    128 x 128 kilobytes)."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    seen = []
    for rows in STRIP_TABLE.values():
        seen += [r for r in rows if r not in seen]
    return [_config(r) for r in seen]


def _prune_strip(configs, named_args, **kwargs):
    """The configs of :data:`STRIP_TABLE` less those :data:`STRIP_SPILLS` leaves out for the launch's kind and
    product precision, in the table's order; a list holding none of them (a test's pinned config) is kept.
    ``python -m hsu_kernels.triton._aot`` compiles what this returns."""
    var = _launch_variant(kwargs)
    prec = "ieee" if kwargs.get("PREC", "ieee") == "ieee" else "tf32"
    table = STRIP_TABLE[prec]
    rows = [r for r in table if not _left_out(var, STRIP_SPILLS.get((prec, r), ()))]
    if not any(_key(c) in table for c in configs):
        return list(configs)
    return sorted((c for c in configs if _key(c) in rows), key=lambda c: rows.index(_key(c)))


#: The GEMM kernel's configs per mode, ``(BLOCK_M, BLOCK_D, BLOCK_K, warps, stages)``: exact fp32 products
#: (FMA) hold a ``BLOCK_K`` slice of both operands per output, so they take a shorter ``BLOCK_K``; 128 x 128
#: output tiles spill in every mode.
GEMM_TABLE = {
    "ieee": ((128, 64, 16, 8, 3), (64, 128, 16, 8, 3), (64, 64, 8, 4, 3)),
    "tf32": ((128, 64, 32, 8, 3), (64, 128, 32, 4, 4), (64, 64, 32, 4, 3)),
    "bf16": ((128, 64, 32, 8, 3), (64, 128, 32, 4, 4), (64, 64, 32, 4, 3)),
}


def _gemm_configs(interpret: bool = INTERPRET):
    """The GEMM kernel's autotuning list: every config of :data:`GEMM_TABLE` once."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_D": 64, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    seen = []
    for rows in GEMM_TABLE.values():
        seen += [r for r in rows if r not in seen]
    return [_config(r, "BLOCK_D") for r in seen]


def _prune_gemm(configs, named_args, **kwargs):
    """The configs of :data:`GEMM_TABLE` for the launch's product mode (a list holding none of them, a
    test's pinned config, is kept)."""
    rows = GEMM_TABLE[product_mode(kwargs.get("PREC2", "ieee"), kwargs.get("C_DTYPE", tl.float32))]
    keep = sorted((c for c in configs if _key(c, "BLOCK_D") in rows), key=lambda c: rows.index(_key(c, "BLOCK_D")))
    return keep or list(configs)
