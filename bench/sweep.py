"""The scaling sweep: time and peak memory of energy + gradient against N at fixed D, one line per backend,
on log-log axes (``bench/out/sweep-<device>-<date>.png``, data in the ``.md`` beside it; with ``--out PATH``,
``PATH`` with its suffix replaced by ``.png`` and ``.md``).

The O(N^2) time of every backend and the O(N^2) memory of the reference against the O(N) memory of the tiled
and fused ones are what the plot should make visible. Each backend runs in its own fresh process on CPU
(``python -m bench.sweep '<json>'``), N increasing; before each point the heap is trimmed and the peak-RSS
mark reset, so a point's memory is its own step's growth. A backend stops once one call takes longer than
``--budget`` x 2 seconds (the next N would take four times as long) or its matrix would pass the limit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Dict, List

import torch

from . import measure, report
from .workloads import (
    HSU_BACKENDS,
    LABELS,
    MATERIALIZING,
    Case,
    Energy,
    backend_unavailable,
    make_inputs,
    make_step,
)

DEFAULT_N = {"cpu": [256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
             "cuda": [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]}


def sweep_backend(spec: dict) -> List[dict]:
    """Time and memory of one backend over increasing N (runs in the worker process on CPU)."""
    device, d, budget = spec["device"], spec["d"], spec["budget"]
    energy = Energy(**spec["energy"])
    dtype = getattr(torch, spec["dtype"])
    on_gpu = torch.device(device).type == "cuda"
    points = []
    for n in spec["ns"]:
        case = Case("single", n=n, d=d)
        if spec["backend"] in MATERIALIZING and case.matrix_bytes(dtype.itemsize, False) > spec["max_matrix"]:
            break
        inputs = make_inputs(case, dtype, device, spec["seed"])
        step = make_step(case, energy, spec["backend"])
        try:
            if on_gpu or not points:  # the first call of a process makes one-off allocations
                step(inputs)
            if on_gpu:
                mem = measure.cuda_growth(lambda: step(inputs), device)
            else:
                mem = measure.rss_growth(lambda: step(inputs))[0]
            times = measure.time_repeats(lambda: step(inputs), device, budget / 3, 1, 10)
        except Exception as err:
            if measure.is_oom(err):
                points.append({"n": n, "time": None, "mem": None, "status": "OOM"})
                break
            raise
        t = measure.median(times)
        points.append({"n": n, "time": t, "mem": mem, "flops": case.flops(), "status": "ok"})
        print(f"  {LABELS[spec['backend']]:20s} N={n:7d} {measure.fmt_time(t):>9s} "
              f"{measure.fmt_bytes(mem):>9s}", file=sys.stderr, flush=True)
        if t > 2 * budget:
            break
    return points


def _run_worker(spec: dict) -> List[dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bench.sweep", json.dumps(spec)], cwd=root,
                          stdout=subprocess.PIPE, text=True, timeout=1800,
                          preexec_fn=measure.die_with_parent)
    if proc.returncode != 0:
        return [{"n": spec["ns"][0], "time": None, "mem": None, "status": f"worker failed ({proc.returncode})"}]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: Dict[str, List[dict]], d: int, dtype: str, device_name: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    all_n = sorted({p["n"] for pts in results.values() for p in pts if p["time"]})
    for backend, pts in results.items():
        ok = [p for p in pts if p["time"]]
        if not ok:
            continue
        ax_t.loglog([p["n"] for p in ok], [p["time"] for p in ok], "o-", label=LABELS[backend])
        mem = [p for p in ok if p["mem"]]
        ax_m.loglog([p["n"] for p in mem], [p["mem"] / 1e6 for p in mem], "o-", label=LABELS[backend])
    if all_n:
        n0, n1 = all_n[0], all_n[-1]
        t0 = min(p["time"] for pts in results.values() for p in pts if p["time"] and p["n"] == n0)
        ax_t.loglog([n0, n1], [t0, t0 * (n1 / n0) ** 2], "k:", lw=1, label="slope N^2")
        m0 = [p["mem"] for pts in results.values() for p in pts if p["time"] and p["n"] == n1 and p["mem"]]
        if m0:
            ax_m.loglog([n0, n1], [min(m0) / 1e6 * n0 / n1, min(m0) / 1e6], "k--", lw=1, label="slope N")
            ax_m.loglog([n0, n1], [min(m0) / 1e6 * (n0 / n1) ** 2, min(m0) / 1e6], "k:", lw=1, label="slope N^2")
    ax_t.set_xlabel("N (rows)")
    ax_t.set_ylabel("energy + gradient, median time [s]")
    ax_m.set_xlabel("N (rows)")
    ax_m.set_ylabel("peak memory growth [MB]")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"hsu-kernels scaling, D = {d}, {dtype}, {device_name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args, max_matrix: float) -> int:
    device = args.device
    on_gpu = torch.device(device).type == "cuda"
    dtype = (args.dtype or "float32").split(",")[0].strip()
    ns = [int(x) for x in args.sweep_n.split(",")] if args.sweep_n else DEFAULT_N["cuda" if on_gpu else "cpu"]
    wanted = [b.strip() for b in args.backends.split(",")] if args.backends else list(HSU_BACKENDS)
    skipped = {b: why for b in wanted if (why := backend_unavailable(b, device))}
    backends = [b for b in wanted if b not in skipped]
    energy = Energy(args.kind, args.s, args.half_space)
    results: Dict[str, List[dict]] = {}
    for b in backends:
        spec = {"device": device, "d": args.sweep_d, "ns": ns, "budget": args.budget, "backend": b,
                "energy": dataclasses.asdict(energy), "dtype": dtype, "seed": args.seed, "max_matrix": max_matrix,
                "threads": torch.get_num_threads()}
        results[b] = sweep_backend(spec) if on_gpu else _run_worker(spec)

    info = measure.hardware(device)
    png = report.default_path(device, "sweep-", ".png") if not args.out else os.path.splitext(args.out)[0] + ".png"
    md = os.path.splitext(png)[0] + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    plot(results, args.sweep_d, dtype, info["device"], png)
    lines = [f"- command: `{report.command_line()}`", f"- commit: `{measure.git_commit()}`"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines.append(f"- workload: {energy.kind} s={energy.s:g}, energy + gradient, D = {args.sweep_d}, {dtype}")
    if on_gpu:
        lines.append(f"- peak memory: {report.describe_memory(device)}")
    else:
        lines.append("- peak memory: resident-set growth during one step, one fresh process per backend with N "
                     "increasing; before each point the heap is trimmed (malloc_trim) and the peak-RSS mark "
                     "reset (/proc/self/clear_refs), then VmHWM - VmRSS before; inputs not counted")
    lines += [f"- not run: {LABELS[b]}: {why}" for b, why in skipped.items()]
    lines.append(f"- plot: {os.path.basename(png)}")
    lines += ["", "| backend | N | time | GFLOP/s | peak memory |", "|---|---|---|---|---|"]
    for b, pts in results.items():
        for p in pts:
            if p["time"]:
                lines.append(f"| {LABELS[b]} | {p['n']} | {measure.fmt_time(p['time'])} | "
                             f"{p['flops'] / p['time'] / 1e9:.1f} | {measure.fmt_bytes(p['mem'])} |")
            else:
                lines.append(f"| {LABELS[b]} | {p['n']} | {p['status']} | | |")
        stop = pts[-1]["n"] if pts else None
        if stop is not None and stop != ns[-1] and pts[-1]["time"]:
            lines.append(f"| {LABELS[b]} | > {stop} | not run: the last call took over 2 x --budget "
                         f"({args.budget:g} s) or the N x N matrix would pass the limit | | |")
    body = "\n".join(lines) + "\n"
    report.write(md, f"hsu-kernels scaling sweep: {measure.device_slug(device)}", body)
    print(body)
    print(f"written: {os.path.relpath(png)}, {os.path.relpath(md)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    torch.set_num_threads(_spec.get("threads", torch.get_num_threads()))
    print(json.dumps(sweep_backend(_spec)))
