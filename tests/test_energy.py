"""Every CPU-capable backend against the float64 reference: forward and gradient, every kind, odd sizes,
batched, half-space, normalize off, float32 and float64 (and half inputs)."""

import itertools
import math

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext
from hsu_kernels.testing import (
    assert_close,
    check_against_reference,
    energy_and_grad,
    fast_backends,
    kind_cases,
    rand_rows,
)

BACKENDS = fast_backends("cpu")
KIND_S = kind_cases()  # every kind; the power kinds at each specialized exponent and s = 3.5


def _fn(backend, **kw):
    return lambda w: hk.energy(w, backend=backend, **kw)


def test_backends_found():
    assert "torch" in BACKENDS
    if not _ext.available():
        pytest.skip(f"the C++ extension is not built: {_ext.load_error()}")
    assert "cpu" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,s", KIND_S)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kinds_against_reference(backend, kind, s, half_space, dtype):
    """Every kind and exponent, on shapes that hit both CPU engines (D <= 32 direct, D > 32 GEMM)."""
    for n, d in ((17, 3), (130, 64)):
        w = rand_rows(2, n, d)
        kw = dict(kind=kind, s=s, half_space=half_space, reduction="mean")
        check_against_reference(
            _fn(backend, **kw), _fn("reference", **kw), w, dtype, f"{backend} {kind} s={s} N={n} D={d}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d", list(itertools.product([2, 3, 17, 130], [1, 3, 64, 300])))
@pytest.mark.parametrize("half_space", [False, True])
def test_sizes_against_reference(backend, n, d, half_space):
    for kind, s in (("riesz", 1.0), ("angular", 2.0), ("log", 0.0)):
        kw = dict(kind=kind, s=s, half_space=half_space, reduction="sum")
        w = rand_rows(n, d)
        for dtype in (torch.float64, torch.float32):
            check_against_reference(
                _fn(backend, **kw), _fn("reference", **kw), w, dtype, f"{backend} {kind} N={n} D={d}"
            )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["riesz", "log", "gaussian"])
@pytest.mark.parametrize("half_space", [False, True])
def test_unnormalized_against_reference(backend, kind, half_space):
    for n, d in ((17, 5), (130, 48)):
        kw = dict(kind=kind, s=1.5, t=0.7, half_space=half_space, normalize=False)
        w = rand_rows(3, n, d) / math.sqrt(d)
        for dtype in (torch.float64, torch.float32):
            check_against_reference(
                _fn(backend, **kw), _fn("reference", **kw), w, dtype, f"{backend} {kind} unnormalized"
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_odd_n(backend):
    """N = 4096 + 32: tails of every block size."""
    kw = dict(kind="riesz", s=1.0, half_space=True)
    check_against_reference(
        _fn(backend, **kw), _fn("reference", **kw), rand_rows(4096 + 32, 24), torch.float64, "N=4128"
    )
    kw = dict(kind="angular", s=1.0)
    check_against_reference(
        _fn(backend, **kw), _fn("reference", **kw), rand_rows(4096 + 32, 40), torch.float32, "N=4128"
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype):
    # reduction="sum": the mean's gradients are ~1e-5 here, float16 subnormals, which keep no relative digits
    for kind in ("riesz", "angular_log"):
        kw = dict(kind=kind, s=1.0, half_space=True, reduction="sum")
        check_against_reference(
            _fn(backend, **kw), _fn("reference", **kw), rand_rows(2, 67, 40), dtype, f"{backend} {kind}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    for kind, hs, norm in (
        ("riesz", True, True),
        ("angular", False, True),
        ("log", True, False),
        ("gaussian", False, False),
    ):
        w = rand_rows(2, 9, 4).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda x: hk.energy(x, kind, 1.5, half_space=hs, normalize=norm, backend=backend), (w,)
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    w = rand_rows(1000, 70, dtype=torch.float32)
    e1, g1 = energy_and_grad(_fn(backend, half_space=True), w)
    e2, g2 = energy_and_grad(_fn(backend, half_space=True), w)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)
    w = rand_rows(1000, 3, dtype=torch.float32)
    e1, g1 = energy_and_grad(_fn(backend, kind="angular"), w)
    e2, g2 = energy_and_grad(_fn(backend, kind="angular"), w)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)


