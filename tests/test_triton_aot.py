"""The offline compile report of the Triton kernels (``python tools/triton_aot.py``, a tool of the checkout,
not of the package): which configs it compiles and how it computes occupancy. (Compiling itself is checked by
test_triton.py's ``test_kernels_compile_for_gpu``; the full table is in bench/results/triton-ptxas-*.md.)"""

import os
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "tools") not in sys.path:  # tools/ is a folder of the checkout, not part of the package
    sys.path.insert(0, os.path.join(ROOT, "tools"))

import triton_aot as aot  # noqa: E402

from hsu_kernels.kinds import KIND_CODE, KIND_TABLE  # noqa: E402


def test_occupancy():
    # 255 registers x 8 warps: one block of 8 warps fills the 64K registers of an SM
    assert aot.occupancy(90, 255, 49152, 8) == (8, "registers")
    # few registers, no shared memory: the 64-warp cap
    assert aot.occupancy(80, 32, 0, 4) == (64, "warps")
    # 96 KB of shared memory per block: two blocks on sm_90 (228 KB), one on sm_80 (164 KB)
    assert aot.occupancy(90, 64, 96 * 1024, 4) == (8, "shared memory")
    assert aot.occupancy(80, 64, 96 * 1024, 4) == (4, "shared memory")
    # more shared memory than one block may have on sm_80: the config cannot launch there
    warps, why = aot.occupancy(80, 64, 200_000, 4)
    assert warps == 0 and why.startswith("does not fit")
    # registers are allocated per warp in units of 256: 33 registers cost as much as 40
    assert aot.occupancy(90, 33, 0, 1) == aot.occupancy(90, 40, 0, 1)


def test_every_selectable_config_is_compiled():
    """The full run compiles, per kind variant, mode and architecture, exactly the fused configs the
    launcher's pruner keeps for each padded D (given the launch's constexpr keyword arguments, as Triton's
    autotuner passes them) and the coefficient configs its pruner keeps; the GEMM's configs once per mode
    and architecture (it reads no kind flag); the epilogue once per kind variant."""
    import triton.language as tl

    from hsu_kernels.triton import kernels as K

    todo = aot.tasks()
    variants = aot.gate_variants()
    # every kind, normalized, and un-normalized where the kind allows it, for a ragged and a uniform batch
    # (the kinds of the table of kinds, the tool declares none of its own; the angle kinds are normalized only)
    assert sorted((v["KIND"], v["NORM"], v["UNIFORM"]) for v in variants) == sorted(
        (k.code, n, u) for k in KIND_TABLE for n in ((True,) if k.angle else (True, False)) for u in (False, True))
    assert aot.KINDS == KIND_CODE
    assert all(set(v) == {"KIND", "NORM", "UNIFORM"} for v in variants)  # the other flags are runtime ints
    assert {t["arch"] for t in todo} == {80, 90} and {t["mode"] for t in todo} == {"ieee", "tf32", "bf16"}
    cdt = {"ieee": tl.float32, "tf32": tl.float32, "bf16": tl.bfloat16}
    flags = ("KIND", "NORM", "UNIFORM")

    def mine(t, v, kernel):  # the strip path is always launched ragged: one task serves both layouts
        return t["kernel"] == kernel and all(t["consts"][f] == v[f] for f in flags
                                             if f in t["consts"] and (f != "UNIFORM" or kernel == "fused_kernel"))

    for arch in (80, 90):
        for mode in ("ieee", "tf32", "bf16"):
            prec = "ieee" if mode == "ieee" else "tf32"
            here = [t for t in todo if t["arch"] == arch and t["mode"] == mode]
            for v in variants:
                for bd in (16, 32, 64, 128, 256):
                    kept = K._prune_fused(K._fused_configs(interpret=False), {}, BLOCK_D=bd, PREC=prec,
                                          C_DTYPE=cdt[mode], **v)
                    got = [(t["consts"]["BLOCK_M"], t["consts"]["BLOCK_N"], t["consts"]["BLOCK_K"], t["warps"],
                            t["stages"], t["maxnreg"])
                           for t in here if mine(t, v, "fused_kernel") and t["consts"]["BLOCK_D"] == bd]
                    assert got == [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                                    c.num_stages, c.maxnreg) for c in kept], (v, arch, mode, bd)
                coef = K._prune_strip(K._strip_configs(interpret=False), {}, PREC=prec, **v)
                assert sum(1 for t in here if mine(t, v, "coef_kernel")) == len(coef), (v, arch, mode)
                epi = sum(1 for t in here if mine(t, v, "epilogue_kernel"))
                assert epi == (0 if mode == "tf32" else 1), (v, arch, mode)
            gemm = K._prune_gemm(K._gemm_configs(interpret=False), {}, PREC2=prec, C_DTYPE=cdt[mode])
            assert sum(1 for t in here if t["kernel"] == "gemm_kernel") == len(gemm), (arch, mode)
    fused_ds = {t["D"] for t in todo if t["kernel"] == "fused_kernel"}
    assert fused_ds == {"3,16", "32", "64", "128", "256"}
    # no task twice
    keys = [(t["kernel"], t["arch"], t["mode"], sorted(t["consts"].items()), t["warps"], t["stages"], t["maxnreg"])
            for t in todo]
    assert len(keys) == len({repr(k) for k in keys})
    # one kind: its variants only
    riesz = aot.tasks(kind="riesz")
    assert {(t["consts"]["KIND"], t["consts"]["NORM"]) for t in riesz if t["kernel"] != "gemm_kernel"} == {
        (KIND_CODE["riesz"], True), (KIND_CODE["riesz"], False)}


