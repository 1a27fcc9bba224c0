"""Runs every backend on every workload in this process and builds the table rows.

For each (workload, dtype) the inputs are built once and shared by every backend. Every backend first makes
an untimed warm-up call on a small instance of the workload (``warmup_case``: the same formula, D, batch and
dtype, at most ``WARMUP_ROWS`` rows), so that one-off costs (KeOps and Triton compiling a formula, library
loading, thread pools) never enter a time; ``torch.compile`` is warmed by its first full call instead, which
is never timed. The first full call is the correctness check: the loss and every gradient against the same
workload in float64 (``_float64_truth``), with the bound set by the float32 error of the eager reference
(``_yardstick``), both computed whichever backends were chosen. Once every backend has been checked, their
steps are timed in turns (``_time_interleaved``: a slow phase of a noisy machine then falls on all of them,
not on one), and then each one's peak memory is measured (in-process on GPU, in a fresh process on CPU:
``bench/memprobe.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from . import measure
from .workloads import (
    LABELS,
    MATERIALIZING,
    Case,
    Energy,
    backend_unavailable,
    check_tolerance,
    isfinite_all,
    make_inputs,
    make_step,
    nbytes,
    rel_err,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Row:
    backend: str
    case: Case
    dtype: torch.dtype
    status: str = "ok"  # "ok", "skipped (...)", "OOM", "FAILED check (...)", "error (...)"
    times: List[float] = field(default_factory=list)
    first_call: Optional[float] = None
    peak_bytes: Optional[int] = None
    check: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def time(self) -> Optional[float]:
        return measure.median(self.times) if self.times else None


@dataclass
class Options:
    device: str = "cpu"
    budget_s: float = 1.5
    max_repeats: int = 20
    max_matrix_bytes: float = 4e9
    seed: int = 0
    measure_memory: bool = True
    verbose: bool = True
    max_call_s: float = float("inf")
    #: each backend's best flop rate so far in this run (for ``max_call_s``)
    best_rate: Dict[str, float] = field(default_factory=dict)


def _log(opts: Options, msg: str) -> None:
    if opts.verbose:
        print(msg, file=sys.stderr, flush=True)


def _probe_memory_cpu(case: Case, energy: Energy, backend: str, dtype: torch.dtype, opts: Options,
                      warmup: bool) -> Row:
    """Peak RSS growth of one step in a fresh process; returns a Row carrying peak_bytes or a status."""
    spec = {"case": dataclasses.asdict(case), "energy": dataclasses.asdict(energy), "backend": backend,
            "dtype": str(dtype).replace("torch.", ""), "seed": opts.seed, "warmup": warmup,
            "threads": torch.get_num_threads()}
    row = Row(backend, case, dtype)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.memprobe", json.dumps(spec)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=900,
                              preexec_fn=measure.die_with_parent)
    except subprocess.TimeoutExpired:
        row.status = "memory probe timed out"
        return row
    if proc.returncode != 0:
        killed = proc.returncode in (-9, 137)
        row.status = "OOM (memory probe killed)" if killed or measure.is_oom(Exception(proc.stderr)) else \
            f"memory probe failed (exit {proc.returncode}): " + \
            (proc.stderr.strip().splitlines() or ["no message"])[-1][:120]
        return row
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    row.peak_bytes = out["peak_bytes"]
    row.notes.append(out["method"])
    return row


#: A first call longer than this many ``--budget`` is the only timed call.
LONG_CALL = 3.0

#: The float64 oracle runs where the workload costs at most this many flops (a few seconds on 2 cores, or
#: on one GPU).
TRUTH_MAX_FLOPS = {"cpu": 2e10, "cuda": 2e12}

#: Rows of the warm-up instance of a workload (see ``warmup_case``).
WARMUP_ROWS = 256


def warmup_case(case: Case) -> Case:
    """The small instance of ``case`` every backend is called on, untimed, before the workload itself: the
    same formula, D, batch and dtype, so a backend that compiles per formula (KeOps, Triton) has compiled
    it. N keeps its remainder mod 16 (Triton specializes integer arguments on divisibility by 16)."""
    if case.kind == "network" or case.n <= WARMUP_ROWS:
        return case
    return dataclasses.replace(case, n=WARMUP_ROWS + case.n % 16)


def _max_err(loss, grads, loss0, grads0) -> float:
    """The largest relative error of the loss and of each gradient (Frobenius norms)."""
    return max([rel_err(loss, loss0)] + [rel_err(g, g0) for g, g0 in zip(grads, grads0)])


def _float64_truth(case: Case, inputs: Sequence[torch.Tensor], energy: Energy, opts: Options):
    """(backend, loss, grads) of the workload in float64 on the fastest exact backend here (whether or not it
    was chosen with ``--backends``), from the very inputs the backends see (already rounded to their dtype,
    so the error measured is the arithmetic's), or None where that is too costly or the inputs are float64
    already (then backends are compared with the first one that ran)."""
    limit = TRUTH_MAX_FLOPS.get(torch.device(opts.device).type, TRUTH_MAX_FLOPS["cpu"])
    if inputs[0].dtype == torch.float64 or case.flops() > limit:
        return None
    for b in ("cpu", "cuda", "torch"):
        if backend_unavailable(b, opts.device) is None:
            exact = [x.detach().to(torch.float64).requires_grad_(True) for x in inputs]
            loss, grads = make_step(case, energy, b)(exact)
            return b, loss, grads
    return None


def _yardstick(case: Case, inputs: Sequence[torch.Tensor], energy: Energy, truth, opts: Options):
    """(backend, error): the error against ``truth`` of the eager reference in the inputs' dtype (the tiled
    torch backend where the reference's N x N matrix would pass ``max_matrix_bytes``). Every row may have at
    most twice this error; it is computed whether or not these backends were chosen, so the bound does not
    depend on ``--backends`` or their order."""
    mbytes = case.matrix_bytes(nbytes(inputs[0].dtype), energy.half_space)
    backend = "reference" if mbytes <= opts.max_matrix_bytes else "torch"
    loss, grads = make_step(case, energy, backend)(inputs)
    return backend, _max_err(loss, grads, truth[1], truth[2])


def run_case(case: Case, dtype: torch.dtype, backends: Sequence[str], energy: Energy, opts: Options) -> List[Row]:
    """Every backend on one workload and dtype."""
    rows: List[Row] = []
    inputs = make_inputs(case, dtype, opts.device, opts.seed)
    truth = _float64_truth(case, inputs, energy, opts)
    bound = None
    if truth is not None:
        yard_backend, yard_err = _yardstick(case, inputs, energy, truth, opts)
        # the float32 rule of the test suite: at most about twice the eager reference's own error
        bound = max(2 * yard_err, check_tolerance(dtype) / 10)
    warm_case = warmup_case(case)
    warm_inputs = inputs if warm_case == case else make_inputs(warm_case, dtype, opts.device, opts.seed)
    baseline = None  # (backend, loss, grads) of the first backend that ran, where there is no float64 truth
    timed: list = []  # (row, step) of the backends timed in turns once every backend has been checked
    on_gpu = torch.device(opts.device).type == "cuda"
    for backend in backends:
        row = Row(backend, case, dtype)
        rows.append(row)
        mbytes = case.matrix_bytes(nbytes(dtype), energy.half_space)
        if backend in MATERIALIZING and mbytes > opts.max_matrix_bytes:
            row.status = (f"skipped (its N x N matrix alone would be {measure.fmt_bytes(mbytes)}; "
                          f"limit {measure.fmt_bytes(opts.max_matrix_bytes)}, --max-matrix-gb)")
            _log(opts, f"  {LABELS[backend]:26s} {row.status}")
            continue
        rate = opts.best_rate.get(backend)
        if rate and case.flops() / rate > opts.max_call_s:
            row.status = (f"skipped (one call would take at least {measure.fmt_time(case.flops() / rate)} at its "
                          f"best rate in this run, {rate / 1e9:.1f} GFLOP/s; limit --max-call-s "
                          f"{opts.max_call_s:g})")
            _log(opts, f"  {LABELS[backend]:26s} {row.status}")
            continue
        _log(opts, f"  {LABELS[backend]:26s} ...")
        holder: list = []
        # a call predicted to be long is measured once: time and (on CPU) memory of its first call, the
        # latter in-process after the heap is given back (a fresh process would repeat the whole call)
        long_call = (not on_gpu and backend != "compile" and opts.measure_memory and bool(rate)
                     and case.flops() / rate > LONG_CALL * opts.budget_s)
        try:
            step = make_step(case, energy, backend)
            if backend != "compile":  # torch.compile compiles per shape: its first full call is its warm-up
                warm = make_step(warm_case, energy, backend) if warm_case != case else step
                t_warm = measure.time_call(lambda: warm(warm_inputs), opts.device)
                if t_warm > 1.0:
                    row.notes.append(f"warm-up (N={warm_case.n_label}) {measure.fmt_time(t_warm)}")
            measure.sync(opts.device)
            if long_call:
                t0 = time.perf_counter()
                row.peak_bytes = measure.rss_growth(lambda: holder.append(step(inputs)))[0]
                row.first_call = time.perf_counter() - t0
            else:
                row.first_call = measure.time_call(lambda: holder.append(step(inputs)), opts.device)
            loss, grads = holder.pop()
            if not isfinite_all(loss, grads):
                row.status = "FAILED check (non-finite loss or gradient)"
                continue
            if truth is not None:
                err = _max_err(loss, grads, truth[1], truth[2])
                row.check = f"{err:.1e} vs float64 {truth[0]}"
                if err > bound:
                    row.status = (f"FAILED check (rel. error {err:.1e} vs float64 > {bound:.1e}, twice the "
                                  f"{LABELS[yard_backend]} error {yard_err:.1e})")
                    continue
            elif baseline is None:
                baseline = (backend, loss, grads)
                row.check = "baseline"
            else:
                err = _max_err(loss, grads, baseline[1], baseline[2])
                row.check = f"{err:.1e} vs {baseline[0]}"
                if err > check_tolerance(dtype):
                    row.status = f"FAILED check (rel. error {err:.1e} vs {baseline[0]})"
                    continue
            del loss, grads
            if backend != "compile" and row.first_call > LONG_CALL * opts.budget_s:
                # after the warm-up, a call this long is steady state: time that call rather than
                # spend as long again on a second one
                row.times = [row.first_call]
                row.notes.append("timed on the checked first call")
            else:
                timed.append((row, step))  # timed below, interleaved with the other backends
                continue
            _finish_row(row, step, inputs, case, energy, dtype, opts, long_call)
        except Exception as err:  # one backend's failure must not stop the table
            _fail_row(row, err)
        finally:
            holder.clear()
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        _log_row(opts, row)
    _time_interleaved(timed, inputs, opts)
    for row, step in timed:
        if row.status != "ok":
            _log_row(opts, row)
            continue
        try:
            if row.backend == "compile" or row.first_call > 2 * row.time:
                row.notes.append(f"first call {measure.fmt_time(row.first_call)}")
            _finish_row(row, step, inputs, case, energy, dtype, opts, False)
        except Exception as err:
            _fail_row(row, err)
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        _log_row(opts, row)
    return rows


def _time_interleaved(timed, inputs, opts: Options) -> None:
    """Times the backends of one workload in turns (one call each per turn, until each has ``max_repeats``
    calls or has spent ``budget_s``), so that a slow phase of a noisy machine falls on every backend alike
    and the ratios between them hold, where timing one backend after the other would put it on one."""
    spent = {id(row): 0.0 for row, _ in timed}
    while True:
        active = [(row, step) for row, step in timed if row.status == "ok" and len(row.times) < opts.max_repeats
                  and (not row.times or spent[id(row)] < opts.budget_s)]
        if not active:
            return
        for row, step in active:
            try:
                t = measure.time_call(lambda: step(inputs), opts.device)
            except Exception as err:
                _fail_row(row, err)
                continue
            row.times.append(t)
            spent[id(row)] += t


def _fail_row(row: Row, err: Exception) -> None:
    if measure.is_oom(err):
        row.status = "OOM"
    else:
        row.status = f"error ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})"
    row.times = []


def _log_row(opts: Options, row: Row) -> None:
    t = row.time
    _log(opts, f"  {LABELS[row.backend]:26s} {row.status} {measure.fmt_time(t) if t else ''} "
               f"mem {measure.fmt_bytes(row.peak_bytes)} {row.check}")


def _finish_row(row: Row, step, inputs, case: Case, energy: Energy, dtype: torch.dtype, opts: Options,
                long_call: bool) -> None:
    """After the timing: the backend's best rate so far and the row's peak memory."""
    on_gpu = torch.device(opts.device).type == "cuda"
    backend = row.backend
    opts.best_rate[backend] = max(opts.best_rate.get(backend, 0.0), case.flops() / row.time)
    if long_call:
        row.notes.append("memory measured in-process on the first call")
    elif opts.measure_memory:
        if on_gpu:
            row.peak_bytes = measure.cuda_growth(lambda: step(inputs), opts.device)
        elif backend == "compile":
            # a fresh process would compile again (tens of seconds): measure here, after the heap
            # of earlier backends has been given back to the OS
            row.peak_bytes = measure.rss_growth(lambda: step(inputs))[0]
            row.notes.append("memory measured in-process")
        else:
            probe = _probe_memory_cpu(case, energy, backend, dtype, opts, row.time < 1.0)
            row.peak_bytes = probe.peak_bytes
            if probe.status != "ok":
                row.notes.append(probe.status)


def run_all(cases: Sequence[Case], dtypes: Sequence[torch.dtype], backends: Sequence[str], energy: Energy,
            opts: Options) -> List[Row]:
    rows: List[Row] = []
    for case in cases:
        for dtype in dtypes:
            _log(opts, f"{case.name} N={case.n_label} D={case.d_label} {str(dtype)[6:]}")
            rows.extend(run_case(case, dtype, backends, energy, opts))
    return rows


def speedups(rows: Sequence[Row]) -> Dict[int, Optional[float]]:
    """Each row's speedup over the eager reference on the same workload and dtype (None where either
    did not run)."""
    ref = {(r.case, r.dtype): r.time for r in rows if r.backend == "reference" and r.time}
    return {id(r): (ref[(r.case, r.dtype)] / r.time if r.time and (r.case, r.dtype) in ref else None)
            for r in rows}
