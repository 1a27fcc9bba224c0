"""The autotuning configs of the Triton kernels (``kernels.py``) and the pruners that pick a launch's own.

Kept apart from the kernels so that editing a table leaves the kernels' source, and so their compiled form
and Triton's cache key (``JITFunction.cache_key``, which ``tools/triton_aot.py --cache`` keys on), unchanged.
Every config a pruner can return is compiled by ``python tools/triton_aot.py --fail-on-spill`` (the CI gate) for
sm_80 and sm_90, in every variant a launch can compile (kind, normalized or not, batch layout), with no
register spills.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from ..kinds import KIND_CODE

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The kind codes the exclusion and register-cap tables below name launches by (hsu_kernels.kinds). The tables
# name only the launches a measurement singled out: a kind they do not name, a new one included, gets every
# config of its mode and D, uncapped (then the spill gate, tools/triton_aot.py, says whether that holds).
RIESZ = KIND_CODE["riesz"]
LOG = KIND_CODE["log"]
ANGULAR = KIND_CODE["angular"]
ANGULAR_LOG = KIND_CODE["angular_log"]
GAUSSIAN = KIND_CODE["gaussian"]


#: The fused kernel's GPU configs per product mode and padded row length ``BLOCK_D``:
#: ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages[, maxnreg])``. ``BLOCK_K < BLOCK_D`` takes the first product in
#: chunks of ``BLOCK_K`` columns; ``BLOCK_K = 256`` (``FUSED_MAX_D``) never chunks. ``maxnreg`` caps the
#: registers per thread (PTX ``.maxnreg``); without it ptxas picks its own budget for occupancy (64, 80, 96,
#: 128 or 168 registers seen) and accepts a few bytes of spills to keep it: see :data:`FUSED_LIFT`. The
#: tiles are small because the per-pair epilogue (acos, sqrt, exp/log, twice in half-space) holds many
#: values per pair on top of the row tile, its gradient accumulator and the column tile: bigger tiles
#: (e.g. 128 x 64 rows at BLOCK_D 64) spilled kilobytes per thread, and 128 x 32 at BLOCK_D 16 (8 warps)
#: spilled 4-32 bytes at 255 registers for 15 of the 16 variants. Each config is compiled for sm_80 and
#: sm_90 by ``python tools/triton_aot.py --fail-on-spill`` in every variant. Modes: ``ieee`` is
#: float32 with exact products (FMA), ``tf32`` float32 (or float16, upcast) on tensor cores, ``bf16``
#: bfloat16 inputs and coefficients.
FUSED_TABLE = {
    "ieee": {
        16: ((32, 32, 256, 4, 2), (16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (64, 16, 256, 4, 2)),
        32: ((32, 64, 256, 8, 2), (16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (32, 32, 256, 8, 2)),
        64: ((16, 64, 256, 8, 2), (16, 32, 256, 4, 2), (16, 32, 256, 8, 2), (16, 16, 256, 4, 2)),
        128: ((16, 64, 256, 8, 2), (16, 32, 256, 8, 1), (16, 16, 256, 8, 2), (16, 32, 256, 8, 2)),
        256: ((16, 16, 256, 8, 2), (16, 16, 256, 8, 1)),
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

#: The register cap a config runs with where ptxas's own budget spills (:data:`FUSED_LIFT`).
LIFT_MAXNREG = 255

#: Configs of :data:`FUSED_TABLE` that run with ``maxnreg = 255`` (:data:`LIFT_MAXNREG`) for some launches:
#: ``(mode, BLOCK_D, config)`` -> the launches, ``(KIND, NORM)`` (both batch layouts) or ``(KIND, NORM,
#: UNIFORM)``. Without a cap ptxas picks a budget of 64-168 registers for occupancy and spills 4-64 bytes to
#: keep it, in these (measured by ``tools/triton_aot.py``, bench/results/triton-ptxas-*.md); with 255 allowed each fits
#: without spills, at the occupancy its registers give (the launches not named keep ptxas's budget). Which
#: variant tips a config over follows no rule from its live values, so the table follows the measurement.
FUSED_LIFT = {
    ("ieee", 16, (16, 64, 256, 8, 2)): ((RIESZ, True, False), (ANGULAR_LOG, True, False), (GAUSSIAN, False, True)),
    ("ieee", 16, (32, 32, 256, 4, 2)): ((RIESZ, True, True), (RIESZ, False, False), (LOG, False), (ANGULAR, True),
                                        (GAUSSIAN, False, True)),
    ("ieee", 16, (64, 16, 256, 4, 2)): ((RIESZ, True, False), (RIESZ, False), (LOG, True, False), (ANGULAR, True),
                                        (ANGULAR_LOG, True)),
    ("ieee", 32, (16, 32, 256, 4, 2)): ((ANGULAR, True, True), (ANGULAR_LOG, True, True), (GAUSSIAN, False)),
    ("ieee", 32, (16, 64, 256, 8, 2)): ((RIESZ, True, False), (GAUSSIAN, True, False)),
    ("ieee", 32, (32, 32, 256, 8, 2)): ((RIESZ, True, False), (RIESZ, False, False), (LOG, True, False),
                                        (LOG, False, False), (ANGULAR, True, False)),
    ("ieee", 64, (16, 32, 256, 8, 2)): ((RIESZ, True, True), (ANGULAR, True, False), (ANGULAR_LOG, True, False),
                                        (GAUSSIAN, True, False)),
    ("ieee", 128, (16, 32, 256, 8, 1)): ((GAUSSIAN, True),),
    ("ieee", 128, (16, 16, 256, 8, 2)): ((RIESZ, True), (LOG, True), (ANGULAR, True), (ANGULAR_LOG, True),
                                         (GAUSSIAN, True)),
    ("ieee", 256, (16, 16, 256, 8, 1)): ((RIESZ, False), (LOG, False, False), (GAUSSIAN, False)),
    ("ieee", 256, (16, 16, 256, 8, 2)): ((RIESZ, False), (GAUSSIAN, False)),
    ("tf32", 16, (16, 32, 256, 4, 2)): ((RIESZ, True, True), (RIESZ, False, True), (GAUSSIAN, False, False)),
    ("tf32", 64, (16, 32, 256, 4, 2)): ((RIESZ, True, False), (LOG, True, False), (ANGULAR, True, False),
                                        (GAUSSIAN, True, False)),
    ("tf32", 64, (16, 64, 256, 8, 2)): ((RIESZ, False, False), (LOG, True, True), (GAUSSIAN, False, False)),
    ("bf16", 16, (64, 32, 256, 4, 3)): ((RIESZ, False, True),),
    ("bf16", 64, (16, 64, 256, 8, 2)): ((LOG, False, False), (GAUSSIAN, False, False)),
}

#: Configs of :data:`FUSED_TABLE` left out for some launches (named as in :data:`FUSED_LIFT`): they spill
#: even with 255 registers. Every (variant, mode, BLOCK_D) keeps at least one config, and two but for those
#: named in tests/test_triton.py's ``ONE_CONFIG``.
FUSED_SPILLS = {
    ("ieee", 32, (32, 64, 256, 8, 2)): ((RIESZ, True), (RIESZ, False), (LOG, False), (ANGULAR, True),
                                        (ANGULAR_LOG, True), (GAUSSIAN, False)),
    ("ieee", 64, (16, 64, 256, 8, 2)): ((RIESZ, False, True), (LOG, False, True), (ANGULAR_LOG, True, True),
                                        (GAUSSIAN, True), (GAUSSIAN, False, True)),
    ("ieee", 128, (16, 32, 256, 8, 1)): ((ANGULAR, True, True), (ANGULAR_LOG, True, False)),
    ("ieee", 128, (16, 64, 256, 8, 2)): ((ANGULAR, True), (GAUSSIAN, True), (GAUSSIAN, False)),
    ("ieee", 128, (16, 32, 256, 8, 2)): ((RIESZ, True, False), (ANGULAR, True), (ANGULAR_LOG, True, False),
                                         (GAUSSIAN, True), (GAUSSIAN, False)),
    ("tf32", 256, (16, 32, 64, 8, 2)): ((ANGULAR_LOG, True, True),),
    ("bf16", 256, (16, 16, 128, 8, 2)): ((RIESZ, True, False), (LOG, True, False), (ANGULAR, True, False),
                                         (ANGULAR_LOG, True, False), (GAUSSIAN, True, False)),
}

#: The coefficient kernel's configs per product precision, ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)``
#: (``tf32`` also serves bfloat16 and float16 inputs: the pruner sees the precision, not the input dtype).
#: Exact fp32 products hold a ``BLOCK_K`` slice of both operands per output: ieee has a 64 x 32 tile with
#: ``BLOCK_K = 16`` for the kinds whose 32-wide slices spill.
STRIP_TABLE = {
    "ieee": ((64, 32, 32, 8, 3), (32, 64, 32, 8, 3), (32, 32, 32, 4, 3), (64, 32, 16, 8, 3)),
    "tf32": ((64, 32, 32, 8, 3), (32, 64, 32, 8, 3), (32, 32, 32, 4, 3)),
}
#: Configs of :data:`STRIP_TABLE` run with 255 registers for some launches, as :data:`FUSED_LIFT`:
#: ``(PREC, config)`` -> ``(KIND, NORM)`` launches (the strip path is always ragged). Empty: the coefficient
#: configs that spilled at ptxas's budget (ieee 32 x 32, 4 warps, at 168 registers) spilled with 255 too.
STRIP_LIFT = {}
#: Configs of :data:`STRIP_TABLE` left out for some launches, as :data:`FUSED_SPILLS`.
STRIP_SPILLS = {
    ("ieee", (32, 32, 32, 4, 3)): ((RIESZ, True), (LOG, True), (ANGULAR, True), (ANGULAR_LOG, True),
                                   (GAUSSIAN, False)),
    ("ieee", (64, 32, 32, 8, 3)): ((GAUSSIAN, False),),
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
    """The fused kernel's autotuning list: every config of :data:`FUSED_TABLE` once, and the capped form of
    those :data:`FUSED_LIFT` names (the pruner picks a launch's own); under the interpreter one small config."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=1)]
    tables = [((mode, bd), rows) for mode, per_d in FUSED_TABLE.items() for bd, rows in per_d.items()]
    return [_config(r) for r in _autotune_rows(tables, FUSED_LIFT)]


def _autotune_rows(tables, lift):
    """Every row of ``tables`` (``(tag, rows)`` pairs) once, in order, each followed by its capped form where
    ``lift`` has an entry for ``tag + (row,)``."""
    seen = []
    for tag, rows in tables:
        for r in rows:
            for form in (r, r + (LIFT_MAXNREG,)) if tag + (r,) in lift else (r,):
                if form not in seen:
                    seen.append(form)
    return seen


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


def _launch_rows(table, spills, lift, var, tag=()):
    """The rows of ``table`` a launch ``var`` may run, in order: less those ``spills`` leaves out for it, with
    the register cap :data:`LIFT_MAXNREG` on those ``lift`` names for it (``tag`` prefixes a row in both)."""
    rows = []
    for r in table:
        if _left_out(var, spills.get(tag + (r,), ())):
            continue
        rows.append(r + (LIFT_MAXNREG,) if _left_out(var, lift.get(tag + (r,), ())) else r)
    return rows


def _keep(configs, rows, table):
    """The configs whose rows are ``rows``, in that order; a list holding no row of ``table`` nor of ``rows``
    (a test's pinned config) as it is."""
    if not any(_key(c) in table or _key(c) in rows for c in configs):
        return list(configs)
    return sorted((c for c in configs if _key(c) in rows), key=lambda c: rows.index(_key(c)))


def _prune_fused(configs, named_args, **kwargs):
    """The configs of :data:`FUSED_TABLE` for the launch's product mode and padded D, less those
    :data:`FUSED_SPILLS` leaves out for its variant, capped where :data:`FUSED_LIFT` says, in the table's
    order (configs outside it may spill registers: they are never autotuned on a GPU). A list that holds
    none of them (a test's pinned config) is kept as it is. ``python tools/triton_aot.py`` compiles
    what this returns."""
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 16))
    mode = product_mode(kwargs.get("PREC", "ieee"), kwargs.get("C_DTYPE", tl.float32))
    table = FUSED_TABLE[mode][bd]
    rows = _launch_rows(table, FUSED_SPILLS, FUSED_LIFT, _launch_variant(kwargs), (mode, bd))
    return _keep(configs, rows, table)


def _strip_configs(interpret: bool = INTERPRET):
    """The coefficient kernel's autotuning list: every config of :data:`STRIP_TABLE` once. Its tile evaluates
    the per-pair terms on ``BLOCK_M x BLOCK_N`` values (64 x 64 tiles with 8 warps spill 8-48 bytes,
    128 x 128 kilobytes)."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return [_config(r) for r in _autotune_rows([((prec,), rows) for prec, rows in STRIP_TABLE.items()], STRIP_LIFT)]


def _prune_strip(configs, named_args, **kwargs):
    """The configs of :data:`STRIP_TABLE` less those :data:`STRIP_SPILLS` leaves out for the launch's kind and
    product precision, capped where :data:`STRIP_LIFT` says, in the table's order; a list holding none of
    them (a test's pinned config) is kept. ``python tools/triton_aot.py`` compiles what this returns."""
    prec = "ieee" if kwargs.get("PREC", "ieee") == "ieee" else "tf32"
    table = STRIP_TABLE[prec]
    rows = _launch_rows(table, STRIP_SPILLS, STRIP_LIFT, _launch_variant(kwargs), (prec,))
    return _keep(configs, rows, table)


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
