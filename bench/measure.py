"""Timing, memory, hardware detection and the device's measured matmul peak.

Time: the median of repeats after a warm-up call; CUDA events on GPU, ``time.perf_counter`` on CPU. A case
stops repeating once ``budget_s`` has been spent (at least ``min_repeats``, at most ``max_repeats``).

Memory: on GPU, ``torch.cuda.max_memory_allocated`` during one step minus what was allocated before it (the
inputs). On CPU, the growth of the resident set during one step, measured in a fresh process (see
``bench/memprobe.py``): the kernel's high-water mark is reset (``/proc/self/clear_refs``) after the inputs
are built, so the number is the peak RSS during the step minus the RSS before it. Where that file cannot
be written, ``ru_maxrss`` after the step minus the RSS before it is used instead (an upper bound).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call of ``fn`` (CUDA events on GPU)."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_repeats(fn: Callable[[], object], device: str, budget_s: float = 1.5, min_repeats: int = 1,
                 max_repeats: int = 20) -> List[float]:
    """Times of repeated calls (the caller has warmed ``fn`` up), adaptive: stop after ``budget_s``."""
    times: List[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < min_repeats or spent < budget_s):
        t = time_call(fn, device)
        times.append(t)
        spent += t
    return times


def die_with_parent() -> None:
    """``preexec_fn`` of worker processes: end them when the benchmark that started them ends (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def median(xs: List[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------------------------- memory

def _proc_status(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(field + r":\s+(\d+)\s*kB", f.read())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Give freed heap memory back to the OS, so the RSS before a step holds no reusable free blocks."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_growth(fn: Callable[[], object]) -> Tuple[int, str]:
    """Peak RSS during ``fn()`` minus the RSS before it, in bytes, and the method used."""
    _trim_heap()
    before = _proc_status("VmRSS")
    if before is not None and _reset_hwm():
        fn()
        peak = _proc_status("VmHWM")
        if peak is not None:
            return max(0, peak - before), "VmHWM after clear_refs - VmRSS before"
    before = before if before is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(0, peak - before), "ru_maxrss after - RSS before (upper bound)"


def cuda_growth(fn: Callable[[], object], device: str) -> int:
    """``max_memory_allocated`` during ``fn()`` minus the memory allocated before it, in bytes."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def is_oom(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(err).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def fmt_time(t: float) -> str:
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


# -------------------------------------------------------------------------------------------- hardware

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> Dict[str, str]:
    """What the results depend on: the device, its software, the thread count."""
    info: Dict[str, str] = {}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
        info["CUDA"] = str(torch.version.cuda)
    else:
        info["device"] = f"{cpu_model()}, {os.cpu_count()} logical cores"
        info["torch threads"] = str(torch.get_num_threads())
    info["torch"] = torch.__version__
    for mod in ("triton", "pykeops"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    info["python"] = platform.python_version()
    return info


def device_slug(device: str) -> str:
    """A file-name-safe device name: ``cpu`` or the GPU's name (``nvidia-h100-80gb-hbm3``)."""
    if torch.device(device).type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return "cpu"


def git_commit() -> str:
    """``git rev-parse HEAD``, marked when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return head.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def matmul_size(device: str) -> int:
    """n of the square matmul that measures the peak: 8192 on GPU, 2048 on CPU (large enough to run at full
    speed on either)."""
    return 8192 if torch.device(device).type == "cuda" else 2048


def matmul_peak(device: str, dtype: torch.dtype, budget_s: float = 1.0) -> Tuple[float, str]:
    """The device's attainable FLOP/s in ``dtype``: the best of repeated square ``torch.mm`` calls (2 n^3
    flops each, n = :func:`matmul_size`)."""
    n = matmul_size(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    times = time_repeats(lambda: torch.mm(a, b), device, budget_s=budget_s, min_repeats=3, max_repeats=50)
    how = f"best of {len(times)} torch.mm [{n} x {n}] @ [{n} x {n}]"
    if torch.device(device).type == "cuda" and dtype == torch.float32:
        how += f", allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
    return 2.0 * n ** 3 / min(times), how
