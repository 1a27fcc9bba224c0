"""Compile the Triton kernels for GPU architectures on a machine without a GPU: registers, spills, occupancy.

``triton.compile`` lowers a kernel through Triton's GPU passes, LLVM and ``ptxas`` (bundled with the
Triton wheel) without touching a device. This catches what the CPU interpreter cannot: type errors of the
real frontend, layouts, and register spills (``ptxas -v``). It cannot check the numbers: only running on a
GPU does. Run it without ``TRITON_INTERPRET``::

    python tools/triton_aot.py                  # every kernel a launch can run, sm_90 and sm_80
    python tools/triton_aot.py --fail-on-spill --cache ~/.cache/hsu-kernels/triton-aot
                                                # ... exit 1 if any spills (the CI gate,
                                                # `make triton-aot-check`; see there for its time)
    python tools/triton_aot.py --quick          # one small config per kernel, sm_90 (a compile check)
    python tools/triton_aot.py --kind riesz --kernels fused --ds 256 --modes ieee --no-write  # a subset
    python tools/triton_aot.py --kind gaussian --norm 0 --uniform 1 --no-write  # one variant

A development tool of the checkout, not part of the installed package (which keeps only what a launch needs:
``hsu_kernels/triton/configs.py``'s autotuning configs and exclusion tables). It compiles the kernels of the
checkout it lies in (its root goes first on ``sys.path``), whatever ``hsu_kernels`` the interpreter has
installed. The kinds, and which of them have an un-normalized form, come from
:data:`hsu_kernels.kinds.KIND_TABLE`.

What is compiled (the default): every kernel a launch can run, that is every autotuning config the launcher
can select, in every variant, per kernel:

* ``fused_kernel`` (``hsu_kernels/triton/kernels.py``) for the padded row lengths of D in {3, 16, 32, 64,
  128, 256} (``BLOCK_D`` 16, 32, 64, 128, 256; D = 3 and D = 16 share ``BLOCK_D = 16``): the configs
  ``kernels._prune_fused`` returns for that ``BLOCK_D``, product mode and variant, called with a launch's
  constexpr keyword arguments as Triton's autotuner calls it (``configs.FUSED_TABLE`` less
  ``configs.FUSED_SPILLS``, with the register cap of ``configs.FUSED_LIFT`` where ptxas's own budget spills);
* the strip path (D > 256): the ``coef_kernel`` configs ``kernels._prune_strip`` returns, the
  ``gemm_kernel`` configs ``kernels._prune_gemm`` keeps for the mode, and ``epilogue_kernel``;

each in the three modes a launch can take: float32 inputs with exact products (``ieee``), float32 with
tensor-core products (``tf32``), and bfloat16 inputs (float16 inputs run the float32 kernels in tf32 mode on
a float32 copy: ``launch.run``).

The variants (:func:`gate_variants`) are the compiled-in flags: the kind (every record of the table),
normalized or not (the kinds that are not ``angle`` kinds have both), and the layout (a ragged batch, sizes
and offsets loaded from a table, or a uniform one, scalar sizes with D a multiple of 16): 8 kind variants x 2
layouts. That is every variant there is, so the gate covers every kernel a GPU can run, not a sample:

* the other flags (half-space, self energy, the exponent mode, the half-space self pair) are runtime
  arguments of the kernels (``kernels._RUNTIME_INTS``): branches uniform across a launch, one compiled
  kernel for all of their values. They were constexprs once (136 variants, hours of compiles on 2 cores,
  of which only the most-live were gated, and spot checks of others found spills the gate had missed);
* every integer argument is exempt from Triton's value specialization (``do_not_specialize``: an int equal
  to 1 would be compiled in as a constant, one divisible by 16 would get an alignment attribute, each
  another kernel). The one fact the uniform layout needs, D % 16 == 0, is stated in the kernel
  (``tl.multiple_of``), and the launcher takes that layout only then (``launch.UNIFORM_D_MULTIPLE``);
* pointers are compiled as 16-byte aligned, and the launcher only passes such (``launch._aligned`` copies
  a view that starts off a 16-byte boundary; chunks of a large batch take the whole buffers and an offset
  into them, never a slice).

The float arguments are never specialized by Triton. The GEMM reads none of the kind flags (its body uses
none: a test checks) and is compiled once per config; the coefficient and epilogue kernels once per kind
variant (``STRIP_FLAGS``; the launcher passes them ``UNIFORM=False``).

Per config it reports registers, spill stores/loads (bytes per thread), static shared memory, and the
occupancy: resident warps per SM from registers (64K per SM, allocated per warp in units of 256) and shared
memory (per block plus 1 KB reserved; 228 KB per SM on sm_90, 164 KB on sm_80), at most 64 warps and 32
blocks per SM, with what limits it. The full run writes the table to
``bench/results/triton-ptxas-<date>.md`` with the commit and command (``--out`` elsewhere, ``--no-write``
not at all). ``--cache DIR`` keeps each report under a hash of everything it depends on (:func:`cache_key`:
the kernel's source and that of every jit function and global it uses, the task, the Triton and ptxas
versions, the ``TRITON_*`` environment, the parser's source) and compiles only what is not there; a config
table edit (``configs.py``) changes no kernel's key. Exit status: 2 if a config fails to compile, 1 with
``--fail-on-spill`` if one spills, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

#: The checkout this file lies in: first on sys.path, so that its hsu_kernels is the one compiled (and the one
#: the spawned compile workers import) even where the interpreter has another checkout installed.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)

from hsu_kernels.kinds import KIND_CODE, KIND_TABLE  # noqa: E402

#: Padded row lengths of the fused kernel for the D values of the table, and the Ds each one serves.
FUSED_DS = (3, 16, 32, 64, 128, 256)
MODES = ("ieee", "tf32", "bf16")
#: Every kind by name: its code, the kernels' ``KIND``.
KINDS: Dict[str, int] = dict(KIND_CODE)
#: The kinds with an un-normalized form (the ``angle`` kinds measure angles: always normalized).
UNNORMALIZED_KINDS = tuple(k.name for k in KIND_TABLE if not k.angle)
#: The compiled-in kind flags each strip-path kernel reads (the launcher always passes ``UNIFORM=False`` to
#: them, so the two layouts of a kind compile one kernel each).
STRIP_FLAGS = {"coef_kernel": ("KIND", "NORM"), "epilogue_kernel": ("KIND", "NORM")}
#: The kernels' float arguments (compiled as fp32; Triton never specializes a float on its value). Every
#: other argument is a pointer, a constexpr or an int exempt from specialization (``kernels._RUNTIME_INTS``).
FLOAT_ARGS = ("s", "t", "eps_norm", "eps_ang", "pair_scale", "grad_scale", "tau")
#: The GEMM's kind flags, fixed (the first kind's): its body reads neither (they only key its autotuning).
GEMM_FLAGS = dict(KIND=KIND_TABLE[0].code, NORM=True)

#: Per-SM resources (CUDA occupancy calculator): registers, shared memory usable by blocks, the shared
#: memory reserved per block, the most resident warps and blocks.
ARCH_LIMITS = {
    80: dict(regs=65536, smem=167936, smem_block=166912, reserved=1024, warps=64, blocks=32),
    90: dict(regs=65536, smem=233472, smem_block=232448, reserved=1024, warps=64, blocks=32),
}


def occupancy(arch: int, regs: int, shared: int, warps: int) -> Tuple[int, str]:
    """Resident warps per SM of a kernel and what limits them.

    Args:
        arch: compute capability (80 or 90).
        regs: registers per thread (ptxas).
        shared: shared memory per block in bytes (static, what Triton allocates).
        warps: warps per block.

    Returns:
        ``(warps_per_sm, limiter)``; ``limiter`` is "registers", "shared memory", "warps" or "blocks", and
        ``warps_per_sm`` is 0 ("does not fit") when one block's registers or shared memory exceed the SM's.
    """
    lim = ARCH_LIMITS[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by = {  # in this order, so that a tie names the hardware's own cap first
        "warps": lim["warps"] // warps,
        "blocks": lim["blocks"],
        "registers": (lim["regs"] // regs_per_warp) // warps,
        "shared memory": lim["smem"] // (shared + lim["reserved"]) if shared <= lim["smem_block"] else 0,
    }
    limiter = min(by, key=lambda k: by[k])
    return by[limiter] * warps, limiter if by[limiter] else f"does not fit ({limiter})"


def _mode_consts(mode: str) -> Tuple[str, dict]:
    """(pointer element type, product constexprs) of a mode, as the launcher passes them on a GPU."""
    if mode == "ieee":
        return "fp32", dict(PREC="ieee", PREC2="ieee", C_DTYPE="fp32")
    if mode == "tf32":
        return "fp32", dict(PREC="tf32", PREC2="tf32", C_DTYPE="fp32")
    if mode == "bf16":
        return "bf16", dict(PREC="tf32", PREC2="tf32", C_DTYPE="bf16")
    raise ValueError(f"unknown mode {mode!r}")


def variant(kind: str = "angular", norm: bool = True, uniform: bool = False) -> dict:
    """The compiled-in flags of one launch, as the launcher passes them (the half-space, self-energy,
    exponent-mode and diagonal flags are runtime arguments: one compiled kernel serves them all)."""
    return dict(KIND=KINDS[kind], NORM=norm, UNIFORM=uniform)


def gate_variants(kinds=tuple(KINDS)) -> List[dict]:
    """Every variant a launch can compile: per kind, normalized and, for the kinds that allow it,
    un-normalized, each for a ragged and a uniform batch (only the fused kernel takes a uniform batch, so
    the strip path's tasks of the two are one)."""
    return [variant(kind, norm=norm, uniform=uniform) for kind in kinds
            for norm in ((True, False) if kind in UNNORMALIZED_KINDS else (True,)) for uniform in (False, True)]


def variant_label(task: dict) -> str:
    """A short name of the compiled-in flags a task's kernel reads, e.g. ``riesz raw uniform``."""
    c = task["consts"]
    if task["kernel"] == "gemm_kernel":
        return "every kind (reads no kind flag)"
    parts = [{v: k for k, v in KINDS.items()}[c["KIND"]], "norm" if c["NORM"] else "raw"]
    if task["kernel"] == "fused_kernel":
        parts.append("uniform" if c["UNIFORM"] else "ragged")
    return " ".join(parts)


def tasks(modes=MODES, archs=(90, 80), kind: Optional[str] = None, quick: bool = False,
          variants: Optional[List[dict]] = None) -> List[dict]:
    """Every (kernel, config, mode, arch, kind flags) to compile, as picklable dicts (see
    :func:`compile_one`); ``variants`` (from :func:`variant`) defaults to :func:`gate_variants` of ``kind``
    (None: every kind). A task whose compiled kernel is the same as an earlier one's (a strip-path kernel's
    body does not read every flag: see :data:`STRIP_FLAGS`) is listed once."""
    import triton.language as tl

    from hsu_kernels.triton import kernels as K

    tl_dtype = {"fp32": tl.float32, "bf16": tl.bfloat16}
    if not variants:  # --quick: one kind (a compile check, not the gate)
        variants = [variant(kind or "angular")] if quick else gate_variants((kind,) if kind else tuple(KINDS))
    out, seen = [], set()

    def add(t):
        key = (t["kernel"], t["arch"], t["mode"], tuple(sorted(t["consts"].items())), t["warps"], t["stages"],
               t["maxnreg"])
        if key not in seen:
            seen.add(key)
            out.append(t)

    for arch in archs:
        for mode in modes:
            elt, prod = _mode_consts(mode)
            for v in variants:
                # fused: the configs the launcher's pruner keeps for each padded D, given the same constexpr
                # keyword arguments as a launch
                for bd in [64] if quick else sorted({max(16, 1 << (d - 1).bit_length()) for d in FUSED_DS}):
                    served = [d for d in FUSED_DS if max(16, 1 << (d - 1).bit_length()) == bd]
                    consts = dict(v, **prod, UPCAST=False, EPI="fp32", BLOCK_D=bd)
                    kept = K._prune_fused(K._fused_configs(interpret=False), {},
                                          **dict(consts, C_DTYPE=tl_dtype[prod["C_DTYPE"]], EPI=tl.float32))
                    for c in kept[-1:] if quick else kept:
                        add(dict(kernel="fused_kernel", arch=arch, mode=mode, D=",".join(map(str, served)),
                                 ptrs={"x_ptr": elt, "y_ptr": elt, "g_ptr": elt, "e_ptr": "fp32",
                                       "f_ptr": "i32", "tab_ptr": "i64"},
                                 consts=dict(consts, **c.kwargs), warps=c.num_warps, stages=c.num_stages,
                                 maxnreg=c.maxnreg))
                strip = {k: v[k] for k in STRIP_FLAGS["coef_kernel"]}
                coef_kept = K._prune_strip(K._strip_configs(interpret=False), {},
                                           **dict(strip, UNIFORM=False, PREC=prod["PREC"]))
                for c in coef_kept[-1:] if quick else coef_kept:
                    add(dict(kernel="coef_kernel", arch=arch, mode=mode, D=">256",
                             ptrs={"x_ptr": elt, "y_ptr": elt, "c_ptr": prod["C_DTYPE"], "e_ptr": "fp32",
                                   "b_ptr": "fp32", "f_ptr": "i32", "tab_ptr": "i64"},
                             consts=dict(strip, UNIFORM=False, UPCAST=False, PREC=prod["PREC"], **c.kwargs),
                             warps=c.num_warps, stages=c.num_stages, maxnreg=c.maxnreg))
                # the GEMM's body reads none of the kind flags (they are autotuning keys): one compile per config
                gemm_kept = K._prune_gemm(K._gemm_configs(interpret=False), {}, PREC2=prod["PREC2"],
                                          C_DTYPE=tl_dtype[prod["C_DTYPE"]])
                for c in gemm_kept[-1:] if quick else gemm_kept:
                    add(dict(kernel="gemm_kernel", arch=arch, mode=mode, D=">256",
                             ptrs={"c_ptr": prod["C_DTYPE"], "y_ptr": elt, "a_ptr": "fp32", "tab_ptr": "i64"},
                             consts=dict(GEMM_FLAGS, UNIFORM=False, UPCAST=False, PREC2=prod["PREC2"],
                                         C_DTYPE=prod["C_DTYPE"], **c.kwargs),
                             warps=c.num_warps, stages=c.num_stages, maxnreg=c.maxnreg))
                if mode != "tf32":  # the epilogue has no products: tf32 compiles the same kernel as ieee
                    from hsu_kernels.triton.launch import _EPILOGUE_BLOCK_D, _EPILOGUE_BLOCK_M

                    add(dict(kernel="epilogue_kernel", arch=arch, mode=mode, D=">256",
                             ptrs={"x_ptr": elt, "a_ptr": "fp32", "b_ptr": "fp32", "e_ptr": "fp32", "g_ptr": elt,
                                   "tab_ptr": "i64"},
                             consts=dict({k: v[k] for k in STRIP_FLAGS["epilogue_kernel"]}, UNIFORM=False,
                                         BLOCK_M=_EPILOGUE_BLOCK_M, BLOCK_D=_EPILOGUE_BLOCK_D),
                             warps=4, stages=2, maxnreg=None))
        if quick:
            break
    return out


def select(todo: List[dict], kernels: Optional[str] = None, ds: Optional[str] = None,
           match: Optional[str] = None) -> List[dict]:
    """The tasks of ``todo`` to compile: only the listed kernels (``"fused"`` or ``"fused_kernel"``), only
    the listed Ds (a fused task serves several Ds and is kept when one of them is listed; ``"strip"`` keeps
    the strip path's kernels), only configs whose label (``"<tile>, <warps> warps"``) matches ``match``.
    None keeps everything; iterating on one kernel's configs then compiles a few instead of hundreds."""
    if kernels:
        names = {k.strip() if k.strip().endswith("_kernel") else k.strip() + "_kernel" for k in kernels.split(",")}
        unknown = names - {"fused_kernel", "coef_kernel", "gemm_kernel", "epilogue_kernel"}
        if unknown:
            raise SystemExit(f"--kernels: unknown kernel(s) {sorted(unknown)}")
        todo = [t for t in todo if t["kernel"] in names]
    if ds:
        want = {d.strip() for d in ds.split(",")}
        todo = [t for t in todo if (t["D"] == ">256" and "strip" in want) or (set(t["D"].split(",")) & want)]
    if match:
        pat = re.compile(match)
        todo = [t for t in todo if pat.search(f"{_config_str(t)}, {t['warps']} warps")]
    return todo


def compile_one(task: dict) -> dict:
    """Compiles one task with ptxas -v; returns the task with registers, spills, shared memory and the
    compile time added (``error`` set instead when it failed)."""
    import contextlib
    import io

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hsu_kernels.triton import kernels as K

    tl_dtype = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
    kern = getattr(K, task["kernel"])
    jit = kern.fn if isinstance(kern, triton.runtime.Autotuner) else kern  # unwrap autotuning
    consts = {k: tl_dtype[v] if k in ("C_DTYPE", "EPI") else v for k, v in task["consts"].items()}
    sig = {a: ("constexpr" if a in consts else task["ptrs"].get(a, "fp32" if a in FLOAT_ARGS else "i32"))
           for a in jit.arg_names}
    sig = {a: ("*" + v if a.endswith("_ptr") else v) for a, v in sig.items()}
    # torch allocations are 16-byte aligned: the launcher's pointers carry tt.divisibility=16
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(jit.arg_names) if a.endswith("_ptr")}
    res = dict(task)
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(fn=jit, signature=sig, constexprs=consts, attrs=attrs),
                                target=GPUTarget("cuda", task["arch"], 32),
                                options={"num_warps": task["warps"], "num_stages": task["stages"],
                                         "maxnreg": task.get("maxnreg")})
    except Exception as exc:  # reported per task; the caller fails the run
        # a CompilationError names the kernel's line, raised from one per call level; what went wrong (a
        # tl.static_assert's message: an unknown kind code) is in the innermost exception
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        res["error"] = (f"{type(exc).__name__}: {str(exc)[:400]}"
                        + (f"\n{type(cause).__name__}: {str(cause)[-400:]}" if cause is not exc else ""))
        return res
    res["seconds"] = time.perf_counter() - t0
    text = log.getvalue()

    def grab(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else None

    res["registers"] = grab(r"Used (\d+) registers")
    res["spill_stores"] = grab(r"(\d+) bytes spill stores")
    res["spill_loads"] = grab(r"(\d+) bytes spill loads")
    res["stack"] = grab(r"(\d+) bytes stack frame")
    res["shared"] = int(getattr(ck.metadata, "shared", 0) or 0)
    if res["registers"] is None or res["spill_stores"] is None:
        # a Triton that does not print ptxas's report: read the cubin's resource usage instead; its stack
        # frame per thread (which holds the spills) bounds them from above
        usage = cubin_usage(ck.asm.get("cubin", b""))
        if usage is None:
            res["error"] = "no ptxas -v report in the compile log and no cuobjdump:\n" + text[-600:]
        else:
            res["registers"], res["stack"] = usage["REG"], usage["STACK"]
            res["spill_stores"] = res["spill_loads"] = usage["STACK"]
            res["spill_bound"] = True
    return res


def cache_key(task: dict) -> str:
    """What a task's report depends on, hashed: the kernel's source with every jit function and global it
    uses (Triton's own ``JITFunction.cache_key``), the task (arch, mode, pointer types, constexprs, warps,
    stages), the Triton version, the ptxas that compiles for the arch (its ``--version``), the ``TRITON_*``
    environment, and the source of the code that compiles a task and reads its report (:data:`_SOURCE_HASH`:
    :func:`compile_one`, :func:`cubin_usage`, the workers' environment and :data:`FLOAT_ARGS`, read at import,
    so that an edit made while a run is going does not enter it; the rest of this module, tables and
    command line, does not change a report)."""
    import json

    import triton
    from triton.backends.nvidia.compiler import get_ptxas_version

    from hsu_kernels.triton import kernels as K

    kern = getattr(K, task["kernel"])
    jit = kern.fn if isinstance(kern, triton.runtime.Autotuner) else kern
    parts = dict(task={k: task.get(k) for k in ("kernel", "arch", "mode", "ptrs", "consts", "warps", "stages",
                                                "maxnreg")},
                 kernel=jit.cache_key, triton=triton.__version__, ptxas=get_ptxas_version(task["arch"]),
                 env={k: v for k, v in os.environ.items() if k.startswith("TRITON_") and k != "TRITON_CACHE_DIR"},
                 code=_SOURCE_HASH)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def compile_cached(task: dict, cache: Optional[str]) -> dict:
    """:func:`compile_one`, or its earlier report from ``cache`` (a directory of ``<cache_key>.json``; None: no
    cache). A report of a failed compile is not stored."""
    import json

    if not cache:
        return compile_one(task)
    path = os.path.join(cache, cache_key(task) + ".json")
    try:
        with open(path) as f:
            return dict(json.load(f), cached=True)
    except (OSError, ValueError):
        pass
    res = compile_one(task)
    if "error" not in res:
        os.makedirs(cache, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, path)
    return res


def cubin_usage(cubin: bytes) -> Optional[Dict[str, int]]:
    """REG, STACK, SHARED and LOCAL of the kernel in ``cubin`` from ``cuobjdump --dump-resource-usage`` (the
    one shipped with Triton, else the one on PATH); None when there is no cuobjdump or no kernel."""
    import shutil
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = tool if os.path.isfile(tool) else shutil.which("cuobjdump")
    if not tool or not cubin:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                 timeout=120).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, m.groups()))) if m else None


