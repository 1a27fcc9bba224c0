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
