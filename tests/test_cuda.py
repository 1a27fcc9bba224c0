"""The CUDA C++ kernel (``backend="cuda"``, csrc/cuda/) against the float64 reference: forward and gradient,
every kind, half-space, normalize off, batched, odd sizes that hit every engine and tile tail, float32,
float64 and half inputs, the cross energy, determinism and the op's registration.

Skipped, with the reason, where there is no CUDA device or the extension was built without the CUDA kernel.
The float64 reference runs on the same device (it materializes N x N, which the GPU holds easily here).
"""

import itertools
import math

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext, ops
from hsu_kernels.testing import assert_close, check_against_reference, energy_and_grad, kind_cases, rand_rows

if not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)
if not _ext.has_cuda_kernel():
    pytest.skip(
        "the extension has no CUDA kernel: build it with FORCE_CUDA=1 python setup.py build_ext --inplace "
        f"({_ext.load_error() or 'extension loaded, CUDA sources not compiled'})",
        allow_module_level=True,
    )

DEV = "cuda"
KIND_S = kind_cases(general=(3.5,))
# D values that reach every engine: small (register widths 4, 16, 32 in float32; 4, 16 in float64) and
# general (D > 32, and 17..32 in float64), including chunk tails (D = 40, 300).
DIMS = [1, 3, 12, 32, 40, 64, 300]


def _on_device(backend, fn=hk.energy, **kw):
    """``fn`` run on the GPU, inputs and result on the CPU (so the test helpers compare on one device)."""
    return lambda w: fn(w.to(DEV), backend=backend, **kw).cpu()


def _check(w, dtype, what, **kw):
    return check_against_reference(_on_device("cuda", **kw), _on_device("reference", **kw), w, dtype, what)


def test_auto_picks_cuda_for_small_d():
    assert ops.resolve_backend("auto", torch.device(DEV), 3) == "cuda"
    assert ops.resolve_backend("cuda", torch.device(DEV), 300) == "cuda"


@pytest.mark.parametrize("kind,s", KIND_S)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kinds_against_reference(kind, s, half_space, dtype):
    for n, d in ((17, 3), (130, 12), (130, 32), (67, 64)):
        kw = dict(kind=kind, s=s, half_space=half_space, reduction="mean")
        _check(rand_rows(2, n, d), dtype, f"cuda {kind} s={s} B=2 N={n} D={d}", **kw)


@pytest.mark.parametrize("n,d", list(itertools.product([2, 3, 17, 130], DIMS)))
@pytest.mark.parametrize("half_space", [False, True])
def test_sizes_against_reference(n, d, half_space):
    for kind, s in (("riesz", 1.0), ("angular", 2.0), ("log", 0.0), ("gaussian", 0.0)):
        kw = dict(kind=kind, s=s, half_space=half_space, reduction="sum")
        w = rand_rows(n, d)
        for dtype in (torch.float64, torch.float32):
            _check(w, dtype, f"cuda {kind} N={n} D={d}", **kw)


