"""The table of kinds (hsu_kernels/kinds.py): its invariants, its derivatives, and the error every torch path
raises for a kind it does not know. (The C++ and CUDA codes are checked against it in
tests/test_kinds_cpp.py, the Triton ones in tests/test_triton.py.)"""

import math

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _params, reference, tiled
from hsu_kernels.kinds import KIND_CODE, KIND_TABLE, KINDS, kind_by_code, kind_by_name
from hsu_kernels.testing import kind_cases


def test_table_is_consistent():
    assert [k.code for k in KIND_TABLE] == list(range(len(KIND_TABLE)))
    assert len(set(KINDS)) == len(KINDS) and hk.KINDS == KINDS
    assert KIND_CODE == {k.name: k.code for k in KIND_TABLE}
    for k in KIND_TABLE:
        assert (k.log_phi is not None) == k.logsum
        assert (k.power_scale > 0) == k.power, k.name
        assert kind_by_name(k.name) is k and kind_by_code(k.code) is k
    # every kind reaches the parametrized suites
    assert {name for name, _ in kind_cases()} == set(KINDS)
    assert {name for name, _ in kind_cases(normalize=False)} == {k.name for k in KIND_TABLE if not k.angle}


@pytest.mark.parametrize("bad", ["coulomb", "", None, 3, "Riesz"])
def test_unknown_name_is_refused(bad):
    with pytest.raises(ValueError, match="kind must be one of"):
        kind_by_name(bad)
    with pytest.raises(ValueError, match="kind must be one of"):
        hk.energy(torch.randn(4, 3), bad)


@pytest.mark.parametrize("bad", [-1, len(KIND_TABLE), 1000, "x"])
def test_unknown_code_is_refused(bad):
    with pytest.raises(ValueError, match="unknown kind code"):
        kind_by_code(bad)


@pytest.mark.parametrize("kind,s", kind_cases())
def test_derivatives_of_the_table(kind, s):
    """``dphi`` and ``x_dphi`` are the derivative of ``phi`` (autograd in float64), on a range of ``x``."""
    k = kind_by_name(kind)
    t = 1.7
    x = torch.logspace(-3, 0.6, 40, dtype=torch.float64, requires_grad=True)
    f = k.phi(x, s, t)
    (df,) = torch.autograd.grad(f.sum(), x)
    x = x.detach()
    f = f.detach()
    torch.testing.assert_close(k.dphi(x, f, s, t), df, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.x_dphi(x, f, s, t), x * df, rtol=1e-12, atol=0)
    if k.logsum:
        torch.testing.assert_close(k.log_phi(x, s, t), torch.log(f), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("kind,s", kind_cases(exponents=(1.0,), general=()))
def test_the_table_is_what_energy_computes(kind, s):
    """One pair at a known distance: ``energy(..., reduction="sum")`` is the table's ``phi`` there."""
    w = torch.tensor([[1.0, 0.0], [math.cos(1.0), math.sin(1.0)]], dtype=torch.float64)
    k = kind_by_name(kind)
    x = torch.tensor(1.0 / math.pi + 1e-4 if k.angle else 2 - 2 * math.cos(1.0), dtype=torch.float64)
    want = k.phi(x, s, 2.0)
    for backend in hk.available_backends("cpu"):
        got = hk.energy(w, kind, s, eps_norm=0.0, reduction="sum", backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=f"{kind} on {backend}")


def _unknown_params(normalize=True):
    return _params.EnergyParams("coulomb", 1.0, 2.0, 1e-4, 1e-4, False, normalize)


@pytest.mark.parametrize("normalize", [True, False])
def test_torch_paths_refuse_an_unknown_kind(normalize):
    """Parameters that bypass ``make_params`` still never reach a formula: every torch path raises."""
    w = torch.randn(1, 6, 3, dtype=torch.float64)
    p = _unknown_params(normalize)
    with pytest.raises(ValueError, match="kind must be one of"):
        reference.energy(w, p)
    with pytest.raises(ValueError, match="kind must be one of"):
        tiled.energy_grad(w, p)
    with pytest.raises(ValueError, match="kind must be one of"):
        tiled.cross_energy_grad(w, w, p)
    with pytest.raises(ValueError, match="kind must be one of"):
        p.code


@pytest.mark.parametrize("code", [-1, len(KIND_TABLE), 1000])
def test_python_ops_refuse_an_unknown_code(code):
    """The registered ops of the Python backends (called directly, past the public checks) take the kind as
    its code: an unknown code raises instead of indexing another kind."""
    w = torch.randn(1, 6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown kind code"):
        torch.ops.hsu.tiled_energy_grad(w, code, 1.0, 2.0, 1e-4, 1e-4, False, True, 1.0)
