"""``python -m bench``: options, presets, and the run that prints and saves the table."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

import torch

from . import measure, report, runner
from .workloads import ALL_BACKENDS, Energy, backend_unavailable, parse_cases

#: Workloads per preset (``--sizes`` syntax). ``cpu`` is what ``make bench`` runs (under 5 minutes on 2 cores,
#: together with the sweep); ``gpu`` is the size grid of the Triton and CUDA kernels plus the 100,000-class
#: head; ``quick`` is a smoke test.
PRESETS = {
    "cpu": "4096,128;8192,3;2048,64;50000,64;network;comhe",
    "gpu": ("4096,128;16384,128;16384,512;65536,64;100000,512;4096,3;65536,3;100000,3;4096,32;16384,32;"
            "network;comhe"),
    "quick": "1024,64;2048,3;network;comhe:256",
}
PRESET_DTYPES = {"cpu": "float32", "gpu": "float32,bfloat16", "quick": "float32"}


def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0, ...)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="workload list; default: cpu on CPU, gpu on CUDA")
    ap.add_argument("--sizes", default=None,
                    help='replaces the preset\'s workloads: "N,D;B,N,D;network;comhe[:N]"')
    ap.add_argument("--backends", default=None,
                    help=f"comma list from {','.join(ALL_BACKENDS)}; default: every one that runs here")
    ap.add_argument("--dtype", default=None, help="comma list, e.g. float32,bfloat16; default: by preset")
    ap.add_argument("--kind", default="riesz", help="energy kind of the single-matrix and network workloads")
    ap.add_argument("--s", type=float, default=1.0, help="exponent s of riesz/angular")
    ap.add_argument("--half-space", action="store_true", help="half-space energy for single-matrix workloads")
    ap.add_argument("--repeats", type=int, default=20, help="maximum timed repeats per backend and workload")
    ap.add_argument("--budget", type=float, default=1.5,
                    help="seconds of timed repeats per backend and workload before it stops repeating")
    ap.add_argument("--max-matrix-gb", type=float, default=None,
                    help="skip materializing backends whose N x N matrix exceeds this; "
                         "default: 4 (or a quarter of RAM if less) on CPU, no limit on GPU (OOM is reported)")
    ap.add_argument("--max-call-s", type=float, default=None,
                    help="skip a backend on a workload when its best flop rate so far in this run says one "
                         "call would take longer; default 20 on CPU, 300 on GPU")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="results file, written exactly there (folders created); default "
                         "bench/out/<device>-<date>.md (git-ignored; the sweep: bench/out/sweep-<device>-<date>"
                         ".png and .md). Pass bench/results/NAME.md to add a run to the committed results")
    ap.add_argument("--sweep", action="store_true", help="run the scaling sweep (time and memory against N)")
    ap.add_argument("--sweep-d", type=int, default=64, help="fixed D of the sweep")
    ap.add_argument("--sweep-n", default=None, help="comma list of N for the sweep; default by device")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap.parse_args(argv)


def _ram_bytes() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16e9


def _load():
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def main(argv: List[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    report.ARGV = argv
    args = parse_args(argv)
    device = args.device
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print(f"--device {device}: torch sees no CUDA device here", file=sys.stderr)
        return 2
    if args.max_matrix_gb is not None:
        max_matrix = args.max_matrix_gb * 1e9
    else:
        max_matrix = float("inf") if on_gpu else min(4e9, _ram_bytes() / 4)
    if args.sweep:
        from . import sweep

        return sweep.main(args, max_matrix)

    preset = args.preset or ("gpu" if on_gpu else "cpu")
    cases = parse_cases(args.sizes or PRESETS[preset])
    dtypes = [getattr(torch, d.strip()) for d in (args.dtype or PRESET_DTYPES[preset]).split(",")]
    wanted = [b.strip() for b in args.backends.split(",")] if args.backends else list(ALL_BACKENDS)
    unknown = [b for b in wanted if b not in ALL_BACKENDS]
    if unknown:
        print(f"--backends: unknown {unknown}; choose from {list(ALL_BACKENDS)}", file=sys.stderr)
        return 2
    skipped = {b: why for b in wanted if (why := backend_unavailable(b, device, bool(args.backends)))}
    backends = [b for b in wanted if b not in skipped]
    energy = Energy(args.kind, args.s, args.half_space)
    opts = runner.Options(device=device, budget_s=args.budget, max_repeats=args.repeats,
                          max_matrix_bytes=max_matrix, seed=args.seed, measure_memory=not args.no_memory,
                          verbose=not args.quiet,
                          max_call_s=args.max_call_s or (300.0 if on_gpu else 20.0))

    info = measure.hardware(device)
    load_start = _load()
    if not args.quiet:
        print("hardware: " + "; ".join(f"{k} {v}" for k, v in info.items()), file=sys.stderr)
    peaks = {dt: measure.matmul_peak(device, dt) for dt in dtypes}
    rows = runner.run_all(cases, dtypes, backends, energy, opts)
    # measured again after the table, keeping the better: one measurement during a busy moment would
    # understate the peak and overstate every row's fraction of it
    for dt in dtypes:
        again = measure.matmul_peak(device, dt)
        if again[0] > peaks[dt][0]:
            peaks[dt] = again
        peaks[dt] = (peaks[dt][0], peaks[dt][1] + "; the better of a measurement before and after the table")

    energy_desc = (f"{energy.kind} s={energy.s:g}{', half-space' if energy.half_space else ''} (mean over "
                   f"pairs); network: hidden layers half-space + {10:g} x output layer, through energy_many "
                   f"(the reference: one call per layer); CoMHE: riesz s=2 half-space on [20, N, 40]")
    timing = (f"median of up to {args.repeats} repeats, never of a first call: every backend is first called "
              f"untimed on a small instance of the workload (at most {runner.WARMUP_ROWS} rows, the same formula; "
              f"compilation and loading happen there), then on the workload itself as the correctness check "
              f"(torch.compile: that call is its warm-up), stopping after {args.budget:g} s of calls; a check "
              f"call over {runner.LONG_CALL:g} x --budget is the only timed call; the backends of a workload take "
              f"turns, one "
              f"call each, so that a slow phase of the machine falls on all of them; "
              + ("CUDA events" if on_gpu else f"time.perf_counter, {torch.get_num_threads()} torch threads"))
    if load_start is not None:
        load_end = _load()
        busy = max(load_start, load_end) > torch.get_num_threads() + 0.5 and not on_gpu
        info["load average (1 min) at start / end"] = (
            f"{load_start:.1f} / {load_end:.1f} on {os.cpu_count()} cores"
            + (": other processes shared the CPU during this run, so times are inflated and noisy" if busy else ""))
    head = report.header(device, info, peaks, skipped, energy_desc, timing, report.describe_memory(device, rows))
    body = head + "\n\n" + report.table(rows, peaks, device) + "\n"
    cost = report.check_cost(rows)
    if cost:
        body += "\nCost of the close-pair check on these inputs (random rows, no pair close; median times, " \
                "timed in turns):\n\n" + "\n".join(cost) + "\n"
    print(body)
    path = args.out or report.default_path(device)
    report.write(path, f"hsu-kernels benchmark: {measure.device_slug(device)}", body)
    print(f"written: {os.path.relpath(path)}", file=sys.stderr)
    failures = report.summary_failures(rows)
    for f in failures:
        print("FAILED: " + f, file=sys.stderr)
    return 1 if failures else 0
