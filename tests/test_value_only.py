"""The value-only pass: taken when no gradient is wanted (grad mode off, ``inference_mode``, or no input that
requires one), equal to the energy + gradient pass's value, and never taken when a gradient is wanted."""

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _autograd, tiled
from hsu_kernels._params import make_params
from hsu_kernels.kinds import kind_by_name
from hsu_kernels.testing import kind_cases, rand_rows


@pytest.mark.parametrize("kind,s", kind_cases())
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiled_value_equals_the_pass_with_gradients(kind, s, half_space, dtype):
    """Bit for bit: the value-only pass sums the same terms in the same order (hard rows included: a
    duplicate, a pair 1e-6 apart, a huge and a tiny row)."""
    for normalize in (True, False) if not kind_by_name(kind).angle else (True,):
        p = make_params(kind, s, half_space=half_space, normalize=normalize)
        w = rand_rows(2, 41, 5, dtype=dtype)
        w[0, 3] = w[0, 4]
        w[1, 5] = w[1, 6] * (1 + 1e-6)
        if normalize:
            w[1, 7] *= 1e30
            w[1, 8] *= 1e-30
        for block in (16, 256):
            e_grad = tiled.energy_grad(w, p, block=block, scale=0.01)[0]
            assert torch.equal(tiled.energy_value(w, p, block=block, scale=0.01), e_grad), (normalize, block)
        y = rand_rows(2, 13, 5, dtype=dtype)
        assert torch.equal(tiled.cross_energy_value(w, y, p, block=16), tiled.cross_energy_grad(w, y, p, block=16)[0])


def _spy(monkeypatch):
    calls = []
    for name in ("self_value", "self_pass", "cross_value", "cross_pass"):
        real = getattr(_autograd, name)

        def wrapped(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(_autograd, name, wrapped)
    return calls


@pytest.mark.parametrize("backend", [b for b in hk.available_backends("cpu") if b != "reference"])
def test_value_only_is_taken_exactly_when_no_gradient_is_wanted(monkeypatch, backend):
    calls = _spy(monkeypatch)
    w = rand_rows(30, 6, dtype=torch.float32)
    y = rand_rows(7, 6, dtype=torch.float32)
    want = hk.energy(w.clone().requires_grad_(), backend=backend).detach()
    assert calls == ["self_pass"]
    for ctx in (torch.no_grad, torch.inference_mode):
        calls.clear()
        with ctx():
            got = hk.energy(w.clone().requires_grad_(), backend=backend)
        # (self_value may run the pass with gradients underneath, on a backend without a value-only pass)
        assert calls[0] == "self_value" and torch.equal(got, want), ctx
    calls.clear()
    assert torch.equal(hk.energy(w, backend=backend), want)  # grad mode on, nothing requires a gradient
    assert calls[0] == "self_value"
    calls.clear()
    hk.cross_energy(w, y, backend=backend)
    assert calls[0] == "cross_value"
    calls.clear()
    hk.cross_energy(w, y.clone().requires_grad_(), backend=backend)
    assert calls == ["cross_pass"]


def test_transforms_still_get_gradients():
    """Under torch.func the inputs do not say that a gradient is wanted: the pass with gradients runs."""
    w = rand_rows(12, 4)
    g = torch.func.grad(lambda x: hk.energy(x, backend="torch"))(w)
    wg = w.clone().requires_grad_()
    hk.energy(wg, backend="torch").backward()
    torch.testing.assert_close(g, wg.grad, rtol=1e-12, atol=0)