def _worker_init():
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _report_code_hash() -> str:
    """The hash of the source of what compiles a task and reads its report (see :func:`cache_key`)."""
    import inspect

    src = "".join(inspect.getsource(f) for f in (compile_one, cubin_usage, _worker_init)) + repr(FLOAT_ARGS)
    return hashlib.sha256(src.encode()).hexdigest()


#: :func:`_report_code_hash` at import, part of every cache key.
_SOURCE_HASH = _report_code_hash()


def _config_str(t: dict) -> str:
    c = t["consts"]
    cap = f", maxnreg {t['maxnreg']}" if t.get("maxnreg") else ""
    if t["kernel"] == "fused_kernel":
        chunk = f", BLOCK_K {c['BLOCK_K']}" if c.get("BLOCK_K", c["BLOCK_D"]) < c["BLOCK_D"] else ""
        return f"{c['BLOCK_M']}x{c['BLOCK_N']}, BLOCK_D {c['BLOCK_D']}{chunk}{cap}"
    if t["kernel"] == "coef_kernel":
        return f"{c['BLOCK_M']}x{c['BLOCK_N']}, BLOCK_K {c['BLOCK_K']}{cap}"
    if t["kernel"] == "gemm_kernel":
        return f"{c['BLOCK_M']}x{c['BLOCK_D']}, BLOCK_K {c['BLOCK_K']}{cap}"
    return f"{c['BLOCK_M']}x{c['BLOCK_D']}{cap}"


