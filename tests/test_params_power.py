"""``power`` as users write it: the ints 0, 1, 2 mean the strings "0", "1", "2" wherever ``power=`` is taken
(energy, energy_many, cross_energy, the regularizers and their presets); bools, other numbers and other
strings are refused, by a ValueError that names ``power`` and the allowed values."""

import numpy as np
import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import regularizers
from hsu_kernels._params import POWERS, check_power, make_params


@pytest.mark.parametrize("power", [0, 1, 2, np.int64(2)])
def test_small_ints_are_the_power_strings(power):
    assert check_power(power) == str(int(power))
    assert make_params(power=power) == make_params(power=str(int(power)))
    w = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hk.energy(w, power=power), hk.energy(w, power=str(int(power))))
    assert torch.equal(hk.energy_many([w, w[:7]], power=power), hk.energy_many([w, w[:7]], power=str(int(power))))
    assert torch.equal(hk.cross_energy(w, w[:7], power=power), hk.cross_energy(w, w[:7], power=str(int(power))))


def test_the_strings_stay_as_they_are():
    for power in POWERS:
        assert check_power(power) == power


@pytest.mark.parametrize("power", [True, False, 3, -1, 2.0, 1.5, "3", "a3", "A1", None, [2]])
def test_other_values_are_refused_naming_power_and_the_allowed_values(power):
    with pytest.raises(ValueError, match=r"power must be one of \['0', '1', '2', 'a0', 'a1', 'a2'\]") as exc:
        check_power(power)
    assert "0, 1 or 2" in str(exc.value) and repr(power) in str(exc.value)
    if power is not None:  # power=None is energy's default: kind and s decide
        w = torch.randn(6, 3)
        with pytest.raises(ValueError, match="power must be one of"):
            hk.energy(w, power=power)


def test_regularizers_take_int_powers():
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    w = model[0].weight.detach()
    assert float(regularizers.mhe_loss(w, 2)) == float(regularizers.mhe_loss(w, "2"))
    for method in ("mhe", "comhe_random"):
        a = regularizers.MHERegularizer(model, power=2, method=method, generator=torch.Generator().manual_seed(0))
        b = regularizers.MHERegularizer(model, power="2", method=method, generator=torch.Generator().manual_seed(0))
        assert a.preset.power == "2" and a().item() == b().item()
    assert regularizers.default_coefs("mhe", 2) == regularizers.default_coefs("mhe", "2")
    with pytest.raises(ValueError, match="power must be one of"):
        regularizers.MHERegularizer(model, power=True)
