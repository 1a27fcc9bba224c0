"""torch.func transforms over the public functions on every CPU backend: grad, vjp, jacrev, vmap (mapped
onto the ops' own batch dimension), and their compositions, against plain autograd on the reference."""

import pytest
import torch
from torch import func

import hsu_kernels as hk
from hsu_kernels.testing import assert_close, fast_backends, rand_rows

BACKENDS = ["reference"] + fast_backends("cpu")


def _energy(backend, **kw):
    return lambda w: hk.energy(w, backend=backend, **kw)


def _grad_ref(w, **kw):
    w = w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hk.energy(w, backend="reference", **kw).sum(), w)
    return g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half_space", [False, True])
def test_grad(backend, half_space):
    w = rand_rows(17, 5)
    g = func.grad(_energy(backend, half_space=half_space, power="a1"))(w)
    assert_close(g, _grad_ref(w, half_space=half_space, power="a1"), 1e-10, backend)
    # with an auxiliary output and a second argument held fixed
    g2, aux = func.grad(lambda a, b: (hk.cross_energy(a, b, backend=backend), b.sum()), has_aux=True)(w, w[:4] + 1)
    want = torch.func.grad(lambda a: hk.cross_energy(a, w[:4] + 1, backend="reference"))(w)
    assert_close(g2, want, 1e-10, f"{backend} cross")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjp(backend):
    w = rand_rows(3, 11, 6)  # batched: E is [3]
    e, pullback = func.vjp(_energy(backend, kind="log"), w)
    ct = torch.tensor([0.5, -2.0, 3.0], dtype=w.dtype)
    (g,) = pullback(ct)
    wr = w.clone().requires_grad_(True)
    e_ref = hk.energy(wr, kind="log", backend="reference")
    (g_ref,) = torch.autograd.grad(e_ref, wr, ct)
    assert_close(e, e_ref.detach(), 1e-12, f"{backend} energy")
    assert_close(g, g_ref, 1e-10, f"{backend} vjp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev(backend):
    # the Jacobian of the batched energy [B] with respect to w [B, N, D]: block diagonal in the batch
    w = rand_rows(3, 7, 4)
    jac = func.jacrev(_energy(backend, kind="riesz", s=2.0))(w)
    assert jac.shape == (3, 3, 7, 4)
    for b in range(3):
        for c in range(3):
            if b == c:
                assert_close(jac[b, b], _grad_ref(w[b], kind="riesz", s=2.0), 1e-10, f"{backend} block {b}")
            else:
                assert torch.all(jac[b, c] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap(backend):
    ws = rand_rows(4, 13, 6)
    want = hk.energy(ws, kind="angular", s=1.0, half_space=True, backend="reference")
    got = func.vmap(_energy(backend, kind="angular", s=1.0, half_space=True))(ws)
    assert_close(got, want, 1e-12, backend)
    # a batch dimension that is not the first, and vmap over already-batched input [V, B, N, D]
    got_t = func.vmap(_energy(backend, kind="angular", s=1.0, half_space=True), in_dims=1)(ws.transpose(0, 1))
    assert_close(got_t, want, 1e-12, f"{backend} in_dims=1")
    wvb = rand_rows(2, 3, 9, 5)
    got_vb = func.vmap(_energy(backend))(wvb)
    assert got_vb.shape == (2, 3)
    assert_close(got_vb, hk.energy(wvb.reshape(6, 9, 5), backend="reference").view(2, 3), 1e-12, f"{backend} [V, B]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_gradients(backend):
    # vmap(grad): the usual per-sample-gradient composition
    ws = rand_rows(3, 10, 4)
    got = func.vmap(func.grad(_energy(backend, power="0")))(ws)
    for b in range(3):
        assert_close(got[b], _grad_ref(ws[b], power="0"), 1e-10, f"{backend} sample {b}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_cross_energy(backend):
    xs, y = rand_rows(4, 8, 5), rand_rows(6, 5)
    got = func.vmap(lambda x: hk.cross_energy(x, y, "gaussian", backend=backend), in_dims=0)(xs)
    want = torch.stack([hk.cross_energy(x, y, "gaussian", backend="reference") for x in xs])
    assert_close(got, want, 1e-12, backend)
    gx = func.vmap(func.grad(lambda x, yy: hk.cross_energy(x, yy, backend=backend)), in_dims=(0, None))(xs, y)
    for b in range(4):
        want_g = func.grad(lambda x: hk.cross_energy(x, y, backend="reference"))(xs[b])
        assert_close(gx[b], want_g, 1e-10, f"{backend} cross per-sample grad {b}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_vector_product_by_func(backend):
    # grad of (grad . v): the second derivative through torch.func
    w, v = rand_rows(12, 4), rand_rows(12, 4)
    fn = _energy(backend, kind="riesz", s=1.0)
    got = func.grad(lambda x: (func.grad(fn)(x) * v).sum())(w)
    want = func.grad(lambda x: (func.grad(_energy("reference", kind="riesz", s=1.0))(x) * v).sum())(w)
    assert_close(got, want, 1e-9, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_energy_many(backend):
    a, b = rand_rows(3, 9, 4), rand_rows(3, 6, 7)
    got = func.vmap(lambda x, y: hk.energy_many([x, y], power="2", backend=backend))(a, b)
    want = torch.stack([hk.energy_many([a[k], b[k]], power="2", backend="reference") for k in range(3)])
    assert_close(got, want, 1e-12, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_raises_under_vmap(backend):
    ws = rand_rows(3, 5, 4)
    ws[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        func.vmap(_energy(backend))(ws)