@pytest.mark.parametrize("d", [3, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_odd_n(d, dtype):
    """N = 4096 + 32: tails of every tile, several column splits."""
    for kind, s, hs in (("riesz", 1.0, True), ("angular", 1.0, False)):
        _check(rand_rows(4096 + 32, d), dtype, f"cuda {kind} N=4128 D={d}", kind=kind, s=s, half_space=hs)


@pytest.mark.parametrize("kind", ["riesz", "log", "gaussian"])
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("d", [3, 16, 48])
def test_unnormalized_against_reference(kind, half_space, d):
    for n in (17, 130):
        kw = dict(kind=kind, s=1.5, t=0.7, half_space=half_space, normalize=False)
        w = rand_rows(3, n, d) / math.sqrt(d)
        for dtype in (torch.float64, torch.float32):
            _check(w, dtype, f"cuda {kind} unnormalized N={n} D={d}", **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [3, 40])
def test_half_inputs(dtype, d):
    """Half inputs are computed in float32; the gradient comes back in the input dtype."""
    for kind in ("riesz", "angular_log", "gaussian"):
        kw = dict(kind=kind, s=1.0, half_space=True, reduction="sum")
        _check(rand_rows(2, 67, d), dtype, f"cuda {kind} D={d}", **kw)
    w = rand_rows(33, d, dtype=dtype, device=DEV).requires_grad_(True)
    e = hk.energy(w, backend="cuda")
    e.backward()
    assert e.dtype == torch.float32 and w.grad.dtype == dtype


@pytest.mark.parametrize("kind,s", kind_cases(exponents=(0.5,), general=(2.5,)))
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("d", [3, 32, 70])
def test_cross_energy(kind, s, half_space, d):
    kw = dict(kind=kind, s=s, half_space=half_space)
    for shape_x, shape_y in (((17, d), (5, d)), ((2, 130, d), (2, 1, d)), ((300, d), (129, d))):
        x64, y64 = rand_rows(*shape_x), rand_rows(*shape_y)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 5e-5)):
            xs = [x64.to(dtype).to(DEV).requires_grad_(True), y64.to(dtype).to(DEV).requires_grad_(True)]
            rs = [x64.to(DEV).requires_grad_(True), y64.to(DEV).requires_grad_(True)]
            e = hk.cross_energy(*xs, backend="cuda", **kw)
            gx, gy = torch.autograd.grad(e.sum(), xs)
            er = hk.cross_energy(*rs, backend="reference", **kw)
            rgx, rgy = torch.autograd.grad(er.sum(), rs)
            what = f"cuda cross {kind} hs={half_space} {shape_x}x{shape_y} {dtype}"
            assert_close(e.detach().cpu(), er.detach().cpu(), tol, what + " energy")
            assert_close(gx.cpu(), rgx.cpu(), tol, what + " grad x")
            assert_close(gy.cpu(), rgy.cpu(), tol, what + " grad y")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(130, 3), (4096 + 32, 3), (2000, 32), (700, 300)])
def test_deterministic(dtype, n, d):
    """No atomics: two runs give bitwise the same energy and gradient (also across column splits)."""
    w = rand_rows(2, n, d, dtype=dtype, device=DEV)
    for kw in (dict(kind="riesz", s=1.0, half_space=True), dict(kind="gaussian", normalize=False)):
        e1, g1 = energy_and_grad(lambda v: hk.energy(v, backend="cuda", **kw), w)
        e2, g2 = energy_and_grad(lambda v: hk.energy(v, backend="cuda", **kw), w)
        assert torch.equal(e1, e2) and torch.equal(g1, g2), f"not bitwise reproducible: {kw}"


def test_gradcheck():
    w = rand_rows(2, 9, 4, device=DEV).requires_grad_(True)
    for kw in (dict(kind="riesz", s=1.5, half_space=True), dict(kind="angular", s=1.0),
               dict(kind="gaussian", normalize=False)):
        assert torch.autograd.gradcheck(lambda v: hk.energy(v, backend="cuda", **kw), (w,))


def test_non_contiguous():
    w = rand_rows(40, 2 * 12, device=DEV)[:, ::2]
    assert not w.is_contiguous()
    kw = dict(kind="riesz", s=1.0, half_space=True)
    e, g = energy_and_grad(lambda v: hk.energy(v, backend="cuda", **kw), w)
    er, gr = energy_and_grad(lambda v: hk.energy(v, backend="reference", **kw), w)
    assert_close(e.cpu(), er.cpu(), 1e-10, "energy")
    assert_close(g.cpu(), gr.cpu(), 1e-10, "grad")