def _row(t: dict) -> List[str]:
    head = [t["kernel"], variant_label(t), t["mode"], t["D"], _config_str(t), str(t["warps"]), str(t["stages"]),
            f"sm_{t['arch']}"]
    if "error" in t:
        return head + ["FAILED", "", "", "", "", t["error"].splitlines()[0][:80]]
    warps_sm, limiter = occupancy(t["arch"], t["registers"], t["shared"], t["warps"])
    spill = [f"<= {t[k]} (stack)" if t.get("spill_bound") else str(t[k]) for k in ("spill_stores", "spill_loads")]
    return head + [str(t["registers"]), *spill, str(t["shared"]), str(warps_sm), limiter]


HEADER = ["kernel", "variant", "mode", "D", "tile", "warps", "stages", "arch", "registers", "spill stores (B)",
          "spill loads (B)", "shared (B)", "warps/SM", "limited by"]


def summarize(results: List[dict]) -> List[str]:
    """One line per (kernel, arch): configs compiled, configs that spill, the largest spill and registers."""
    lines = []
    keys = sorted({(t["kernel"], t["arch"]) for t in results}, key=lambda k: (k[0], -k[1]))
    for kernel, arch in keys:
        rows = [t for t in results if t["kernel"] == kernel and t["arch"] == arch and "error" not in t]
        failed = sum(1 for t in results if t["kernel"] == kernel and t["arch"] == arch and "error" in t)
        spilling = [t for t in rows if t["spill_stores"] or t["spill_loads"]]
        worst = max(rows, key=lambda t: t["spill_stores"], default=None)
        line = (f"{kernel} sm_{arch}: {len(rows)} configs compiled, {len(spilling)} spill"
                + (f" (worst {worst['spill_stores']} B of spill stores: {worst['mode']} {_config_str(worst)}, "
                   f"{worst['warps']} warps)" if spilling else "")
                + (f", max {max(t['registers'] for t in rows)} registers" if rows else "")
                + (f", {failed} FAILED to compile" if failed else ""))
        lines.append(line)
    return lines


