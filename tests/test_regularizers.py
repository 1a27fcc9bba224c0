"""MHERegularizer and the uniformity family against independent float64 forms built here from docs/spec.md §1/§7
and the original code's behaviour (wy1iu/MHE, rmlin/CoMHE), forward and gradient."""

import math

import pytest
import torch
from torch import nn

import hsu_kernels.regularizers as R
from hsu_kernels import energy
from hsu_kernels.layers import collect_layers, neuron_matrix
from hsu_kernels.regularizers import MHERegularizer

POWERS = ["0", "1", "2", "a0", "a1", "a2"]


def assert_close(actual, expected, rtol, what=""):
    """Relative check that reports the worst element and how many miss."""
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    err = (actual - expected).abs() / expected.abs().clamp_min(1e-300)
    bad = err > rtol
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())}/{err.numel()} elements off, worst rel err {float(err.max()):.3e} "
        f"(actual {actual.flatten()[err.argmax()].item()!r}, expected {expected.flatten()[err.argmax()].item()!r})"
    )


def make_model(seed, dtype=torch.float64):
    """Real layers of every supported kind, with fresh random weights (not the default init)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ConvTranspose2d(8, 6, 2),
        nn.Conv2d(6, 10, 3, groups=2),
        nn.Conv1d(10, 5, 2),
        nn.Flatten(),
        nn.Linear(40, 16),
        nn.Linear(16, 9),
    ).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.1 + torch.rand(())))
    return model


# -- the original code's per-layer loss, written independently (TF layout: neurons are columns) -------------


def tf_filter(module):
    """The original code's ``tf.reshape(filt, [-1, n_filt])``: a ``[D, N]`` matrix, one column per neuron,
    built from the PyTorch weight by moving the output-channel axis last (docs/spec.md §1's layout)."""
    w = module.weight.detach().to(torch.float64)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    n = w.shape[0]
    return torch.stack([w[i].flatten() for i in range(n)], dim=1)


def ref_layer_loss(filt, power, half, coef):
    if half:
        filt = torch.cat([filt, -filt], dim=1)
    n = filt.shape[1]
    norm = torch.sqrt((filt * filt).sum(0, keepdim=True) + 1e-4)
    inner = (filt.T @ filt) / (norm.T @ norm)
    eye = torch.eye(n, dtype=filt.dtype)
    if power == "0":
        final = -torch.log(2.0 - 2.0 * inner + eye)
    elif power in ("1", "2"):
        final = (2.0 - 2.0 * inner + eye) ** (-0.5 if power == "1" else -1.0)
    else:
        a = torch.acos(inner) / math.pi + 1e-4
        final = -torch.log(a) if power == "a0" else a ** (-float(power[1]))
    final = final - torch.tril(final)  # the reference's final -= matrix_band_part(final, -1, 0)
    return coef * final.sum() / (n * (n - 1) / 2.0)


def ref_total(model, power, half, output_name):
    hidden_coef = 0.1 if power in ("a1", "a2") else 1.0
    output_coef = 1.0 if power in ("a1", "a2") else 10.0
    total = torch.zeros((), dtype=torch.float64)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            if name == output_name:
                total = total + ref_layer_loss(tf_filter(m), power, False, output_coef)
            else:
                total = total + ref_layer_loss(tf_filter(m), power, half, hidden_coef)
    return total


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half", [False, True])
def test_mhe_matches_reference_code(power, half):
    model = make_model(seed=POWERS.index(power) * 2 + half)
    for backend in ("auto", "reference"):
        reg = MHERegularizer(model, power=power, half_space=half, backend=backend)
        assert_close(reg(), ref_total(model, power, half, "7"), 1e-6, f"power={power} half={half} {backend}")


def test_mhe_output_layer_override_and_coefs():
    model = make_model(seed=11)
    reg = MHERegularizer(model, power="1", half_space=True, output_layer="3", hidden_coef=0.5, output_coef=3.0)
    expected = torch.zeros((), dtype=torch.float64)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            expected = expected + ref_layer_loss(tf_filter(m), "1", name != "3", 3.0 if name == "3" else 0.5)
    assert_close(reg(), expected, 1e-6, "output_layer='3'")
    assert [layer.name for layer in reg.layers if layer.is_output] == ["3"]


def test_mhe_gradient_matches_reference_code():
    model = make_model(seed=5)
    reg = MHERegularizer(model, power="2", half_space=True)
    (g,) = torch.autograd.grad(reg(), [model[3].weight])
    w = model[3].weight.detach().clone().requires_grad_(True)
    filt = torch.stack([w[i].flatten() for i in range(w.shape[0])], dim=1)
    (g_ref,) = torch.autograd.grad(ref_layer_loss(filt, "2", True, 1.0), [w])
    assert_close(g, g_ref, 1e-8, "gradient of conv layer")


def test_hidden_layers_go_through_one_energy_many_call(monkeypatch):
    calls = []
    real = R.energy_many

    def counting(ws, *args, **kwargs):
        calls.append(len(ws))
        return real(ws, *args, **kwargs)

    monkeypatch.setattr(R, "energy_many", counting)
    model = make_model(seed=3)
    MHERegularizer(model)()
    assert calls == [5], f"expected one energy_many call over the 5 hidden layers, got {calls}"


# -- layers ------------------------------------------------------------------------------------------------


def test_neuron_matrix_rows_are_neurons():
    torch.manual_seed(0)
    conv, convt, lin = nn.Conv2d(4, 6, 3), nn.ConvTranspose2d(4, 6, 3), nn.Linear(5, 7)
    for i in range(6):
        assert torch.equal(neuron_matrix(conv)[i], conv.weight[i].flatten())
        assert torch.equal(neuron_matrix(convt)[i], convt.weight[:, i].flatten())
    assert torch.equal(neuron_matrix(lin), lin.weight)
    assert neuron_matrix(convt).shape == (6, 36)


def test_collect_layers_selection():
    model = make_model(seed=0)
    names = lambda layers: [layer.name for layer in layers]  # noqa: E731
    assert names(collect_layers(model)) == ["0", "2", "3", "4", "6", "7"]
    assert names(collect_layers(model, include=nn.Conv2d, output_layer=None)) == ["0", "3"]
    assert names(collect_layers(model, exclude=["0", nn.Conv1d])) == ["2", "3", "6", "7"]
    # the output layer stays even when excluded; glob patterns work
    layers = collect_layers(model, include="[0-3]", output_layer="7")
    assert names(layers) == ["0", "2", "3", "7"] and layers[-1].is_output
    # shared weights are collected once
    shared = nn.Linear(4, 4)
    tied = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    assert names(collect_layers(tied)) == ["0", "3"]


def test_layer_errors():
    with pytest.raises(ValueError, match="groups=2"):
        collect_layers(nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="output_layer"):
        collect_layers(make_model(0), output_layer="nope")
    with pytest.raises(TypeError, match="include"):
        collect_layers(make_model(0), include=[3.5])
    with pytest.raises(TypeError, match="model"):
        collect_layers("model")
    with pytest.raises(TypeError, match="layer"):
        neuron_matrix(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="no Linear"):
        collect_layers(nn.Sequential(nn.ReLU()))


# -- CoMHE -------------------------------------------------------------------------------------------------


def test_comhe_random_reproducible_and_mean_of_projections():
    torch.manual_seed(21)
    w = torch.randn(24, 50, dtype=torch.float64)
    a = R.comhe_random_loss(w, pd=10, pn=6, generator=torch.Generator().manual_seed(7))
    b = R.comhe_random_loss(w, pd=10, pn=6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    p = torch.randn(6, 10, 50, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    one_by_one = [energy(w @ p[k].T, power="2", half_space=True, backend="reference") for k in range(6)]
    assert_close(a, torch.stack(one_by_one).mean(), 1e-10, "CoMHE vs one-by-one projections")
    c = R.comhe_random_loss(w, pd=10, pn=6, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


def test_comhe_random_regularizer():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(12, 20, bias=False), nn.Linear(20, 30), nn.Linear(30, 5)).double()
    mk = lambda: MHERegularizer(model, method="comhe_random", pd=16, pn=4,  # noqa: E731
                                generator=torch.Generator().manual_seed(3))
    r1, r2 = mk(), mk()
    v1 = r1()
    assert torch.equal(v1, r2())
    assert not torch.equal(v1, r1()), "a fresh P must be drawn on every call"
    w0, w1, w2 = (neuron_matrix(m) for m in model)
    # only layer 1 (D = 20 > pd) is projected; layer 0 (D = 12) is regularized as plain half-space MHE
    p = torch.randn(4, 16, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    proj = torch.stack([energy(w1 @ p[k].T, power="2", half_space=True, backend="reference") for k in range(4)])
    # coefficients 1 and 10: rmlin/CoMHE's (its first upload's 100 was replaced the same day)
    expected = 1 * (energy(w0, power="2", half_space=True) + proj.mean()) + 10 * energy(w2, power="2")
    assert_close(v1, expected, 1e-10, "comhe_random regularizer")


def _ref_cos(x):
    n = torch.sqrt((x * x).sum(1) + 1e-4)
    return (x @ x.T) / torch.outer(n, n)


def test_comhe_angle_loss_and_gradient():
    torch.manual_seed(8)
    w = torch.randn(15, 40, dtype=torch.float64, requires_grad=True)
    p = torch.randn(7, 40, dtype=torch.float64, requires_grad=True)
    val = R.comhe_angle_loss(p, w, weight_decay=1e-3)
    ref = torch.sqrt(((_ref_cos(w @ p.T) - _ref_cos(w)) ** 2).sum()) + 1e-3 * (p ** 2).sum()
    # the default decay is the original's 1e-3 * l2_regularizer(5e-4) = 2.5e-7 |P|^2
    assert_close(R.comhe_angle_loss(p, w) - R.comhe_angle_loss(p, w, weight_decay=0.0), 2.5e-7 * (p ** 2).sum(),
                 1e-6, "default decay")
    assert_close(val, ref, 1e-10, "angle loss")
    for a, b in zip(torch.autograd.grad(val, [p, w]), torch.autograd.grad(ref, [p, w])):
        assert_close(a, b, 1e-8, "angle loss gradient")


@pytest.mark.parametrize("method", ["comhe_angle", "comhe_adversarial"])
def test_learned_projection_is_trained(method):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(50, 20), nn.Linear(20, 4)).double()
    reg = MHERegularizer(model, method=method, pd=8, generator=torch.Generator().manual_seed(0), aux_lr=0.01)
    w = neuron_matrix(model[0]).detach()
    p0 = reg.aux[0].detach().clone()
    objective = (lambda p: R.comhe_angle_loss(p, w)) if method == "comhe_angle" else (
        lambda p: R.comhe_adversarial_objective(p, w))
    before = float(objective(p0))
    val = reg()
    after = float(objective(reg.aux[0].detach()))
    assert after < before, f"{method}: the projection's own objective must go down ({before} -> {after})"
    p = reg.aux[0].detach()
    expected = energy(w @ p[0].T, power="2", half_space=True) + 10 * energy(neuron_matrix(model[1]), power="2")
    assert_close(val, expected, 1e-10, f"{method} value with the updated P")
    (g,) = torch.autograd.grad(val, [model[0].weight])
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    reg.eval()
    reg()
    assert torch.equal(reg.aux[0].detach(), p), "eval mode must not update P"


# -- uniformity: values and gradients against float64 autograd of their plain forms (the Sphere-Uniformity
# presets are pinned to the original code's formulas in test_presets.py) ----------------------------------


def _u(w, eps=1e-4):
    return w / torch.sqrt((w * w).sum(1, keepdim=True) + eps)


def _check(fn, ref, inputs, what, rtol=1e-8):
    val = fn(*inputs)
    r = ref(*inputs)
    assert_close(val, r, rtol, what)
    c = torch.rand_like(val) + 0.5  # a random cotangent, so every output's gradient counts
    for a, b in zip(torch.autograd.grad((c * val).sum(), inputs), torch.autograd.grad((c * r).sum(), inputs)):
        assert_close(a, b, rtol, what + " gradient")


@pytest.mark.parametrize("fn", [R.mhs_loss, R.mgd_loss, R.rmhp_loss])
def test_batched_layer_functions(fn):
    """``[B, N, D]`` gives each matrix's value, with gradients to each."""
    w = torch.randn(3, 9, 7, dtype=torch.float64, requires_grad=True)
    _check(fn, lambda w: torch.stack([fn(x) for x in w.unbind(0)]), [w], fn.__name__, rtol=1e-12)


def test_neuron_uniformity_and_uniformity_method():
    torch.manual_seed(70)
    w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)

    def ref(w):
        u = _u(w)
        iu = torch.triu_indices(30, 30, 1)
        return torch.log(torch.exp(-2 * (2 - 2 * u @ u.T))[iu[0], iu[1]].mean())

    _check(lambda w: R.neuron_uniformity(w), ref, [w], "neuron uniformity")
    model = nn.Sequential(nn.Linear(8, 30), nn.Linear(30, 4)).double()
    with torch.no_grad():
        model[0].weight.copy_(w)
    reg = MHERegularizer(model, method="uniformity", half_space=False)
    assert_close(reg(), ref(w) + 10 * R.neuron_uniformity(model[1].weight), 1e-10, "uniformity method")


def test_uniformity_align_loss():
    torch.manual_seed(71)
    x = torch.nn.functional.normalize(torch.randn(16, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    y = torch.nn.functional.normalize(torch.randn(16, 5, dtype=torch.float64), dim=1).requires_grad_(True)

    def unif(z):
        iu = torch.triu_indices(16, 16, 1)
        return torch.log(torch.exp(-2 * torch.cdist(z, z) ** 2)[iu[0], iu[1]].mean())

    def ref(x, y):
        return (x - y).norm(dim=1).pow(2).mean() + 0.5 * (unif(x) + unif(y)) / 2

    _check(lambda x, y: R.uniformity_align_loss(x, y, lam=0.5), ref, [x, y], "align + uniformity", rtol=1e-7)


@pytest.mark.parametrize("method", R.METHODS)
def test_every_method_runs_and_is_differentiable(method):
    model = make_model(seed=80)
    opts = dict(pd=12, pn=3) if method.startswith("comhe") else {}
    reg = MHERegularizer(model, method=method, generator=torch.Generator().manual_seed(0), **opts)
    val = reg()
    grads = torch.autograd.grad(val, [m.weight for m in (model[0], model[7])])
    assert val.dim() == 0 and torch.isfinite(val)
    assert all(torch.isfinite(g).all() for g in grads)
    assert set(reg.layer_energies()) == {"0", "2", "3", "4", "6", "7"}


def test_regularizer_bad_args():
    model = make_model(seed=0)
    with pytest.raises(ValueError, match="method"):
        MHERegularizer(model, method="mhx")
    with pytest.raises(ValueError, match="power"):
        MHERegularizer(model, power="3")
    with pytest.raises(ValueError, match="hidden_coef"):
        MHERegularizer(model, hidden_coef=-1.0)
    with pytest.raises(TypeError, match="output_coef"):
        MHERegularizer(model, output_coef="10")
    with pytest.raises(TypeError, match="half_space"):
        MHERegularizer(model, half_space=1)
    with pytest.raises(ValueError, match="pd"):
        MHERegularizer(model, method="comhe_random", pd=0)
    with pytest.raises(TypeError, match="pn"):
        MHERegularizer(model, method="comhe_random", pn=2.5)
    with pytest.raises(TypeError, match="generator"):
        MHERegularizer(model, method="comhe_random", generator=0)
    with pytest.raises(ValueError, match="aux_lr"):
        MHERegularizer(model, method="mhp", aux_lr=0.0)
    with pytest.raises(ValueError, match="backend"):
        MHERegularizer(model, backend="gpu")  # at construction, not at the first call
    with pytest.raises(ValueError, match="pd is not an option of method='mhs'"):
        MHERegularizer(model, method="mhs", pd=10)
    with pytest.raises(ValueError, match="power is not an option of method='mgd'"):
        MHERegularizer(model, method="mgd", power="1")
    with pytest.raises(ValueError, match="half_space=True: method='rmhp'"):
        MHERegularizer(model, method="rmhp", half_space=True)
    with pytest.raises(ValueError, match="aux_momentum"):
        MHERegularizer(model, method="mhc", aux_momentum=-0.5)
    with pytest.raises(TypeError, match="aux_steps"):
        MHERegularizer(model, method="mhp", aux_steps=2.0)
    with pytest.raises(ValueError, match="t must"):
        MHERegularizer(model, method="uniformity", t=0.0)
    with pytest.raises(ValueError, match="method"):
        R.default_coefs("mhx")
    w = torch.randn(5, 4)
    with pytest.raises(ValueError, match="v must have D"):
        R.pole_potential(w, torch.randn(2, 3))
    with pytest.raises(ValueError, match="jitter"):
        R.mgd_loss(w, jitter=0.0)
    with pytest.raises(ValueError, match="w must have rank"):
        R.comhe_random_loss(torch.randn(5), pd=2, pn=2)
    with pytest.raises(ValueError, match="p must be"):
        R.comhe_random_loss(w, p=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="beta"):
        R.pole_softmin(w, torch.randn(1, 4), beta=-1.0)
    with pytest.raises(TypeError, match="half_space"):
        R.mhs_loss(w, half_space=1)
    with pytest.raises(ValueError, match="block"):
        R.mhs_loss(w, block=0)
    with pytest.raises(ValueError, match="w must have rank"):
        R.rmhp_loss(torch.randn(4))


# -- a regularizer inside a real training setup (issue 12's smaller items) ---------------------------------------


def test_tied_output_head_stays_the_output():
    """A head whose weight is tied to a hidden layer's is still the output layer (one matrix, collected
    once, as the output); the hidden layer between them stays hidden."""
    first, mid, head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
    head.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), mid, nn.ReLU(), head).double()
    for output_layer in ("auto", "4", head):
        layers = collect_layers(model, output_layer=output_layer)
        assert [(layer.name, layer.is_output) for layer in layers] == [("2", False), ("4", True)]
    reg = MHERegularizer(model, power="2", half_space=True)
    expected = energy(mid.weight, power="2", half_space=True) + 10 * energy(head.weight, power="2")
    assert_close(reg(), expected, 1e-12, "tied head")


@pytest.mark.parametrize("method", ["mhp", "mhc", "comhe_angle"])
def test_auxiliaries_follow_the_model_dtype(method):
    """Poles and projections follow their layer's dtype (float32 for half layers), so the value has the
    model's dtype after ``model.to(float64)`` and is the float64 computation."""
    model = nn.Sequential(nn.Linear(50, 20), nn.Linear(20, 4))
    opts = dict(pd=8) if method == "comhe_angle" else {}
    reg = MHERegularizer(model, method=method, generator=torch.Generator().manual_seed(0), **opts)
    assert reg().dtype == torch.float32
    model.to(torch.float64)
    assert reg().dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in reg.parameters())
    assert all(b.dtype == torch.float64 for b in reg.buffers())
    reg.eval()
    aux = reg.auxiliaries()
    w0, w1 = model[0].weight, model[1].weight
    hc, oc = reg.hidden_coef, reg.output_coef
    if method == "comhe_angle":
        expected = hc * energy(w0 @ aux["0"][0].T, power="2", half_space=True) + oc * energy(w1, power="2")
    else:
        fn = R.mhp_loss if method == "mhp" else R.mhc_loss
        expected = hc * fn(w0, aux["0"], True) + oc * fn(w1, aux["1"], False)
    assert_close(reg(), expected, 1e-12, f"{method} in float64")
    model.to(torch.bfloat16)
    reg.train()
    assert reg().dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in reg.parameters())


