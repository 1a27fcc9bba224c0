"""The CPU kernel's builds and instruction-set copies, side by side on the same inputs.

``python -m bench.isa --build NAME=TREE[:COPY] ...`` times energy + gradient of the C++ CPU kernel (``backend=
"cpu"``) in each named build: TREE is a checkout whose ``hsu_kernels/_C*.so`` is built in place (``python
setup.py build_ext --inplace``, with HSU_CPU_ARCH / HSU_AVX512_WIDE as wanted), COPY an optional
``HSU_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``) for a portable build. Each build runs in its own
process (an extension can be loaded once per process); the processes take turns, round after round, so load
from elsewhere falls on all of them alike, and each build's time is the median over rounds of its per-round
median. The table gives each time and its ratio to the first build named. One thread by default (``--threads``).

Example (the committed table bench/results/isa-cpu-*.md):

    python -m bench.isa --build native=/tmp/b-native --build portable=. --build portable:avx2=.:avx2 \\
        --build portable:default=.:default --build wide512=/tmp/b-wide --out bench/results/isa-cpu-DATE.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Tuple

from bench.measure import cpu_model

#: (N, D, dtype): the small-D kernel (D <= 4), the direct-geometry GEMM engine (D <= 32), the GEMM engine.
WORKLOADS = [(8192, 3, "float64"), (8192, 3, "float32"), (4096, 16, "float32"), (4096, 16, "float64"),
             (4096, 128, "float32"), (2048, 512, "float32")]

WORKER = r"""
import json, os, sys, time
import torch
import hsu_kernels as hk
from hsu_kernels import _C
tree, threads, reps, workloads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
assert os.path.realpath(hk.__file__).startswith(os.path.realpath(tree)), (hk.__file__, tree)
torch.set_num_threads(threads)
out = {"copy": _C._cpu_capability(), "built": _C._cpu_capabilities_built(), "times": {}}
for n, d, dt in workloads:
    g = torch.Generator().manual_seed(n * 1000 + d)
    w = torch.randn(n, d, generator=g, dtype=getattr(torch, dt)).requires_grad_()
    def step():
        e = hk.energy(w, "riesz", s=1.0, backend="cpu")
        e.backward()
        w.grad = None
    step()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    out["times"][f"{n},{d},{dt}"] = ts[len(ts) // 2]
print("RESULT " + json.dumps(out))
"""


def parse_build(spec: str) -> Tuple[str, str, str]:
    """``NAME=TREE[:COPY]`` -> (name, tree, copy or "")."""
    if "=" not in spec:
        raise argparse.ArgumentTypeError(f"--build takes NAME=TREE[:COPY], got {spec!r}")
    name, rest = spec.split("=", 1)
    tree, _, copy = rest.partition(":")
    if copy not in ("", "default", "avx2", "avx512"):
        raise argparse.ArgumentTypeError(f"COPY must be default, avx2 or avx512, got {copy!r}")
    return name, os.path.abspath(tree), copy


def run_round(builds, threads: int, reps: int, workloads) -> Dict[str, dict]:
    out = {}
    for name, tree, copy in builds:
        env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(threads)}
        env.pop("HSU_CPU_CAPABILITY", None)
        if copy:
            env["HSU_CPU_CAPABILITY"] = copy
        proc = subprocess.run([sys.executable, "-c", WORKER, tree, str(threads), str(reps), json.dumps(workloads)],
                              capture_output=True, text=True, env=env, cwd=tree)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"build {name} ({tree}) failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        out[name] = json.loads(line[7:])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=parse_build, action="append", required=True, help="NAME=TREE[:COPY]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per workload per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="markdown file (default bench/out/isa-cpu-<date>.md)")
    args = ap.parse_args(argv)
    workloads = [list(w) for w in WORKLOADS]
    per: Dict[str, Dict[str, List[float]]] = {}
    info = {}
    load = []
    for r in range(args.rounds):
        builds = args.build if r % 2 == 0 else args.build[::-1]  # alternate who goes first
        res = run_round(builds, args.threads, args.reps, workloads)
        for name, v in res.items():
            info[name] = (v["copy"], v["built"])
            for k, t in v["times"].items():
                per.setdefault(name, {}).setdefault(k, []).append(t)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done (load {load[-1]:.2f})", file=sys.stderr)
    names = [b[0] for b in args.build]
    first = names[0]
    med = {n: {k: statistics.median(v) for k, v in per[n].items()} for n in names}
    lines = [f"# CPU kernel builds side by side ({datetime.date.today().isoformat()})", "",
             f"Command: `python -m bench.isa {' '.join(a for a in (argv if argv is not None else sys.argv[1:]))}`", "",
             f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.threads} thread(s); torch energy + gradient, "
             f"Riesz s = 1, `backend=\"cpu\"`; median over {args.rounds} rounds (builds in turns, each round the "
             f"median of {args.reps} calls after a warm-up); load average during the run "
             f"{min(load):.2f}-{max(load):.2f}. Ratio: time / time of `{first}` (below 1 is faster).", "",
             "| build | copy run | copies built | " + " | ".join(f"N={k.split(',')[0]} D={k.split(',')[1]} "
                                                           f"{k.split(',')[2]}" for k in med[first]) + " |",
             "|---|---|---|" + "---|" * len(med[first])]
    for n in names:
        cells = []
        for k, t in med[n].items():
            cells.append(f"{t * 1e3:.1f} ms" + ("" if n == first else f" ({t / med[first][k]:.2f})"))
        lines.append(f"| {n} | {info[n][0]} | {info[n][1]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                   f"isa-cpu-{datetime.date.today().isoformat()}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