def spill_free(results: List[dict]) -> List[str]:
    """One line per (kernel, mode, D, arch): how many of its configs compile without spills, and the worst
    spill among the others (what the autotuner can pick from without spilling)."""
    groups: Dict[tuple, List[dict]] = {}
    for t in results:
        if "error" not in t:
            groups.setdefault((t["kernel"], t["mode"], t["D"], t["arch"]), []).append(t)
    lines = []
    order = MODES
    # stable sort: the Ds keep the order they were compiled in (ascending)
    for (kernel, mode, d, arch), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]),
                                                                                   -kv[0][3])):
        clean = [t for t in rows if not (t["spill_stores"] or t["spill_loads"])]
        worst = max(t["spill_stores"] for t in rows)
        lines.append(f"| {kernel} | {mode} | {d} | sm_{arch} | {len(clean)} of {len(rows)} | "
                     + (f"{worst} |" if worst else "0 |"))
    return lines


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit_label() -> str:
    """The commit of the sources, marked when the working tree differs from it (``HSU_COMMIT`` where the
    tree has no git, as on a machine that got a copy of it)."""
    commit = _git("rev-parse", "--short", "HEAD") or os.environ.get("HSU_COMMIT", "unknown")
    return commit + (" (working tree modified)" if _git("status", "--porcelain", "--untracked-files=no") else "")


