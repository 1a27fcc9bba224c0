"""The offline compile report of the Triton kernels (``python -m hsu_kernels.triton._aot``): which configs it
compiles and how it computes occupancy. (Compiling itself is checked by test_triton.py's
``test_kernels_compile_for_gpu``; the full table is in bench/results/triton-ptxas-*.md.)"""

import pytest

pytest.importorskip("triton", reason="triton is not installed")

from hsu_kernels.triton import _aot  # noqa: E402


def test_occupancy():
    # 255 registers x 8 warps: one block of 8 warps fills the 64K registers of an SM
    assert _aot.occupancy(90, 255, 49152, 8) == (8, "registers")
    # few registers, no shared memory: the 64-warp cap
    assert _aot.occupancy(80, 32, 0, 4) == (64, "warps")
    # 96 KB of shared memory per block: two blocks on sm_90 (228 KB), one on sm_80 (164 KB)
    assert _aot.occupancy(90, 64, 96 * 1024, 4) == (8, "shared memory")
    assert _aot.occupancy(80, 64, 96 * 1024, 4) == (4, "shared memory")
    # more shared memory than one block may have on sm_80: the config cannot launch there
    warps, why = _aot.occupancy(80, 64, 200_000, 4)
    assert warps == 0 and why.startswith("does not fit")
    # registers are allocated per warp in units of 256: 33 registers cost as much as 40
    assert _aot.occupancy(90, 33, 0, 1) == _aot.occupancy(90, 40, 0, 1)


def test_every_selectable_config_is_compiled():
    """The full run compiles, per mode and architecture, exactly the fused configs the launcher's pruner
    keeps for each padded D, and every strip-path config."""
    import triton.language as tl

    from hsu_kernels.triton import kernels as K

    todo = _aot.tasks()
    assert {t["arch"] for t in todo} == {80, 90} and {t["mode"] for t in todo} == {"ieee", "tf32", "bf16"}
    cdt = {"ieee": tl.float32, "tf32": tl.float32, "bf16": tl.bfloat16}
    for arch in (80, 90):
        for mode in ("ieee", "tf32", "bf16"):
            prec = "ieee" if mode == "ieee" else "tf32"
            for bd in (16, 32, 64, 128, 256):
                kept = K._prune_fused(K._fused_configs(interpret=False), {}, BLOCK_D=bd, PREC=prec, C_DTYPE=cdt[mode])
                got = [(t["consts"]["BLOCK_M"], t["consts"]["BLOCK_N"], t["warps"], t["stages"]) for t in todo
                       if t["kernel"] == "fused_kernel" and t["arch"] == arch and t["mode"] == mode
                       and t["consts"]["BLOCK_D"] == bd]
                assert got == [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]
            gemm = K._prune_gemm(K._gemm_configs(interpret=False), {}, PREC2=prec, C_DTYPE=cdt[mode])
            for kernel, configs in (("coef_kernel", K._strip_configs(interpret=False)), ("gemm_kernel", gemm)):
                n = sum(1 for t in todo if t["kernel"] == kernel and t["arch"] == arch and t["mode"] == mode)
                assert n == len(configs), (kernel, arch, mode)
    fused_ds = {t["D"] for t in todo if t["kernel"] == "fused_kernel"}
    assert fused_ds == {"3,16", "32", "64", "128", "256"}


def test_summary_and_row():
    ok = dict(kernel="fused_kernel", arch=90, mode="bf16", D="64", warps=8, stages=2, registers=255,
              spill_stores=1832, spill_loads=1828, shared=49152,
              consts=dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=64))
    clean = dict(ok, registers=128, spill_stores=0, spill_loads=0, consts=dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=64))
    failed = dict(ok, error="CompilationError: boom")
    lines = _aot.summarize([ok, clean, failed])
    assert lines == ["fused_kernel sm_90: 2 configs compiled, 1 spill (worst 1832 B of spill stores: bf16 "
                     "128x64, BLOCK_D 64, 8 warps), max 255 registers, 1 FAILED to compile"]
    assert _aot._row(ok)[-2:] == ["8", "registers"]
    assert _aot._row(failed)[7] == "FAILED"


def test_select_filters_tasks():
    """--kernels, --ds and --match pick a subset of the full run (what one iterates on), nothing else."""
    todo = _aot.tasks(modes=("bf16",), archs=(90,))
    fused_256 = _aot.select(todo, kernels="fused", ds="256")
    assert fused_256 and all(t["kernel"] == "fused_kernel" and t["D"] == "256" for t in fused_256)
    assert len(fused_256) == sum(1 for t in todo if t["kernel"] == "fused_kernel" and t["D"] == "256")
    # D = 3 is served by BLOCK_D = 16 (the task labelled "3,16")
    assert {t["D"] for t in _aot.select(todo, ds="3")} == {"3,16"}
    strip = _aot.select(todo, ds="strip")
    assert {t["kernel"] for t in strip} == {"coef_kernel", "gemm_kernel", "epilogue_kernel"}
    assert _aot.select(todo, kernels="coef_kernel") == [t for t in todo if t["kernel"] == "coef_kernel"]
    eight = _aot.select(todo, kernels="gemm", match="8 warps")
    assert eight and all(t["warps"] == 8 and t["kernel"] == "gemm_kernel" for t in eight)
    assert _aot.select(todo) == todo
    with pytest.raises(SystemExit, match="unknown kernel"):
        _aot.select(todo, kernels="fuse")