def test_strip_kernels_read_only_their_flags():
    """The de-duplication of the strip path's tasks is sound: the GEMM's body reads none of the kind flags
    (one compile serves every kind), and the coefficient and epilogue kernels take no compiled-in kind flag
    beyond ``STRIP_FLAGS`` (and ``UNIFORM``, which the launcher always passes as False to them)."""
    import ast
    import inspect
    import textwrap

    from hsu_kernels.triton import kernels as K

    kind_flags = {"KIND", "NORM", "UNIFORM"}
    gemm = ast.parse(textwrap.dedent(inspect.getsource(K.gemm_kernel.fn.fn)))
    body = gemm.body[0].body
    used = {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    assert not (used & (set(aot.GEMM_FLAGS) | {"hs", "self_pairs"})), used
    for name, kern in (("coef_kernel", K.coef_kernel.fn), ("epilogue_kernel", K.epilogue_kernel)):
        params = set(kern.arg_names) & kind_flags
        assert params == set(aot.STRIP_FLAGS[name]) | {"UNIFORM"}, (name, params)


def test_one_compiled_kernel_per_config_and_variant():
    """What the tool compiles is what a launch runs: each kernel's only constexprs are the compiled-in kind
    flags (``KIND``, ``NORM``, ``UNIFORM``), the product modes, the tile and the product's dtypes; every
    other argument is a pointer (compiled 16-byte aligned, as the launcher passes them), a float (never
    specialized by Triton) or an int exempt from Triton's value specialization, which would otherwise
    compile another kernel for an int equal to 1 or divisible by 16."""
    from hsu_kernels.triton import kernels as K

    allowed = {"KIND", "NORM", "UNIFORM", "PREC", "PREC2", "C_DTYPE", "UPCAST", "EPI", "BLOCK_D", "BLOCK_M",
               "BLOCK_N", "BLOCK_K"}
    for name in ("fused_kernel", "coef_kernel", "gemm_kernel", "epilogue_kernel"):
        kern = getattr(K, name)
        jit = kern.fn if hasattr(kern, "configs") else kern
        constexprs = {p.name for p in jit.params if p.is_constexpr}
        assert constexprs <= allowed and {"KIND", "NORM", "UNIFORM"} <= constexprs, (name, constexprs)
        for p in jit.params:
            if p.is_constexpr or p.name.endswith("_ptr") or p.name in aot.FLOAT_ARGS:
                continue
            assert p.do_not_specialize, (name, p.name)  # an int: one compiled kernel for every value
    # the runtime flags of the kinds are ints of every kernel that reads them
    assert {"hs", "self_pairs", "pmode", "diag"} <= set(K.fused_kernel.fn.arg_names)
    assert {"hs", "self_pairs", "pmode"} <= set(K.coef_kernel.fn.arg_names)
    assert {"pmode", "diag"} <= set(K.epilogue_kernel.arg_names)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="the interpreter's kernels have no Triton cache key (and the tool refuses to run under it)")