@pytest.mark.parametrize("method", ["mhe", "mhp"])
def test_pickled_regularizer_keeps_its_model(method):
    """Pickling (or deep-copying, or torch.save-ing) the regularizer alone brings its model along: the copy's
    layers are its own model's, and training that model changes the copy's value."""
    import copy
    import io
    import pickle

    model = make_model(seed=90)
    reg = MHERegularizer(model, method=method, generator=torch.Generator().manual_seed(0)).eval()
    value = reg().detach()
    buf = io.BytesIO()
    torch.save(reg, buf)
    buf.seek(0)
    clones = [pickle.loads(pickle.dumps(reg)), copy.deepcopy(reg), torch.load(buf, weights_only=False)]
    for clone in clones:
        assert clone.model is not model
        own = {id(m) for m in clone.model.modules()}
        assert all(id(layer.module) in own for layer in clone.layers)
        assert_close(clone(), value, 1e-12, "copy before training")
        with torch.no_grad():
            clone.model[0].weight.mul_(0.5).add_(0.1)
        fresh = MHERegularizer(clone.model, method=method).eval()
        with torch.no_grad():
            for name, p in fresh.auxiliaries().items():
                p.copy_(clone.auxiliaries()[name])
        assert_close(clone(), fresh(), 1e-12, "copy after its model changed")
    assert_close(reg(), value, 1e-12, "the original regularizer is untouched")
    # the model is referenced, not owned: none of its parameters are the regularizer's
    assert not {id(p) for p in reg.parameters()} & {id(p) for p in model.parameters()}
    assert all(k.startswith("aux") for k in reg.state_dict())


def test_aux_lr_follows_the_network():
    model = make_model(seed=91)
    reg = MHERegularizer(model, method="mhp", aux_lr=0.1)
    reg.aux_lr = 0.01
    assert reg.preset.aux_lr == 0.01
    with pytest.raises(ValueError, match="aux_lr"):
        reg.aux_lr = -1.0
    with pytest.raises(AttributeError, match="no learned auxiliaries"):
        MHERegularizer(model).aux_lr = 0.1
