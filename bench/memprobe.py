"""Peak memory of one (backend, workload) step in a fresh process, for CPU runs.

``python -m bench.memprobe '<json>'`` builds the same inputs as the main process (same seed), optionally
runs one warm-up step (``torch.compile`` needs it, and a cheap step loses nothing by it), then measures the
resident-set growth of one step (``measure.rss_growth``) and prints one JSON line. A fresh process per
measurement keeps memory freed by earlier backends from hiding a later backend's allocations.
"""

from __future__ import annotations

import json
import sys

import torch

from . import measure, workloads


def probe(spec: dict) -> dict:
    case = workloads.Case(**spec["case"])
    energy = workloads.Energy(**spec["energy"])
    dtype = getattr(torch, spec["dtype"])
    inputs = workloads.make_inputs(case, dtype, "cpu", spec["seed"])
    step = workloads.make_step(case, energy, spec["backend"])
    if spec.get("warmup"):
        step(inputs)
    holder = []
    growth, method = measure.rss_growth(lambda: holder.append(step(inputs)))
    return {"peak_bytes": growth, "method": method}


def main() -> int:
    spec = json.loads(sys.argv[1])
    if "threads" in spec:
        torch.set_num_threads(spec["threads"])
    print(json.dumps(probe(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