def write_table(path: str, results: List[dict], argv: List[str], seconds: float, commit: str,
                load: str = "") -> None:
    """The markdown report: how it was made, the summaries, and one row per compiled config."""
    import triton

    lines = [
        f"# Triton kernels compiled with ptxas, no GPU ({datetime.date.today().isoformat()})",
        "",
        f"- commit: {commit}; triton {triton.__version__}",
        f"- command: `python tools/triton_aot.py {' '.join(argv)}` ({seconds:.0f} s, "
        f"{sum(1 for r in results if not r.get('cached'))} of {len(results)} compiled, the rest from the cache"
        + (f"; load average {load}" if load else "") + ")",
        "- variants, as the fused kernel compiles them (the `variant` column names the flags each kernel reads; "
        "the GEMM reads none): "
        + "; ".join(sorted({variant_label(t) for t in results if t["kernel"] == "fused_kernel"})
                    or sorted({variant_label(t) for t in results}))
        + ". norm/raw: normalized rows or not; ragged: sizes loaded from the table; uniform: scalar sizes, "
        "D % 16 == 0. Half-space, self energy, exponent mode and the half-space self pair are runtime "
        "arguments of each compiled kernel; integer arguments unspecialized; pointers 16-byte aligned",
        "- modes: ieee = float32 inputs, exact fp32 products; tf32 = float32 inputs, tensor-core products; "
        "bf16 = bfloat16 inputs (float16 inputs run the tf32 kernels on a float32 copy)",
        "- D: the row lengths a fused config serves (D = 3 and 16 pad to BLOCK_D = 16); the strip path "
        "(D > 256) does not depend on D",
        "- warps/SM: resident warps per SM (of 64) from registers (64K per SM, per-warp units of 256) and "
        "shared memory (+1 KB per block; 228 KB per SM on sm_90, 164 KB on sm_80), at most 32 blocks",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in summarize(results)],
        "",
        "## Compiles without spills, per kernel, mode, D and architecture (configs x variants)",
        "",
        "| kernel | mode | D | arch | compiles without spills | worst spill stores (B) |",
        "|---|---|---|---|---|---|",
        *spill_free(results),
        "",
        "## Every config",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
        *["| " + " | ".join(_row(t)) + " |" for t in results],
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _default_out() -> str:
    return os.path.join(ROOT, "bench", "results", f"triton-ptxas-{datetime.date.today().isoformat()}.md")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python tools/triton_aot.py", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(ARCH_LIMITS),
                    help="compute capabilities (80: A100, 90: H100/H200)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of ieee, tf32, bf16")
    ap.add_argument("--kind", default=None, choices=sorted(KINDS),
                    help="only this kind's variants (default: every kind's, see gate_variants)")
    for flag, what in (("norm", "normalized rows"), ("uniform", "a uniform batch (fused kernel only)")):
        ap.add_argument(f"--{flag}", type=int, choices=(0, 1), default=None,
                        help=f"1/0: only the variants with (without) {what}")
    ap.add_argument("--quick", action="store_true",
                    help="one config per kernel (the last of each list, a small tile), bf16, the first --arch only")
    ap.add_argument("--jobs", type=int, default=None,
                    help="parallel compiles (default: the number of cores; 1 with --quick)")
    ap.add_argument("--out", default=None, help="the markdown table (default bench/results/triton-ptxas-<date>.md)")
    ap.add_argument("--no-write", action="store_true",
                    help="print only (the default with --quick, --kernels, --ds or --match)")
    ap.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any config spills registers")
    ap.add_argument("--cache", default=None,
                    help="a directory of earlier reports keyed by cache_key (kernel source, task, Triton and ptxas "
                         "versions): only tasks not in it are compiled (default: none, every task compiled)")
    ap.add_argument("--kernels", default=None,
                    help="comma list of kernels to compile (fused, coef, gemm, epilogue; default all)")
    ap.add_argument("--ds", default=None,
                    help="comma list of the D values of the fused kernel (3, 16, 64, 128, 256) and 'strip' for the "
                         "strip path's kernels (default all)")
    ap.add_argument("--match", default=None,
                    help="a regular expression the config's label must match, e.g. '16x32, BLOCK_D 256' or "
                         "'8 warps' (the label is the tile as in the table, then '<warps> warps')")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    import tempfile

    jobs = args.jobs or (1 if args.quick else os.cpu_count() or 1)
    commit = commit_label()  # before the compiles, which take minutes
    # a fresh cache: every config really goes through ptxas, which prints its report
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="hsu_aot_")
    _worker_init()
    modes = ["bf16"] if args.quick else [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = None
    if args.norm is not None or args.uniform is not None:  # a subset of gate_variants
        variants = [v for v in gate_variants((args.kind,) if args.kind else tuple(KINDS))
                    if args.norm in (None, int(v["NORM"])) and args.uniform in (None, int(v["UNIFORM"]))]
        if not variants:
            print(f"--norm 0: the {args.kind} kind is always normalized", file=sys.stderr)
            return 2
    todo = select(tasks(modes, args.arch, args.kind, args.quick, variants), args.kernels, args.ds, args.match)
    if not todo:
        print("no config matches --kernels/--ds/--match", file=sys.stderr)
        return 2
    print(f"compiling {len(todo)} kernel configs for {', '.join(f'sm_{a}' for a in args.arch)} "
          f"with {jobs} jobs", flush=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    work = functools.partial(compile_cached, cache=os.path.abspath(args.cache) if args.cache else None)
    results = []
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as ex:
            for r in ex.map(work, todo):
                results.append(r)
                print(("FAIL  " if "error" in r else "ok    ") + " | ".join(_row(r)), flush=True)
    else:
        for t in todo:
            results.append(work(t))
            print(("FAIL  " if "error" in results[-1] else "ok    ") + " | ".join(_row(results[-1])), flush=True)
    seconds = time.perf_counter() - t0
    cached = sum(1 for r in results if r.get("cached"))
    print()
    for line in summarize(results):
        print(line)
    subset = args.quick or args.kernels or args.ds or args.match  # never overwrites the full table by default
    if not (subset or args.no_write) or args.out:
        path = args.out or _default_out()
        load = f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end" if load0 is not None else ""
        write_table(path, results, argv, seconds, commit, load)
        print(f"table written to {path}")
    print(f"{len(results)} configs in {seconds:.0f} s ({len(results) - cached} compiled, {cached} from the cache)")
    if any("error" in r for r in results):
        return 2
    if args.fail_on_spill and any(r["spill_stores"] or r["spill_loads"] for r in results):
        print("--fail-on-spill: some configs spill registers (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
