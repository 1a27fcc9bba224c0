"""Benchmark of hsu_kernels.distributed on gloo: time ratios over 1, 2 and 4 processes, memory per rank over 1-8.

    python bench/bench_distributed.py                     # defaults: N = 8192, D = 128, worlds 1 2 4
    python bench/bench_distributed.py --n 8192 --worlds 1 2 --json bench/out/distributed.json

Two measurements, each in fresh processes (one thread per rank, so P ranks use P cores):

1. Time (forward + backward, median of ``--repeats``, the slowest rank) of ``sharded_energy`` (both ring
   strategies) and ``parallel_energy`` on the same N rows split over P ranks, and its ratio to P = 1. On a
   machine with fewer cores than ranks the ratios say how the work divides, not what a cluster would do.
2. Memory of ``sharded_energy`` with a fixed shard of ``--shard`` x ``--mem-d`` per rank while P grows
   (``--mem-worlds``, default 1 2 4 8; the matrix grows with P): the bytes of row/gradient buffers the ring
   held at once (``last_ring_peak_bytes``) and the
   growth of the peak RSS during the call. Both must stay flat in P (O(shard size)), while the matrix grows.

Every timing is preceded by a correctness check against single-process ``energy``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hsu_kernels
from hsu_kernels import distributed as hd


def _even_split(n: int, world: int, rank: int):
    a = n * rank // world
    return a, n * (rank + 1) // world


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rss_growth(fn) -> int:
    """How far the resident set rose above its level at the start while ``fn`` ran: the peak RSS (``VmHWM``,
    reset first through ``/proc/self/clear_refs``) minus the RSS before."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak-RSS mark of this process (Linux >= 4.0)
    before = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - before


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, the slowest rank's (all ranks start together)."""
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(t.item())
    return statistics.median(times)


def _worker(rank, world, init_file, args, out_file, mode):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    kw = dict(kind=args.kind, s=args.s, half_space=args.half_space)
    result = _time_rows(rank, world, args, kw) if mode == "time" else _memory(rank, world, args, kw)
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def _time_rows(rank, world, args, kw) -> dict:
    """Forward+backward seconds of each function on the same N x D problem split over the ranks."""
    result = {"world": world}
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(args.n, args.d, generator=gen)
    want = hsu_kernels.energy(w.double(), **kw).item()
    a, b = _even_split(args.n, world, rank)
    for name, fn in (
        ("sharded_pair", lambda x: hd.sharded_energy(x[a:b].clone().requires_grad_(True), strategy="pair", **kw)),
        ("sharded_owner", lambda x: hd.sharded_energy(x[a:b].clone().requires_grad_(True), strategy="owner", **kw)),
        ("parallel", lambda x: hd.parallel_energy(x.clone().requires_grad_(True), **kw)),
    ):
        got = fn(w).item()
        if abs(got - want) > 1e-4 * abs(want):
            raise AssertionError(f"{name} with {world} ranks: {got} != {want} (single-process float64)")

        def step(fn=fn):
            fn(w).backward()

        result[name + "_s"] = _timed(step, args.repeats)
    return result


def _memory(rank, world, args, kw) -> dict:
    """Ring buffer bytes and RSS growth of sharded_energy with a fixed shard per rank (max over ranks)."""
    result = {"world": world}
    torch.manual_seed(rank)
    shard = torch.randn(args.shard, args.mem_d).requires_grad_(True)
    for strategy in hd.STRATEGIES:  # first-call costs (lazy initialization) on a tiny shard, not counted
        hd.sharded_energy(torch.randn(2, 8, requires_grad=True), strategy=strategy, **kw).backward()
    for strategy in hd.STRATEGIES:
        dist.barrier()
        grown = _rss_growth(lambda: hd.sharded_energy(shard, strategy=strategy, **kw).backward())
        peak = torch.tensor([hd.last_ring_peak_bytes, grown], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        result[f"ring_bytes_{strategy}"] = int(peak[0])
        result[f"rss_growth_{strategy}"] = int(peak[1])
    result["shard_bytes"] = shard.numel() * shard.element_size()
    result["matrix_bytes"] = world * result["shard_bytes"]
    return result


def _run(world: int, args, mode: str) -> dict:
    fd, out_file = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    init_file = out_file + ".store"
    try:
        ctx = mp.start_processes(_worker, args=(world, init_file, args, out_file, mode), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + args.timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"the {world}-process run took longer than {args.timeout} s")
        with open(out_file) as f:
            return json.load(f)
    finally:
        for path in (out_file, init_file):
            if os.path.exists(path):
                os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8192, help="rows of the timed problem")
    ap.add_argument("--d", type=int, default=128, help="row length D")
    ap.add_argument("--shard", type=int, default=512, help="rows per rank in the memory measurement")
    ap.add_argument("--mem-d", type=int, default=4096, help="row length in the memory measurement")
    ap.add_argument("--mem-worlds", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--kind", default="riesz")
    ap.add_argument("--s", type=float, default=1.0)
    ap.add_argument("--half-space", action="store_true")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run's processes are killed")
    ap.add_argument("--json", default=None,
                    help="also write the results to this file (folders created; default: print only)")
    ap.add_argument("--malloc-default", action="store_true",
                    help="keep glibc's dynamic mmap threshold (then freed ring buffers stay in the heap and RSS "
                         "creeps up with the number of ring steps, which says more about malloc than about us)")
    args = ap.parse_args()
    if not args.malloc_default:
        # Inherited by the spawned ranks: buffers of 128 KiB and up are mmapped and returned on free, so the
        # RSS growth counts the buffers alive at once, not what glibc keeps around.
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")

    info = {"torch": torch.__version__, "backend": "gloo", "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads_per_rank": 1,
            "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
            "problem": f"N={args.n} D={args.d} kind={args.kind} s={args.s} half_space={args.half_space} float32"}
    print(json.dumps(info))
    rows = [_run(world, args, "time") for world in args.worlds]
    mem = [_run(world, args, "mem") for world in args.mem_worlds]
    base = rows[0]
    print(f"\ntime, forward+backward, median of {args.repeats} (slowest rank); ratio = t(P) / t({base['world']})")
    print(f"{'P':>3} {'sharded pair':>20} {'sharded owner':>20} {'parallel':>20}")
    for r in rows:
        cells = [f"{r[k]:8.3f} s ({r[k] / base[k]:4.2f}x)" for k in ("sharded_pair_s", "sharded_owner_s", "parallel_s")]
        print(f"{r['world']:>3} " + " ".join(f"{c:>20}" for c in cells))
    mib = 1024.0 ** 2
    print(f"\nmemory per rank, sharded_energy, {args.shard} rows x {args.mem_d} per rank "
          f"(shard {mem[0]['shard_bytes'] / mib:.1f} MiB); max over ranks")
    print(f"{'P':>3} {'matrix MiB':>11} {'ring pair':>10} {'ring owner':>11} {'RSS+ pair':>10} {'RSS+ owner':>11}")
    for r in mem:
        print(f"{r['world']:>3} {r['matrix_bytes'] / mib:11.1f} {r['ring_bytes_pair'] / mib:10.1f} "
              f"{r['ring_bytes_owner'] / mib:11.1f} {r['rss_growth_pair'] / mib:10.1f} "
              f"{r['rss_growth_owner'] / mib:11.1f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"info": info, "time": rows, "memory": mem}, f, indent=1)


if __name__ == "__main__":
    main()