def test_exact_unit_rows_and_zero_rows():
    """eps_norm = 0: points on the sphere (the diagonal's infinite terms never enter); eps_norm > 0 makes a
    zero row harmless; eps_norm = 0 with a zero row is an error from the op itself."""
    w = rand_rows(50, 3)
    w = w / w.norm(dim=1, keepdim=True)
    _check(w, torch.float64, "unit rows", kind="riesz", s=1.0, eps_norm=0.0, half_space=True)
    w0 = rand_rows(20, 5)
    w0[3] = 0
    _check(w0, torch.float64, "zero row", kind="riesz", s=1.0, half_space=True)
    w0c = w0.to(DEV)[None]
    with pytest.raises(ValueError, match="zero row"):
        torch.ops.hsu.energy_grad(w0c, 0, 1.0, 2.0, 0.0, 1e-4, False, True)
    bad = rand_rows(1, 10, 3, device=DEV)
    bad[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        torch.ops.hsu.energy_grad(bad, 0, 1.0, 2.0, 1e-4, 1e-4, False, True)


def test_sanity_values():
    """docs/spec.md §7: random near-orthogonal neurons in high dimension."""
    w = rand_rows(256, 4096, dtype=torch.float32, device=DEV)
    want = {"0": -0.693, "1": 0.707, "2": 0.5, "a0": 0.693, "a1": 2.0, "a2": 4.0}
    for power, value in want.items():
        got = float(hk.energy(w, power=power, backend="cuda"))
        assert abs(got - value) < 0.02 * abs(value), f"power {power}: {got} vs about {value}"


def test_opcheck():
    """Schema, fake kernel, autograd registration and dispatch of the CUDA kernel (torch.library.opcheck)."""
    w = rand_rows(2, 19, 5, dtype=torch.float32, device=DEV).requires_grad_(True)
    torch.library.opcheck(torch.ops.hsu.energy_grad.default, (w, 0, 1.0, 2.0, 1e-4, 1e-4, True, True))
    x = rand_rows(1, 7, 5, device=DEV).requires_grad_(True)
    y = rand_rows(1, 11, 5, device=DEV).requires_grad_(True)
    torch.library.opcheck(torch.ops.hsu.cross_energy_grad.default, (x, y, 2, 2.0, 2.0, 1e-4, 1e-4, False, True))


def test_matches_cpu_kernel():
    """The two compiled kernels share the per-pair header: float64 results agree to rounding."""
    if not _ext.available():
        pytest.skip("CPU extension not loaded")
    w = rand_rows(3, 300, 7)
    for kw in (dict(kind="riesz", s=1.0, half_space=True), dict(kind="angular_log"),
               dict(kind="log", normalize=False)):
        e_cpu, g_cpu = energy_and_grad(lambda v: hk.energy(v, backend="cpu", **kw), w)
        e_gpu, g_gpu = energy_and_grad(_on_device("cuda", **kw), w)
        assert_close(e_gpu, e_cpu, 1e-12, f"energy {kw}")
        assert_close(g_gpu, g_cpu, 1e-12, f"grad {kw}")


def test_backends_listed_on_gpu():
    assert "cuda" in hk.available_backends(DEV)


@pytest.mark.parametrize("cross", [False, True])
def test_batch_over_65535(cross):
    """B = 70,000 matrices (over the 65,535 limit of a grid's y and z axes; the launches put the batch on
    x): every entry against the float64 reference on the GPU."""
    b, n, d = 70_000, 3, 3
    kw = dict(kind="riesz", s=1.0, half_space=True)
    if cross:
        x, y = rand_rows(b, n, d, device=DEV), rand_rows(b, 2, d, device=DEV)
        got = hk.cross_energy(x, y, backend="cuda", **kw)
        ref = hk.cross_energy(x, y, backend="reference", **kw)
    else:
        w = rand_rows(b, n, d, device=DEV)
        got, g = energy_and_grad(lambda v: hk.energy(v, backend="cuda", reduction="sum", **kw), w)
        ref, gr = energy_and_grad(lambda v: hk.energy(v, backend="reference", reduction="sum", **kw), w)
        assert_close(g.cpu(), gr.cpu(), 1e-10, "grad, B = 70,000")
    assert got.shape == (b,)
    assert_close(got.cpu(), ref.cpu(), 1e-10, "energy, B = 70,000")
