"""Second derivatives (create_graph=True): every backend against finite differences of its own gradient
(gradgradcheck, float64) and against the reference's Hessian-vector product; third derivatives raise."""

import pytest
import torch
from torch.autograd import gradgradcheck

import hsu_kernels as hk
from hsu_kernels import _autograd, _ext
from hsu_kernels.kinds import kind_by_name
from hsu_kernels.testing import assert_close, fast_backends, kind_cases, rand_rows

BACKENDS = ["reference"] + fast_backends("cpu")
KINDS = kind_cases(exponents=(0.5,), general=(2.5,))


def _hvp(fn, inputs, vs):
    """``H v`` of ``fn(*inputs).sum()`` by double backward."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    gs = torch.autograd.grad(fn(*xs).sum(), xs, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), xs)


#: (kind, s, normalize): angular kinds need normalized rows
CASES = [(k, s, norm) for k, s in KINDS for norm in (True, False) if norm or not kind_by_name(k).angle]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,s,normalize", CASES)
@pytest.mark.parametrize("half_space", [False, True])
def test_gradgradcheck_energy(backend, kind, s, normalize, half_space):
    # fast_mode: the second derivatives projected on random vectors (the full Jacobian check is below)
    w = rand_rows(2, 6, 4).requires_grad_(True)  # batched
    if not normalize:
        w = (0.5 * w).detach().requires_grad_(True)  # keep the Gaussian terms away from underflow
    fn = lambda x: hk.energy(x, kind, s, half_space=half_space, normalize=normalize, backend=backend)  # noqa: E731
    assert gradgradcheck(fn, (w,), atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck_energy_full_jacobian(backend):
    w = rand_rows(5, 3).requires_grad_(True)
    for kind, s in (("riesz", 1.0), ("angular", 2.0)):
        fn = lambda x: hk.energy(x, kind, s, half_space=True, backend=backend)  # noqa: E731
        assert gradgradcheck(fn, (w,), atol=1e-6, rtol=1e-4), kind


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradgradcheck_cross_energy(backend, half_space, normalize):
    x, y = rand_rows(5, 3).requires_grad_(True), rand_rows(2, 4, 3)[0].requires_grad_(True)
    for kind, s in (("riesz", 1.5), ("gaussian", 0.0)) + ((("angular", 1.0),) if normalize else ()):
        fn = lambda a, b: hk.cross_energy(a, b, kind, s, half_space=half_space, normalize=normalize,  # noqa: E731
                                          backend=backend)
        assert gradgradcheck(fn, (x, y), atol=1e-6, rtol=1e-4, fast_mode=True), kind


@pytest.mark.parametrize("backend", fast_backends("cpu"))
@pytest.mark.parametrize("kind,s", [("riesz", 1.0), ("angular", 2.0)])
def test_hvp_matches_reference_over_several_blocks(backend, kind, s):
    # N above the Hessian-vector product's block (several blocks, a partial last one), batched
    n = _autograd.HVP_BLOCK + 44
    w, v = rand_rows(2, n, 5), rand_rows(2, n, 5)
    for hs in (False, True):
        fn = lambda b: lambda x: hk.energy(x, kind, s, half_space=hs, backend=b)  # noqa: E731
        (got,) = _hvp(fn(backend), [w], [v])
        (want,) = _hvp(fn("reference"), [w], [v])
        assert_close(got, want, 1e-10, f"{backend} {kind} half_space={hs}")


@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_hvp_float32(backend):
    w, v = rand_rows(40, 33), rand_rows(40, 33)
    fn = lambda b: lambda x: hk.energy(x, "riesz", 1.0, backend=b)  # noqa: E731
    (got,) = _hvp(fn(backend), [w.float()], [v.float()])
    (want,) = _hvp(fn("reference"), [w], [v])
    assert got.dtype == torch.float32
    assert_close(got, want, 1e-4, backend)


@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_hvp_cross_energy_matches_reference(backend):
    x, y, vx, vy = rand_rows(300, 6), rand_rows(70, 6), rand_rows(300, 6), rand_rows(70, 6)
    fn = lambda b: lambda a, c: hk.cross_energy(a, c, "riesz", 2.0, half_space=True, backend=b)  # noqa: E731
    got = _hvp(fn(backend), [x, y], [vx, vy])
    want = _hvp(fn("reference"), [x, y], [vx, vy])
    for a, b in zip(got, want):
        assert_close(a, b, 1e-10, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_many_double_backward(backend):
    ws = [rand_rows(5, 3).requires_grad_(True), rand_rows(4, 6).requires_grad_(True)]
    fn = lambda a, b: hk.energy_many([a, b], power="2", half_space=True, backend=backend)  # noqa: E731
    assert gradgradcheck(fn, ws, fast_mode=True)


@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_third_derivative_raises(backend):
    # the Hessian-vector product is not differentiable again: an error, never a silent zero
    w = rand_rows(6, 3).requires_grad_(True)
    (g,) = torch.autograd.grad(hk.energy(w, backend=backend), w, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), w, create_graph=True)
    assert h.requires_grad
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad((h * w).sum(), w)  # also when other terms of the loss are differentiable


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_compiled_op_double_backward():
    # the op called directly: second derivatives through its registered autograd; its gradient output
    # is marked non-differentiable, so a loss built on it raises instead of getting a zero gradient
    w = rand_rows(2, 6, 4).requires_grad_(True)
    args = (0, 1.0, 2.0, 1e-4, 1e-4, True, True)
    assert gradgradcheck(lambda x: torch.ops.hsu.energy_grad(x, *args)[0], (w,))
    x, y = rand_rows(1, 4, 3).requires_grad_(True), rand_rows(1, 5, 3).requires_grad_(True)
    assert gradgradcheck(lambda a, b: torch.ops.hsu.cross_energy_grad(a, b, *args)[0], (x, y))
    e, g = torch.ops.hsu.energy_grad(w, *args)
    assert not g.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(g.sum(), w)
