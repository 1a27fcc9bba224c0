"""Compile the Triton kernels for a GPU architecture on a machine without a GPU (a check, not a build).

``triton.compile`` lowers a kernel through Triton's GPU passes, LLVM and ``ptxas`` (bundled with the
Triton wheel) without touching a device. This catches what the CPU interpreter cannot: type errors of the
real frontend, layouts, and register spills (``ptxas -v``). It cannot check the numbers: only running on a
GPU does. Run it without ``TRITON_INTERPRET``::

    python -m hsu_kernels.triton._aot [--arch 90] [--quick]

Prints one line per kernel variant with its registers and spills; exits non-zero if any fails to compile.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _variants(quick: bool):
    import triton.language as tl

    fused = dict(KIND=2, POW=0, HS=True, NORM=True, SELF=True, DIAG=True, UNIFORM=False, PREC="tf32", PREC2="tf32",
                 C_DTYPE=tl.bfloat16, UPCAST=False, EPI=tl.float32, BLOCK_D=64, BLOCK_M=128, BLOCK_N=64)
    fptr = {"x_ptr": "*bf16", "y_ptr": "*bf16", "g_ptr": "*bf16", "e_ptr": "*fp32", "tab_ptr": "*i64"}
    out = [("fused bf16 angular half-space ragged", "fused_kernel", fptr, fused, 8)]
    if not quick:
        out.append(("fused fp32 ieee riesz s=1 un-normalized uniform", "fused_kernel",
                    {k: v.replace("bf16", "fp32") for k, v in fptr.items()},
                    dict(fused, KIND=0, POW=2, NORM=False, UNIFORM=True, PREC="ieee", PREC2="ieee", C_DTYPE=tl.float32,
                         BLOCK_D=256, BLOCK_M=32, BLOCK_N=32), 8))
    out += [
        ("coef bf16 angular half-space", "coef_kernel",
         {"x_ptr": "*bf16", "y_ptr": "*bf16", "c_ptr": "*bf16", "e_ptr": "*fp32", "b_ptr": "*fp32", "tab_ptr": "*i64"},
         dict(KIND=2, POW=0, HS=True, NORM=True, SELF=True, UNIFORM=False, PREC="tf32", UPCAST=False,
              BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), 4),
        ("gemm bf16", "gemm_kernel", {"c_ptr": "*bf16", "y_ptr": "*bf16", "a_ptr": "*fp32", "tab_ptr": "*i64"},
         dict(KIND=2, HS=True, NORM=True, SELF=True, UNIFORM=False, PREC2="tf32", C_DTYPE=tl.bfloat16, UPCAST=False,
              BLOCK_M=128, BLOCK_D=128, BLOCK_K=32), 8),
        ("epilogue bf16 angular half-space", "epilogue_kernel",
         {"x_ptr": "*bf16", "a_ptr": "*fp32", "b_ptr": "*fp32", "e_ptr": "*fp32", "g_ptr": "*bf16", "tab_ptr": "*i64"},
         dict(KIND=2, POW=0, NORM=True, DIAG=True, UNIFORM=False, BLOCK_M=32, BLOCK_D=64), 4),
    ]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    ap.add_argument("--quick", action="store_true", help="the fast variants only")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    import tempfile

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="hsu_aot_")  # fresh: ptxas runs and reports
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import contextlib
    import io

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels as K

    floats = {"s", "t", "eps_norm", "eps_ang", "pair_scale", "grad_scale"}
    failed = 0
    for name, kname, ptrs, consts, warps in _variants(args.quick):
        kern = getattr(K, kname)
        jit = kern.fn if isinstance(kern, triton.runtime.Autotuner) else kern  # unwrap autotuning
        sig = {
            a: ("constexpr" if a in consts else ptrs.get(a, "fp32" if a in floats else "i32")) for a in jit.arg_names
        }
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                triton.compile(ASTSource(fn=jit, signature=sig, constexprs=dict(consts)),
                               target=GPUTarget("cuda", args.arch, 32), options={"num_warps": warps, "num_stages": 2})
        except Exception as exc:  # report every variant, then fail
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        text = log.getvalue()
        regs = re.search(r"Used (\d+) registers", text)
        spill = re.search(r"(\d+) bytes spill stores", text)
        print(f"ok    {name}: sm_{args.arch}, {warps} warps, registers {regs.group(1) if regs else '?'}, "
              f"spill stores {spill.group(1) if spill else '?'} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