def _torch_uses_openmp() -> bool:
    return "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_cpu_kernel_is_multithreaded():
    # at::parallel_for is an inline template: an extension compiled without OpenMP runs it serially while
    # torch itself runs threaded. (This was the case until 2026-11-25: every "2-core" CPU number before
    # then was one core.)
    assert _ext.parallel() == _torch_uses_openmp()


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
@pytest.mark.parametrize("n,d", [(1100, 3), (1100, 128), (300, 700)])
def test_cpu_result_independent_of_thread_count(n, d):
    # The symmetric tiles run in rounds where no two tiles share a row block, and each row receives its
    # contributions in round order: bitwise the same result on 1 thread and on several. (At N = 300 there
    # are only 3 tiles: they run one after the other, each product on every thread.)
    w = rand_rows(1 if n < 512 else 2, n, d, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            out.append(torch.ops.hsu.energy_grad(w, 0, 1.0, 2.0, 1e-4, 1e-4, True, True))
            a, b = w[:, : n // 2], w[:, n // 2 :]
            out.append(torch.ops.hsu.cross_energy_grad(a, b, 1, 1.0, 2.0, 1e-4, 1e-4, False, True))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(out[0] + out[1], out[2] + out[3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous(backend):
    base = rand_rows(40, 60)
    w = base[::2, ::3]  # [20, 20], strided
    assert not w.is_contiguous()
    check_against_reference(_fn(backend, kind="riesz", s=2.0), _fn("reference", kind="riesz", s=2.0), w, torch.float64)
    wt = rand_rows(30, 25).t()
    check_against_reference(_fn(backend), _fn("reference"), wt, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_strings(backend):
    w = rand_rows(33, 20)
    for power, (kind, s) in hk.POWERS.items():
        got = hk.energy(w, power=power, backend=backend)
        want = hk.energy(w, kind=kind, s=s, backend="reference")
        assert_close(got, want, 1e-10, f"power={power}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_and_exact_unit_rows(backend):
    w = rand_rows(10, 6)
    w[3] = 0
    for kind in hk.KINDS:
        e, g = energy_and_grad(_fn(backend, kind=kind, half_space=True), w)
        assert torch.isfinite(e).all() and torch.isfinite(g).all(), kind
    # eps_norm = 0: exact points on the sphere, scale-invariant
    w = rand_rows(12, 3)
    e1 = hk.energy(w, eps_norm=0.0, half_space=True, backend=backend)
    e2 = hk.energy(7.5 * w, eps_norm=0.0, half_space=True, backend=backend)
    assert_close(e1, e2, 1e-12, "eps_norm=0 scale invariance")
    ref = hk.energy(w, eps_norm=0.0, half_space=True, backend="reference")
    assert_close(e1, ref, 1e-10, "eps_norm=0")
    for kind in ("angular", "angular_log", "riesz"):
        e, g = energy_and_grad(_fn(backend, kind=kind, eps_norm=0.0, half_space=True), w)
        assert torch.isfinite(g).all(), kind


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanity_values(backend):
    """docs/spec.md §7: near-orthogonal random neurons in high dimension."""
    w = rand_rows(48, 20000, dtype=torch.float32)
    want = {"0": -0.693, "1": 0.707, "2": 0.5, "a0": 0.693, "a1": 2.0, "a2": 4.0}
    for power, value in want.items():
        got = float(hk.energy(w, power=power, backend=backend))
        assert abs(got - value) < 0.03 * abs(value), (power, got, value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_many(backend):
    ws = [rand_rows(n, d) for n, d in ((17, 3), (64, 27), (130, 300), (2, 1))]
    for hs in (False, True):
        got, grads = energy_and_grad_many(
            lambda xs: hk.energy_many(xs, "riesz", 2.0, half_space=hs, backend=backend), ws
        )
        for k, w in enumerate(ws):
            e_ref, g_ref = energy_and_grad(lambda x: hk.energy(x, "riesz", 2.0, half_space=hs, backend="reference"), w)
            assert_close(got[k], e_ref, 1e-10, f"energy_many[{k}]")
            assert_close(grads[k], g_ref, 1e-10, f"energy_many grad[{k}]")


def energy_and_grad_many(fn, ws):
    leaves = [w.detach().clone().requires_grad_(True) for w in ws]
    e = fn(leaves)
    grads = torch.autograd.grad(e.sum(), leaves)
    return e.detach(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,s", kind_cases(exponents=(), general=(2.0,)))
def test_cross_energy(backend, kind, s):
    for (nx, ny, d), hs, dtype in itertools.product(
        ((7, 13, 3), (50, 33, 64)), (False, True), (torch.float64, torch.float32)
    ):
        x, y = rand_rows(2, nx, d), rand_rows(2, ny, d)
        kw = dict(kind=kind, s=s, half_space=hs)
        xs = [t.detach().to(dtype).requires_grad_(True) for t in (x, y)]
        e = hk.cross_energy(*xs, backend=backend, **kw)
        gx, gy = torch.autograd.grad(e.sum(), xs)
        rs = [t.detach().clone().requires_grad_(True) for t in (x, y)]
        er = hk.cross_energy(*rs, backend="reference", **kw)
        rgx, rgy = torch.autograd.grad(er.sum(), rs)
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        assert_close(e, er.detach(), tol, "cross energy")
        assert_close(gx, rgx, tol, "cross grad x")
        assert_close(gy, rgy, tol, "cross grad y")


def test_cross_energy_of_a_set_with_itself_is_twice_the_energy_plus_diagonal():
    w = rand_rows(20, 5)
    p = dict(kind="gaussian", t=1.3)
    full = hk.cross_energy(w, w, **p)
    diag = torch.exp(-1.3 * (2 - 2 * (w * w).sum(1) / ((w * w).sum(1) + 1e-4))).sum()
    assert_close(full, 2 * hk.energy(w, reduction="sum", **p) + diag, 1e-12, "cross(w, w)")


@pytest.mark.parametrize("half_space", [False, True])
def test_min_separation(half_space):
    for shape in ((17, 3), (3, 40, 8)):
        w = rand_rows(*shape)
        e, g = energy_and_grad(lambda x: hk.min_separation(x, half_space=half_space, block=7), w)
        er, gr = energy_and_grad(lambda x: hk.reference.min_separation(x, half_space=half_space), w)
        assert_close(e, er, 1e-12, "min separation")
        assert_close(g, gr, 1e-10, "min separation gradient")


def test_uniformity_and_align():
    x = torch.nn.functional.normalize(rand_rows(3, 50, 16), dim=-1)
    for backend in BACKENDS:
        e, g = energy_and_grad(lambda z: hk.uniformity_loss(z, t=2.0, backend=backend), x)
        er, gr = energy_and_grad(lambda z: hk.reference.uniformity_loss(z, t=2.0), x)
        assert_close(e, er, 1e-10, "uniformity")
        assert_close(g, gr, 1e-10, "uniformity gradient")
    y = rand_rows(50, 16)
    x2 = x[0]
    assert_close(hk.align_loss(x2, y), ((x2 - y).norm(dim=1) ** 2).mean(), 1e-12, "align")


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_opcheck():
    for d in (3, 64):
        w = rand_rows(2, 19, d, dtype=torch.float32).requires_grad_(True)
        for kind in (0, 2, 4):
            torch.library.opcheck(torch.ops.hsu.energy_grad.default, (w, kind, 1.0, 2.0, 1e-4, 1e-4, True, True))
        torch.library.opcheck(torch.ops.hsu.energy_grad.default, (w.double(), 0, 1.5, 2.0, 1e-4, 1e-4, False, False))
        x, y = rand_rows(2, 7, d).requires_grad_(True), rand_rows(2, 11, d).requires_grad_(True)
        torch.library.opcheck(torch.ops.hsu.cross_energy_grad.default, (x, y, 1, 1.0, 2.0, 1e-4, 1e-4, True, True))


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    fn = torch.compile(lambda w: hk.energy(w, backend="cpu"), fullgraph=True)
    w = rand_rows(64, 16, dtype=torch.float32).requires_grad_(True)
    e = fn(w)
    e.backward()
    e_ref, g_ref = energy_and_grad(lambda x: hk.energy(x, backend="cpu"), w)
    assert_close(e.detach(), e_ref, 1e-6, "compiled energy")
    assert_close(w.grad, g_ref, 1e-6, "compiled grad")
    fn2 = torch.compile(lambda w: hk.energy(w, "angular", 1.0, half_space=True, backend="cpu"), fullgraph=True)
    w2 = rand_rows(3, 64, 16, dtype=torch.float32)
    assert_close(fn2(w2), hk.energy(w2, "angular", 1.0, half_space=True, backend="reference"), 1e-5, "compiled batched")