def test_cache_key_and_reuse(tmp_path, monkeypatch):
    """A report is reused only for the same task (the key changes with any constexpr, the arch, warps) and
    is stored only when the compile succeeded."""
    todo = aot.tasks(modes=("bf16",), archs=(90,), kind="riesz", quick=True)
    t = todo[0]
    other = dict(t, consts=dict(t["consts"], NORM=not t["consts"]["NORM"]))
    assert aot.cache_key(t) == aot.cache_key(dict(t))
    assert len({aot.cache_key(x) for x in (t, other, dict(t, arch=80), dict(t, warps=t["warps"] * 2))}) == 4
    calls = []

    def fake(task):
        calls.append(task)
        return dict(task, registers=100, spill_stores=0, spill_loads=0, shared=0)

    monkeypatch.setattr(aot, "compile_one", fake)
    first = aot.compile_cached(t, str(tmp_path))
    again = aot.compile_cached(t, str(tmp_path))
    assert len(calls) == 1 and not first.get("cached") and again["cached"] and again["registers"] == 100
    aot.compile_cached(other, str(tmp_path))
    assert len(calls) == 2
    monkeypatch.setattr(aot, "compile_one", lambda task: dict(task, error="CompilationError: boom"))
    bad = dict(t, warps=1)
    assert "error" in aot.compile_cached(bad, str(tmp_path)) and "error" in aot.compile_cached(bad, str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2
    assert aot.compile_cached(t, None) == aot.compile_one(t)  # no cache: always compiled


def test_summary_and_row():
    flags = aot.variant("angular")
    ok = dict(kernel="fused_kernel", arch=90, mode="bf16", D="64", warps=8, stages=2, registers=255,
              spill_stores=1832, spill_loads=1828, shared=49152,
              consts=dict(flags, BLOCK_M=128, BLOCK_N=64, BLOCK_D=64))
    clean = dict(ok, registers=128, spill_stores=0, spill_loads=0,
                 consts=dict(flags, BLOCK_M=32, BLOCK_N=32, BLOCK_D=64))
    failed = dict(ok, error="CompilationError: boom")
    lines = aot.summarize([ok, clean, failed])
    assert lines == ["fused_kernel sm_90: 2 configs compiled, 1 spill (worst 1832 B of spill stores: bf16 "
                     "128x64, BLOCK_D 64, 8 warps), max 255 registers, 1 FAILED to compile"]
    assert aot._row(ok)[-2:] == ["8", "registers"]
    assert aot._row(failed)[8] == "FAILED"
    assert aot._row(ok)[1] == "angular norm ragged"
    raw = dict(ok, kernel="coef_kernel", consts=dict(aot.variant("gaussian", norm=False), BLOCK_M=32, BLOCK_N=32,
                                                     BLOCK_K=32))
    assert aot._row(raw)[1] == "gaussian raw"


def test_select_filters_tasks():
    """--kernels, --ds and --match pick a subset of the full run (what one iterates on), nothing else."""
    todo = aot.tasks(modes=("bf16",), archs=(90,), kind="angular")
    fused_256 = aot.select(todo, kernels="fused", ds="256")
    assert fused_256 and all(t["kernel"] == "fused_kernel" and t["D"] == "256" for t in fused_256)
    assert len(fused_256) == sum(1 for t in todo if t["kernel"] == "fused_kernel" and t["D"] == "256")
    # D = 3 is served by BLOCK_D = 16 (the task labelled "3,16")
    assert {t["D"] for t in aot.select(todo, ds="3")} == {"3,16"}
    strip = aot.select(todo, ds="strip")
    assert {t["kernel"] for t in strip} == {"coef_kernel", "gemm_kernel", "epilogue_kernel"}
    assert aot.select(todo, kernels="coef_kernel") == [t for t in todo if t["kernel"] == "coef_kernel"]
    eight = aot.select(todo, kernels="gemm", match="8 warps")
    assert eight and all(t["warps"] == 8 and t["kernel"] == "gemm_kernel" for t in eight)
    assert aot.select(todo) == todo
    with pytest.raises(SystemExit, match="unknown kernel"):
        aot.select(todo, kernels="fuse")


class _Recorder:
    """Stands for a kernel: records each launch's positional and keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="needs Triton's compiled JITFunctions")
@pytest.mark.parametrize("case", ["f32-uniform", "f32-d3", "bf16-misaligned", "f16", "cross", "ragged",
                                  "strip-f32", "strip-bf16"])
def test_a_launch_specializes_to_a_gated_kernel(monkeypatch, case):
    """What a real launch compiles is a kernel the gate compiled: the launcher's arguments (recorded, not
    run) go through Triton's own binder for a CUDA target, which computes the specialization a GPU launch
    would compile (argument types, int constants, alignment attributes), and that must be the signature
    ``aot.compile_one`` compiles for a task of ``aot.tasks()`` with the same constexprs (the tile, which
    the autotuner adds, aside)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from hsu_kernels._params import make_params
    from hsu_kernels.triton import kernels as K
    from hsu_kernels.triton import launch

    names = ("fused_kernel", "coef_kernel", "gemm_kernel", "epilogue_kernel")
    real = {n: getattr(K, n) for n in names}
    rec = {n: _Recorder() for n in names}
    for n in names:
        monkeypatch.setattr(K, n, rec[n])
    if case.startswith("strip"):
        monkeypatch.setattr(launch, "FUSED_MAX_D", 0)
    dtype = torch.bfloat16 if "bf16" in case else torch.float16 if case == "f16" else torch.float32
    d = {"f32-d3": 3, "bf16-misaligned": 40, "ragged": 5}.get(case, 16)
    base = torch.zeros(1 + 3 * 7 * d, dtype=dtype)
    x = base[1:] if case == "bf16-misaligned" else base[:-1]
    p = make_params("riesz", 1.0, half_space=case != "cross")
    if case == "ragged":
        lay = launch._Layout([4, 3, 7], [4, 3, 7], [5, 5, 5], x.device, uniform=False)
        launch.run(x[:14 * 5], x[:14 * 5], lay, p, True)
    elif case == "cross":
        lay = launch._Layout([7] * 3, [7] * 3, [d] * 3, x.device, uniform=True)
        launch.run(x, x.clone(), lay, p, False)
    else:
        launch.run(x, x, launch._Layout([7] * 3, [7] * 3, [d] * 3, x.device, uniform=True), p, True)
    target = make_backend(GPUTarget("cuda", 90, 32))
    todo = aot.tasks()
    tile = {"BLOCK_M", "BLOCK_N", "BLOCK_K"}
    seen = 0
    for n in names:
        tuned = isinstance(real[n], triton.runtime.Autotuner)
        jit = real[n].fn if tuned else real[n]
        binder = create_function_from_signature(jit.signature, jit.params, target)
        for args, kwargs in rec[n].calls:
            given = dict(kwargs)
            if tuned:  # the tile comes from the autotuner: any of them
                given.update({k: 16 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D") if k not in given})
            _, spec, _ = binder(*args, **given)
            # the launch's constexprs as a task writes them (tl dtypes by name: "fp32", "bf16")
            consts = {k: str(v) if k in ("C_DTYPE", "EPI") else v for k, v in kwargs.items() if k not in tile}
            match = [t for t in todo if t["kernel"] == n
                     and all(k in t["consts"] and t["consts"][k] == v for k, v in consts.items())]
            assert match, (n, consts)
            got = {prm.name: tuple(sp) for prm, sp in zip(jit.params, spec) if not prm.is_constexpr}

            def compiled(t):  # the signature compile_one gives the task's non-constexpr arguments
                return {a: ("*" + t["ptrs"][a], "D") if a in t["ptrs"] else ("fp32", None)
                        if a in aot.FLOAT_ARGS else ("i32", None) for a in got}

            assert any(compiled(t) == got for t in match), (n, got, [compiled(t) for t in match])
            seen += 1
    assert seen == (3 if case.startswith("strip") else 1), case


def test_compile_tool_is_not_in_the_package():
    """The compile gate is a tool of the checkout (tools/triton_aot.py): the installed package holds only what a
    launch needs (the configs and exclusion tables of hsu_kernels/triton/configs.py)."""
    import importlib.util

    assert importlib.util.find_spec("hsu_kernels.triton._aot") is None
    assert os.path.dirname(os.path.abspath(aot.__file__)) == os.path.join(ROOT, "tools")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles with Triton's compiler")
def test_unknown_kind_code_fails_the_compile():
    """A kind code without a formula in the kernels fails the GPU compile of every kernel that reads it with a
    message naming the code (a tl.static_assert in every switch on KIND), not a kernel of another kind's formula.
    (The GEMM reads no kind flag.)"""
    code = len(KIND_TABLE)
    for norm in (True, False):
        unknown = dict(aot.variant("riesz", norm), KIND=code)
        todo = aot.tasks(modes=("ieee",), archs=(90,), quick=True, variants=[unknown])
        todo = [t for t in todo if t["kernel"] != "gemm_kernel"]
        assert {t["kernel"] for t in todo} == {"fused_kernel", "coef_kernel", "epilogue_kernel"}
        for t in todo:
            res = aot.compile_one(t)
            assert f"unknown kind code KIND={code}" in res.get("error", ""), (t["kernel"], norm, res.get("error"))
