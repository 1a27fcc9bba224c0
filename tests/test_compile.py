"""torch.compile(fullgraph=True, dynamic=True) over the public functions on every CPU backend: one graph for
every N (no recompile per size), the eager results and gradients, and NaN input refused by compiled code."""

import os

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import hsu_kernels as hk
from hsu_kernels.testing import assert_close, fast_backends, rand_rows

BACKENDS = ["reference"] + fast_backends("cpu")
#: aot_eager traces forward and backward as inductor does, without its code generation (see
#: test_compile_model.py); HSU_COMPILE_BACKEND=inductor includes it.
COMPILER = os.environ.get("HSU_COMPILE_BACKEND", "aot_eager")


def _compiled(fn):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(COMPILER)
    return torch.compile(fn, fullgraph=True, dynamic=True, backend=counter), counter


def _no_recompile(counter, calls):
    """Run the first call (it compiles; dynamo may restart its analysis once, which the counter also
    counts), then every other call, which must reuse that graph."""
    calls[0]()
    compiled_once = counter.frame_count
    assert compiled_once >= 1
    for call in calls[1:]:
        call()
    assert counter.frame_count == compiled_once, f"recompiled: {counter.frame_count - compiled_once} more graphs"


def _check_same(compiled, eager, inputs, what):
    """Value and gradients of ``compiled(*inputs)`` against ``eager(*inputs)``."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ys = [x.detach().clone().requires_grad_(True) for x in inputs]
    got, want = compiled(*xs), eager(*ys)
    assert_close(got.detach(), want.detach(), 1e-12, f"{what} value")
    for a, b in zip(torch.autograd.grad(got.sum(), xs), torch.autograd.grad(want.sum(), ys)):
        assert_close(a, b, 1e-10, f"{what} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_one_graph_for_every_n(backend):
    fn = lambda w: hk.energy(w, power="a1", half_space=True, backend=backend)  # noqa: E731
    for batch in ((), (3,)):
        compiled, counter = _compiled(fn)
        _no_recompile(counter, [lambda n=n: _check_same(compiled, fn, [rand_rows(*batch, n, 7)], f"{backend} N={n}")
                                for n in (5, 9, 17, 40)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_float_parameters(backend):
    # float arguments are symbolic under dynamic=True until an op specializes them (one graph per value)
    fn = lambda w, s, t: hk.energy(w, "riesz", s, backend=backend) + hk.energy(w, "gaussian", t=t, backend=backend)  # noqa: E731
    compiled, _ = _compiled(fn)
    w = rand_rows(11, 4)
    for s, t in ((1.0, 2.0), (1.5, 0.5), (2.5, 3.0)):
        assert_close(compiled(w, s, t), fn(w, s, t), 1e-12, f"{backend} s={s}")
    with pytest.raises((ValueError, RuntimeError), match="s must be > 0"):  # (fullgraph reports it as Unsupported)
        compiled(w, -1.0, 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_many_and_cross_energy(backend):
    many = lambda a, b: hk.energy_many([a, b], power="2", backend=backend)  # noqa: E731
    cross = lambda x, y: hk.cross_energy(x, y, "riesz", 1.0, half_space=True, backend=backend)  # noqa: E731
    c_many, n_many = _compiled(many)
    _no_recompile(n_many, [lambda n=n: _check_same(c_many, many, [rand_rows(n, 5), rand_rows(n + 3, 40)],
                                                   f"{backend} energy_many N={n}") for n in (4, 10, 23)])
    c_cross, n_cross = _compiled(cross)
    _no_recompile(n_cross, [lambda nx=nx, ny=ny: _check_same(c_cross, cross, [rand_rows(nx, 6), rand_rows(ny, 6)],
                                                             f"{backend} cross {nx}x{ny}")
                            for nx, ny in ((3, 5), (8, 2), (20, 31))])


def _near_pairs(n: int, seed: int) -> torch.Tensor:
    """float32 rows of norm 1e4 in pairs ``(2k, 2k + 1)`` whose directions are 0.0121 apart (random otherwise):
    each pair's Riesz s = 20 term is ~2e38, within float32, but the n/2 of them sum beyond float32's 3.4e38,
    while their mean over the pairs (and their gradient, ~1e35) fits."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n // 2, 7, dtype=torch.float64, generator=g), dim=-1)
    v = torch.randn(n // 2, 7, dtype=torch.float64, generator=g)
    v = torch.nn.functional.normalize(v - (v * u).sum(-1, keepdim=True) * u, dim=-1)  # orthogonal to u
    d = 0.0121  # chordal distance of a pair's directions: d^2 + 2 eps_norm / |w|^2 = 1.46e-4, and 1.46e-4^-10 = 2e38
    w = torch.stack([u, (1 - d * d / 2) * u + d * (1 - d * d / 4) ** 0.5 * v], 1).reshape(n, 7)
    return (1e4 * w).float()


def _check_same_finite(compiled, eager, inputs, what, finite_grad=True):
    """``compiled(*inputs)`` against a finite ``eager(*inputs)``, value and gradients, to float32 tolerance
    (the gradients where eager's are finite, which with ``finite_grad`` they all must be)."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ys = [x.detach().clone().requires_grad_(True) for x in inputs]
    got, want = compiled(*xs), eager(*ys)
    assert torch.isfinite(want).all(), f"{what}: eager {want.tolist()} is not finite (the test's premise)"
    assert_close(got.detach(), want.detach(), 1e-6, f"{what} value")
    for a, b in zip(torch.autograd.grad(got.sum(), xs), torch.autograd.grad(want.sum(), ys)):
        fin = torch.isfinite(b)
        assert fin.all() or not finite_grad, f"{what}: eager gradient is not finite (the test's premise)"
        assert torch.equal(torch.isfinite(a), fin), f"{what}: compiled gradient finite elsewhere than eager's"
        if fin.any():
            assert_close(a[fin], b[fin], 1e-6, f"{what} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_whose_sum_overflows_float32(backend):
    """Issue 22: a float32 mean whose sum overflows float32 (Riesz s = 20, near pairs among spread rows) was
    inf compiled and finite eager, because the compiled graph applied the mean's 1/pairs after the kernel.
    Compiled with dynamic=True, energy, energy_many and cross_energy means agree with eager at every N,
    without a graph per N (the pair count reaches the kernels as a SymInt). (The reference's gradient
    overflows here eager too: autograd forms each term's derivative, ~1e43, before the mean's division; the
    reference does not guard its per-pair terms, reference.py.)"""
    riesz = dict(kind="riesz", s=20.0, backend=backend)
    fns = {
        "energy": lambda w: hk.energy(w, **riesz),
        "energy_many": lambda a, b: hk.energy_many([a, b], **riesz),
        "cross_energy": lambda x, y: hk.cross_energy(x, y, reduction="mean", **riesz),
    }
    sizes = (6, 8, 12)
    inputs = {
        "energy": lambda n: [_near_pairs(n, n)],
        "energy_many": lambda n: [_near_pairs(n, n), _near_pairs(n + 4, n + 1)],
        "cross_energy": lambda n: [_near_pairs(n, n)[0::2], _near_pairs(n, n)[1::2]],  # x_k near y_k
    }
    for name, fn in fns.items():
        sums = inputs[name](sizes[0])
        with torch.no_grad():  # the premise: the plain sum is beyond float32
            if name == "cross_energy":
                assert not torch.isfinite(hk.cross_energy(*sums, reduction="sum", **riesz)).all()
            else:
                assert not torch.isfinite(hk.energy(sums[0], reduction="sum", **riesz)).all()
        compiled, counter = _compiled(fn)
        _no_recompile(counter, [lambda n=n: _check_same_finite(compiled, fn, inputs[name](n), f"{backend} {name} N={n}",
                                                               finite_grad=backend != "reference")
                                for n in sizes])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_mean_operators_opcheck(backend):
    """The operators compiled graphs call for a mean (the pair count as an int): schema, fake kernel,
    autograd registration and dynamic shapes, as torch.library.opcheck checks them."""
    w = rand_rows(2, 7, 5).float().requires_grad_(True)
    x, y = rand_rows(1, 4, 6).requires_grad_(True), rand_rows(1, 3, 6).requires_grad_(True)
    for kind in (0, 4):  # Riesz, Gaussian (a log-mean)
        torch.library.opcheck(torch.ops.hsu.mean_energy_grad.default,
                              (w, backend, kind, 1.0, 2.0, 1e-4, 1e-4, True, True, 21, None))
        torch.library.opcheck(torch.ops.hsu.mean_cross_energy_grad.default,
                              (x, y, backend, kind, 1.5, 2.0, 1e-4, 1e-4, False, True, 12, None))


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniformity_loss(backend):
    fn = lambda x: hk.uniformity_loss(torch.nn.functional.normalize(x, dim=-1), backend=backend)  # noqa: E731
    compiled, counter = _compiled(fn)
    _no_recompile(counter, [lambda n=n: _check_same(compiled, fn, [rand_rows(n, 16)], f"{backend} N={n}")
                            for n in (6, 13, 50)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_regularizer(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    reg = hk.MHERegularizer(model, power="1", half_space=True, backend=backend)

    def loss(x):
        return model(x).square().mean() + reg()

    compiled, counter = _compiled(loss)

    def step(batch):
        x = torch.randn(batch, 12)
        got, want = compiled(x), loss(x)
        assert_close(got.detach(), want.detach(), 1e-6, f"{backend} batch={batch}")
        params = list(model.parameters())
        for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
            assert_close(a, b, 1e-5, f"{backend} gradient")

    _no_recompile(counter, [lambda b=b: step(b) for b in (4, 9, 30)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_raises_in_compiled_code(backend):
    fns = {
        "energy": lambda w: hk.energy(w, backend=backend),
        "cross_energy": lambda w: hk.cross_energy(w, w[:3] + 1, backend=backend),
        "energy_many": lambda w: hk.energy_many([w, w[:4]], backend=backend),
    }
    for name, fn in fns.items():
        compiled, _ = _compiled(fn)
        compiled(rand_rows(6, 5))  # compiled with finite input first
        bad = rand_rows(6, 5)
        bad[2, 1] = float("nan")
        with pytest.raises((ValueError, RuntimeError), match="NaN or Inf"):
            compiled(bad)
