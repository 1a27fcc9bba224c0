"""The markdown table and the results file (``bench/out/<device>-<date>.md`` unless ``--out`` names one).

``bench/out/`` is git-ignored: a run never overwrites a committed result. ``bench/results/`` holds the runs
the README quotes; a run goes there only when ``--out`` names it."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import measure
from .runner import Row, speedups
from .workloads import LABELS

#: Where a run writes when ``--out`` is not given (created on demand, git-ignored).
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
#: The committed results the README quotes (written only when ``--out`` names a file there).
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

COLUMNS = ["backend", "workload", "N", "D", "dtype", "time", "vs reference", "GFLOP/s", "% of peak",
           "peak memory", "check", "notes"]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


#: Single-matrix workloads up to this D get their time as a multiple of one n^3 matmul in the notes (points
#: on a sphere: the per-pair arithmetic, not the products, sets their speed; issue 16's yardstick).
MATMUL_RATIO_MAX_D = 4


def matmul_ratio_note(row: Row, peaks: Dict[torch.dtype, Tuple[float, str]], device: str) -> Optional[str]:
    """``"0.25x sgemm(2048^3) (91.7 ms)"``: the row's median time over the time of the square matmul that
    measured the peak in this process (its best time), for single-matrix workloads with D <= 4."""
    peak = peaks.get(row.dtype, (None, ""))[0]
    if row.time is None or not peak or row.case.kind != "single" or row.case.d > MATMUL_RATIO_MAX_D:
        return None
    n = measure.matmul_size(device)
    t_mm = 2.0 * n ** 3 / peak
    name = {torch.float32: "sgemm", torch.float64: "dgemm"}.get(row.dtype, f"{dtype_name(row.dtype)} matmul")
    return f"{row.time / t_mm:.2f}x {name}({n}^3) ({measure.fmt_time(t_mm)})"


def table(rows: Sequence[Row], peaks: Dict[torch.dtype, Tuple[float, str]], device: str = "cpu") -> str:
    """The markdown table, one line per (workload, dtype, backend), measured on ``device``."""
    sp = speedups(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        t = r.time
        if t is None:
            cells = [r.status if r.status != "ok" else "-", "", "", "", "", "", ""]
        else:
            rate = r.case.flops() / t
            peak = peaks.get(r.dtype, (None, ""))[0]
            speed = sp.get(id(r))
            cells = [
                f"{measure.fmt_time(t)} (x{len(r.times)})",
                f"{speed:.1f}x" if speed is not None else "n/a",
                f"{rate / 1e9:.1f}",
                f"{100 * rate / peak:.1f}%" if peak else "-",
                measure.fmt_bytes(r.peak_bytes),
                r.check,
                "; ".join([n for n in r.notes if not n.startswith("VmHWM")]
                          + [note for note in (matmul_ratio_note(r, peaks, device),) if note]),
            ]
        lines.append("| " + " | ".join([LABELS[r.backend], r.case.name, r.case.n_label, r.case.d_label,
                                           dtype_name(r.dtype)] + cells) + " |")
    return "\n".join(lines)


def header(device: str, info: Dict[str, str], peaks: Dict[torch.dtype, Tuple[float, str]],
           skipped: Dict[str, str], energy_desc: str, opts_desc: str, memory_method: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"- command: `{command_line()}`",
        f"- commit: `{measure.git_commit()}`",
        f"- date: {now}",
    ]
    out += [f"- {k}: {v}" for k, v in info.items()]
    for dtype, (rate, how) in peaks.items():
        out.append(f"- measured peak, {dtype_name(dtype)}: {rate / 1e9:.1f} GFLOP/s ({how})")
    out.append(f"- energy: {energy_desc}; flops counted as 4 N^2 D per matrix (energy + gradient); "
               "the C++ CPU kernel takes each unordered pair once (N^2 D for the dot products, 2 N^2 D for the "
               "gradient: 3 N^2 D executed), so its rate by this count can pass the measured matmul peak")
    out.append(f"- timing: {opts_desc}")
    out.append(f"- peak memory: {memory_method}")
    for b, why in skipped.items():
        out.append(f"- not run: {LABELS.get(b, b)}: {why}")
    return "\n".join(out)


#: The arguments of this run (set by ``cli.main``; ``sys.argv`` when run as ``python -m bench``).
ARGV: Optional[List[str]] = None


def command_line() -> str:
    args = " ".join(shlex.quote(a) for a in (sys.argv[1:] if ARGV is None else ARGV))
    return f"python -m bench {args}".strip()


def default_path(device: str, prefix: str = "", ext: str = ".md") -> str:
    date = datetime.date.today().isoformat()
    return os.path.join(OUT_DIR, f"{prefix}{measure.device_slug(device)}-{date}{ext}")


def write(path: str, title: str, body: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {title}\n\n{body}\n")
    return path


def check_cost(rows: Sequence[Row]) -> List[str]:
    """What the C++ kernel's close-pair check costs on these inputs (random rows: no pair is close): its
    median time over the same kernel's with the check off ("cpu-nocheck"), timed in turns with it."""
    off = {(r.case, r.dtype): r.time for r in rows if r.backend == "cpu-nocheck" and r.time}
    out = []
    for r in rows:
        t_off = off.get((r.case, r.dtype))
        if r.backend == "cpu" and r.time and t_off:
            out.append(f"- close-pair check, {r.case.name} N={r.case.n_label} D={r.case.d_label} "
                       f"{dtype_name(r.dtype)}: {100 * (r.time / t_off - 1):+.1f}% ({measure.fmt_time(r.time)} "
                       f"with it, {measure.fmt_time(t_off)} without)")
    return out


def summary_failures(rows: Sequence[Row]) -> List[str]:
    return [f"{LABELS[r.backend]} on {r.case.name} N={r.case.n_label} D={r.case.d_label}: {r.status}"
            for r in rows if r.status.startswith("FAILED")]


def describe_memory(device: str, rows: Optional[Sequence[Row]] = None) -> str:
    if torch.device(device).type == "cuda":
        return ("torch.cuda.max_memory_allocated during one step minus the memory allocated before it "
                "(the inputs are not counted)")
    method = next((n for r in rows or [] for n in r.notes if n.startswith(("VmHWM", "ru_maxrss"))),
                  "VmHWM after clear_refs - VmRSS before")
    return (f"growth of the resident set during one step, measured in a fresh process per (backend, "
            f"workload) with the same inputs ({method}); the inputs are not counted")
