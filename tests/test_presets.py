"""The Sphere-Uniformity presets (MHS, MGD, MHP, MHC, R-MHP) against the original code's formulas
(wy1iu/Sphere-Uniformity ``*/architecture.py`` and ``*/train.py``, docs/spec.md §7b), written again here,
literally and independently of the package: TensorFlow's layout (a ``[D, N]`` filter matrix, one column per
neuron, in the conv kernel's ``[kh, kw, in, out]`` order), ``[F, -F]`` concatenated for half-space, the
``norm`` then ``cal`` double normalization, full matrices, band-part masking, ``logdet``, all in float64.

Inner products and column norms are formed as explicit products, each entry's D products summed by the
same contiguous reduction, so that entries equal in exact arithmetic (of ``[F, -F]``: (i, j) and
(i+N, j+N); (i, j+N) and (j, i+N)) are bitwise equal, as they are in the original's TensorFlow graph
whenever its matrix product is symmetric, and MHS's tie sum sees every copy of the minimum.
"""

import math

import pytest
import torch
from torch import nn

import hsu_kernels.regularizers as R
from hsu_kernels.layers import neuron_matrix
from hsu_kernels.regularizers import MHERegularizer, default_coefs
from hsu_kernels.testing import check_against_reference, rel_err

EPS = 1e-4
GAMMA = 10.0
WD = 5e-4  # the original network's l2_regularizer(5e-4), which its poles share

#: The original code's (hidden, output) coefficients, read from each method's architecture.py.
ORIGINAL_COEFS = {
    "mhe": (1.0, 10.0),  # wy1iu/MHE code/architecture.py (powers 0, 1, 2, a0)
    "comhe_random": (1.0, 10.0),  # rmlin/CoMHE random_projection (HEAD; its first upload had 100)
    "comhe_angle": (1.0, 10.0),
    "comhe_adversarial": (1.0, 10.0),
    "mhs": (0.1, 1.0),
    "mgd": (0.01, 0.1),
    "mhp": (1.0, 10.0),
    "mhc": (0.01, 0.1),
    "rmhp": (0.01, 0.1),
    "uniformity": (1.0, 10.0),  # no original for neurons (ssnl/align_uniform regularizes features): MHE's
}


# -- the original's formulas, literally ------------------------------------------------------------------


def tf_filter(w: torch.Tensor) -> torch.Tensor:
    """``tf.reshape(filt, [-1, n_filt])`` of the TensorFlow kernel ``[kh, kw, in, out]`` (or ``[in, out]``)
    holding the same neurons as the PyTorch weight ``w`` (``[out, in, kh, kw]`` or ``[out, in]``)."""
    tf_kernel = w.permute(*range(2, w.dim()), 1, 0)
    return tf_kernel.reshape(-1, w.shape[0])


def tf_vector(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rows ``v: [K, D]`` in our neuron coordinates (``w.reshape(out, -1)``'s order: in, kh, kw) in the
    TensorFlow filter's coordinate order (kh, kw, in), so that each is the same direction for both (a
    pole, or a projection's row)."""
    return v.reshape(v.shape[0], *w.shape[1:]).permute(0, *range(2, w.dim()), 1).reshape(v.shape[0], -1)


def o_colsum(x):
    """``reduce_sum(x, [0], keepdims=True)``, each column summed by the same contiguous reduction."""
    return x.T.contiguous().sum(-1)[None, :]


def o_norm(f):
    return f / torch.sqrt(o_colsum(f * f) + EPS)


def o_inner(f):
    ft = f.T
    return (ft[:, None, :] * ft[None, :, :]).sum(-1)


def o_cal(f):
    n = torch.sqrt(o_colsum(f * f) + EPS)
    return o_inner(f) / (n.T @ n)


def o_cal_pole(f, v):
    f_norm = torch.sqrt(o_colsum(f * f) + EPS)
    v_norm = torch.sqrt((v * v).sum() + EPS)
    return (v @ f) / (v_norm * f_norm)


def o_half(f, half):
    return torch.cat([f, -f], dim=1) if half else f


def orig_mhs(f, half, c):
    f = o_half(f, half)
    final = 2.0 - 2.0 * o_cal(o_norm(f))
    final = final - torch.tril(final)  # matrix_band_part(final, -1, 0): the lower triangle and diagonal
    target = final[final != 0].min()
    return -c * final[final == target].sum()


def orig_mgd(f, half, c):
    f = o_half(f, half)
    n = f.shape[1]
    final = torch.exp(-1 * (2.0 - 2.0 * o_cal(o_norm(f)))) + torch.diag(torch.full((n,), 1e-6, dtype=f.dtype))
    return -c * torch.logdet(final)


def orig_mhp_term(f, v, half, c):
    """The ``thomson_loss`` entry of one layer in mhp/architecture.py (the network adds its negative)."""
    f = o_half(f, half)
    n = f.shape[1]
    cross = 2.0 - 2.0 * o_cal_pole(o_norm(f), v)
    return c * torch.pow(cross, -1.0).sum() / n


def orig_mhc_term(f, v, half, c):
    """The ``thomson_loss`` entry of one layer in mhc/architecture.py (the network adds it)."""
    f = o_half(f, half)
    n = f.shape[1]
    cross = 2.0 - 2.0 * o_cal_pole(o_norm(f), v)
    final = torch.exp(-GAMMA * cross).sum() / n
    return -c * torch.log(final) / GAMMA


def orig_rmhp(f, c):
    return c * torch.sqrt((f.sum(1) ** 2).sum())


def orig_mhe(f, power, half, c):
    """wy1iu/MHE ``_add_thomson_constraint`` (one normalization, the diagonal padded before the mask)."""
    f = o_half(f, half)
    n = f.shape[1]
    inner = o_cal(f)
    eye = torch.eye(n, dtype=f.dtype)
    if power == "0":
        final = -torch.log(2.0 - 2.0 * inner + eye)
    elif power in ("1", "2"):
        final = torch.pow(2.0 - 2.0 * inner + eye, -0.5 if power == "1" else -1.0)
    else:
        a = torch.acos(inner) / math.pi + 1e-4
        final = -torch.log(a) if power == "a0" else torch.pow(a, -float(power[1]))
    final = final - torch.tril(final)
    return c * final.sum() / (n * (n - 1) / 2.0)


def orig_comhe(f, p_tf, half, c):
    """rmlin/CoMHE's projected term: the s = 2 MHE of ``matmul(P_k, filt)``, averaged over the projections."""
    return sum(orig_mhe(p @ f, "2", half, c) for p in p_tf) / len(p_tf)


def orig_network_term(method, f, v, half, c):
    """What the original adds to the network's loss for one layer."""
    if method == "mhs":
        return orig_mhs(f, half, c)
    if method == "mgd":
        return orig_mgd(f, half, c)
    if method == "mhp":
        return -orig_mhp_term(f, v, half, c)  # mhp/train.py: loss_op += -thom_loss
    if method == "mhc":
        return orig_mhc_term(f, v, half, c)  # mhc/train.py: loss_op += thom_loss
    return orig_rmhp(f, c)


def ours(method, w, v, half):
    """Our per-layer function, before the coefficient."""
    if method == "mhs":
        return R.mhs_loss(w, half)
    if method == "mgd":
        return R.mgd_loss(w, half)
    if method == "mhp":
        return R.mhp_loss(w, v, half)
    if method == "mhc":
        return R.mhc_loss(w, v, half)
    return R.rmhp_loss(w)


# -- inputs ---------------------------------------------------------------------------------------------------


def conv_weight(out, cin, k, scale, dtype=torch.float64):
    """A conv weight ``[out, cin, k, k]``: He init (std sqrt(2 / fan_in), as the original's initializer),
    or rows of squared norm near 1e-4 (between 0.5e-4 and 2e-4), where the double normalization matters."""
    fan_in = cin * k * k
    w = torch.randn(out, cin, k, k, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
    if scale == "small":
        rows = w.reshape(out, -1)
        target = torch.sqrt(EPS * (0.5 + 1.5 * torch.rand(out, 1, dtype=torch.float64)))
        w = (rows / rows.norm(dim=1, keepdim=True) * target).reshape(w.shape)
    return w.to(dtype)


CASES = [(m, half) for m in ("mhs", "mgd", "mhp", "mhc") for half in (False, True)] + [("rmhp", False)]


@pytest.mark.parametrize("scale", ["he", "small"])
@pytest.mark.parametrize("role", ["hidden", "output"])
@pytest.mark.parametrize("method,half", CASES)
def test_layer_function_matches_original(method, half, role, scale):
    """Value and gradient (to the weights, and to the pole) of one conv layer, float64, relative 1e-12."""
    w = conv_weight(12, 4, 3, scale).requires_grad_(True)
    v = torch.randn(1, 36, dtype=torch.float64, requires_grad=True)
    c = default_coefs(method)[0 if role == "hidden" else 1]
    got = c * ours(method, w.reshape(12, -1), v, half)
    want = orig_network_term(method, tf_filter(w), tf_vector(v, w), half, c)
    inputs = [w, v] if method in ("mhp", "mhc") else [w]
    g_got = torch.autograd.grad(got, inputs)
    g_want = torch.autograd.grad(want, inputs)
    assert rel_err(got.detach(), want.detach()) <= 1e-12, f"value {float(got)} vs original {float(want)}"
    for name, a, b in zip(("dw", "dv"), g_got, g_want):
        assert rel_err(a, b) <= 1e-12, f"{name}: relative error {rel_err(a, b):.3g}"


@pytest.mark.parametrize("half", [False, True])
def test_pole_terms_are_the_original_layer_terms(half):
    """``pole_potential`` / ``pole_softmin`` are the original's per-layer MHP / MHC terms per pole."""
    w = conv_weight(10, 3, 3, "he")
    v = torch.randn(3, 27, dtype=torch.float64)
    f = tf_filter(w)
    pot = R.pole_potential(w.reshape(10, -1), v, half)
    soft = R.pole_softmin(w.reshape(10, -1), v, half)
    for k in range(3):
        vk = tf_vector(v[k:k + 1], w)
        assert rel_err(pot[k], orig_mhp_term(f, vk, half, 1.0)) <= 1e-12
        assert rel_err(soft[k], orig_mhc_term(f, vk, half, 1.0)) <= 1e-12


def test_mhs_sums_exact_ties():
    """Neurons on disjoint coordinates: every cosine is exactly 0, so every distance is exactly 2 and
    every pair ties; the original sums them all (with half-space: each same-sign pair twice, each
    cross pair (i, -j) twice, the antipodal pairs at distance ~4 not at all)."""
    w = torch.zeros(3, 6, dtype=torch.float64)
    w[0, :2], w[1, 2:4], w[2, 4:] = torch.randn(2), torch.randn(2) * 3, torch.randn(2) * 0.01
    w.requires_grad_(True)
    for half, ties in ((False, 3), (True, 12)):
        got, want = R.mhs_loss(w, half), orig_mhs(w.T, half, 1.0)
        assert float(want.detach()) == -2.0 * ties, "the literal form must see every tie"
        assert rel_err(got.detach(), want.detach()) <= 1e-15
        (g,), (g_ref,) = torch.autograd.grad(got, [w]), torch.autograd.grad(want, [w])
        assert rel_err(g, g_ref) <= 1e-12


def test_mhs_half_space_is_twice_the_minimum():
    """With half-space the original's value is -2 * min d2 (each distance is two entries of [F, -F])."""
    w = conv_weight(9, 2, 3, "he").reshape(9, -1)
    f = o_norm(tf_filter(w.reshape(9, 2, 3, 3)))
    g = o_cal(torch.cat([f, -f], 1))
    d2 = (2 - 2 * g)[torch.triu(torch.ones_like(g), 1) > 0]
    assert rel_err(R.mhs_loss(w, True), -2 * d2.min()) <= 1e-12


@pytest.mark.parametrize("method,half", CASES)
def test_layer_function_float32(method, half):
    """float32 within twice the original formula's own float32 error plus 8 ulps (docs/spec.md §9). The
    pole rides along as the last row, so the coordinate permutations the error estimate draws move the
    pole with the neurons."""
    x = torch.cat([conv_weight(12, 4, 3, "he").reshape(12, -1), torch.randn(1, 36, dtype=torch.float64)])

    def fn(x):
        return default_coefs(method)[0] * ours(method, x[:-1], x[-1:], half)

    def ref(x):
        w, v = x[:-1], x[-1:]
        return orig_network_term(method, w.T, v, half, default_coefs(method)[0])

    check_against_reference(fn, ref, x, torch.float32, f"{method} half={half}")


@pytest.mark.parametrize("scale", ["he", "small"])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("power", ["0", "1", "2", "a0", "a1", "a2"])
def test_mhe_matches_original(power, half, scale):
    w = conv_weight(12, 4, 3, scale).requires_grad_(True)
    c = default_coefs("mhe", power)[0]
    got = c * R.mhe_loss(w.reshape(12, -1), power, half)
    want = orig_mhe(tf_filter(w), power, half, c)
    assert rel_err(got.detach(), want.detach()) <= 1e-12, f"value {float(got)} vs original {float(want)}"
    (g,), (g_ref,) = torch.autograd.grad(got, [w]), torch.autograd.grad(want, [w])
    assert rel_err(g, g_ref) <= 1e-12, f"gradient: relative error {rel_err(g, g_ref):.3g}"


@pytest.mark.parametrize("scale", ["he", "small"])
def test_comhe_random_matches_original(scale):
    """With the same projections (mapped to the original's coordinate order), value and gradient."""
    w = conv_weight(12, 6, 3, scale).requires_grad_(True)
    p = torch.randn(5, 40, 54, dtype=torch.float64)
    got = default_coefs("comhe_random")[0] * R.comhe_random_loss(w.reshape(12, -1), p=p)
    want = orig_comhe(tf_filter(w), [tf_vector(pk, w) for pk in p], True, ORIGINAL_COEFS["comhe_random"][0])
    assert rel_err(got.detach(), want.detach()) <= 1e-12
    (g,), (g_ref,) = torch.autograd.grad(got, [w]), torch.autograd.grad(want, [w])
    assert rel_err(g, g_ref) <= 1e-12


@pytest.mark.parametrize("method", ["comhe_angle", "comhe_adversarial"])
def test_learned_comhe_total_matches_original(method):
    """The network's value with the same (injected) projection: the first layer (D = 27 <= pd) plain
    half-space MHE, the projected hidden layers, the output layer plain MHE with coefficient 10."""
    model = small_net("he")
    reg = MHERegularizer(model, method=method).eval()
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    aux = reg.auxiliaries()
    assert sorted(aux) == ["2", "5"], "projections for the hidden layers with D > pd = 30 only"
    ch, co = ORIGINAL_COEFS[method]
    want = 0.0
    for k, (name, m) in enumerate(zip(["0", "2", "5", "7"], layers)):
        f = tf_filter(m.weight)
        if name in aux:
            with torch.no_grad():
                aux[name].copy_(torch.randn_like(aux[name]))
            want = want + orig_comhe(f, [tf_vector(pk, m.weight) for pk in aux[name].detach()], True, ch)
        else:
            want = want + orig_mhe(f, "2", name != "7", co if name == "7" else ch)
    got = reg()
    weights = [m.weight for m in layers]
    assert rel_err(got.detach(), want.detach()) <= 1e-12
    for a, b in zip(torch.autograd.grad(got, weights), torch.autograd.grad(want, weights)):
        assert rel_err(a, b) <= 1e-12


def test_default_coefs_are_the_originals():
    assert {m: default_coefs(m) for m in R.METHODS} == ORIGINAL_COEFS
    for power in ("a1", "a2"):
        assert default_coefs("mhe", power) == (0.1, 1.0)  # wy1iu/MHE scales its angular powers by 0.1


# -- the whole regularizer against the original's total --------------------------------------------------------


def small_net(scale):
    """A small conv + linear network with He-initialized weights (or rows of squared norm near 1e-4).
    Poles are given in our neuron coordinates and mapped to the original's by :func:`tf_vector`."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 10),
    ).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                shape = m.weight.shape
                k = shape[2] if m.weight.dim() == 4 else 1
                m.weight.copy_(conv_weight(shape[0], shape[1], k, scale).reshape(shape))
    return model


def original_total(method, model, poles):
    """The original's contribution to the network's loss: hidden layers half-space with the hidden
    coefficient (r_mhp: no half-space), the last layer plain with the output coefficient."""
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    ch, co = ORIGINAL_COEFS[method]
    total = 0.0
    for k, m in enumerate(layers):
        hidden = k < len(layers) - 1
        total = total + orig_network_term(method, tf_filter(m.weight), tf_vector(poles[k], m.weight),
                                          hidden and method != "rmhp", ch if hidden else co)
    return total


@pytest.mark.parametrize("scale", ["he", "small"])
@pytest.mark.parametrize("method", ["mhs", "mgd", "rmhp", "mhp", "mhc"])
def test_regularizer_total_matches_original(method, scale):
    """``MHERegularizer(model, method=m)()`` with its defaults is the original's total, value and gradient
    to every weight; for MHP and MHC with the same poles injected (``eval()``: no pole update)."""
    model = small_net(scale)
    reg = MHERegularizer(model, method=method)
    aux = reg.auxiliaries()
    poles = []
    for layer in reg.layers:
        d = neuron_matrix(layer.module).shape[1]
        poles.append(torch.randn(1, d, dtype=torch.float64))
        if method in ("mhp", "mhc"):
            with torch.no_grad():
                aux[layer.name].copy_(poles[-1])
    assert bool(aux) == (method in ("mhp", "mhc"))
    reg.eval()
    weights = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    got, want = reg(), original_total(method, model, poles)
    assert got.dtype == torch.float64
    assert rel_err(got.detach(), want.detach()) <= 1e-12, f"{float(got)} vs original {float(want)}"
    for k, (a, b) in enumerate(zip(torch.autograd.grad(got, weights), torch.autograd.grad(want, weights))):
        assert rel_err(a, b) <= 1e-12, f"layer {k} gradient: relative error {rel_err(a, b):.3g}"


@pytest.mark.parametrize("method", ["mhp", "mhc"])
def test_pole_training_matches_original_loop(method):
    """Two network steps of the original's pole training (mhp/train.py, mhc/train.py), written here as
    an independent loop: before each network step, 10 steps of TensorFlow's MomentumOptimizer (accum =
    0.9 accum + grad; v -= lr accum; the accumulator kept across network steps) at the network's learning
    rate on ``vloss = (+/-)(thom_loss + thom_final) + l2_regularizer(5e-4)(poles)`` with the weights fixed;
    MHP's poles minimize the potential (``+``), MHC's maximize the soft distance (``-``)."""
    lr = 0.05
    model = small_net("he")
    reg = MHERegularizer(model, method=method, generator=torch.Generator().manual_seed(3), aux_lr=lr)
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [layer.name for layer in reg.layers]
    assert [layer.module for layer in reg.layers] == layers
    v = [reg.auxiliaries()[n].detach().clone() for n in names]
    assert all(x.shape == (1, neuron_matrix(m).shape[1]) for x, m in zip(v, layers))
    accum = [torch.zeros_like(x) for x in v]
    ch, co = ORIGINAL_COEFS[method]
    term = orig_mhp_term if method == "mhp" else orig_mhc_term
    sign = 1.0 if method == "mhp" else -1.0

    def vloss(poles):
        thom = 0.0
        for k, m in enumerate(layers):
            hidden = k < len(layers) - 1
            w = m.weight.detach()
            thom = thom + term(tf_filter(w), tf_vector(poles[k], w), hidden, ch if hidden else co)
        return sign * thom + sum(WD * (p * p).sum() / 2 for p in poles)

    start = float(sign * vloss(v))
    for step in range(2):
        for _ in range(10):
            x = [p.clone().requires_grad_(True) for p in v]
            grads = torch.autograd.grad(vloss(x), x)
            accum = [0.9 * a + g for a, g in zip(accum, grads)]
            v = [p - lr * a for p, a in zip(v, accum)]
        got = reg()  # training mode: 10 pole steps, then the network's loss with the new poles
        for n, want in zip(names, v):
            assert rel_err(reg.auxiliaries()[n].detach(), want) <= 1e-12, f"pole of layer {n} at step {step}"
        want_total = original_total(method, model, v)
        assert rel_err(got.detach(), want_total.detach()) <= 1e-12
        with torch.no_grad():  # a network step between the two, so the second pole update sees new weights
            for m in layers:
                m.weight.add_(0.01 * torch.randn_like(m.weight))
    # the poles went the way of their own objective: MHP's potential down, MHC's soft distance up
    end = float(sign * vloss(v))
    assert (end < start) if method == "mhp" else (end > start), (start, end)


@pytest.mark.parametrize("method", ["comhe_angle", "comhe_adversarial"])
def test_projection_training_matches_original_loop(method):
    """The original's projection update (rmlin/CoMHE ``*_projection/train.py``), as an independent loop:
    ``iters`` (1 angle, 10 adversarial) plain gradient steps (``GradientDescentOptimizer``) at the network's
    learning rate on ``ploss = sum p_loss + 1e-3 * l2_regularizer(5e-4)(P)``, with ``p_loss`` the angle
    mismatch ``tf.norm(cal(P filt) - cal(filt))`` or the negated plain s = 2 MHE of ``P filt``."""
    lr = 0.05
    model = small_net("he")
    reg = MHERegularizer(model, method=method, generator=torch.Generator().manual_seed(4), aux_lr=lr)
    aux = reg.auxiliaries()
    layers = {"2": model[2], "5": model[5]}
    p = {n: aux[n].detach().clone() for n in layers}
    iters = 1 if method == "comhe_angle" else 10

    def ploss(n, pk):
        w = layers[n].weight.detach()
        f, p_tf = tf_filter(w), tf_vector(pk[0], w)
        if method == "comhe_angle":
            p_loss = torch.sqrt(((o_cal(p_tf @ f) - o_cal(f)) ** 2).sum())
        else:
            p_loss = -orig_mhe(p_tf @ f, "2", False, 1.0)
        return p_loss + 1e-3 * (5e-4 * (pk * pk).sum() / 2)

    for n in layers:
        for _ in range(iters):
            x = p[n].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(ploss(n, x), [x])
            p[n] = p[n] - lr * g
    reg()
    for n in layers:
        assert rel_err(aux[n].detach(), p[n]) <= 1e-12, f"projection of layer {n}"


def _errors(method, scale, half):
    """(value, gradient) relative errors of one random conv layer [24, 8, 3, 3] against the original."""
    w = conv_weight(24, 8, 3, scale).requires_grad_(True)
    rows = w.reshape(24, -1)
    c = default_coefs(method)[0]
    if method == "mhe":
        got, want = c * R.mhe_loss(rows, "2", half), orig_mhe(tf_filter(w), "2", half, c)
    elif method.startswith("comhe"):
        p = torch.randn(*((20, 40) if method == "comhe_random" else (1, 30)), 72, dtype=torch.float64)
        got = c * R.comhe_random_loss(rows, p=p, half_space=half)
        want = orig_comhe(tf_filter(w), [tf_vector(pk, w) for pk in p], half, c)
    else:
        v = torch.randn(1, 72, dtype=torch.float64)
        got = c * ours(method, rows, v, half)
        want = orig_network_term(method, tf_filter(w), tf_vector(v, w), half, c)
    (g,), (g_ref,) = torch.autograd.grad(got, [w]), torch.autograd.grad(want, [w])
    return rel_err(got.detach(), want.detach()), rel_err(g, g_ref)


if __name__ == "__main__":
    # The table of the report: python tests/test_presets.py (max over 20 draws, half-space on and off).
    torch.manual_seed(0)
    print(f"{'method':<18} {'coefs (h, o)':<14} {'He init: value / grad':<26} {'|w|^2 ~ 1e-4: value / grad'}")
    for method in R.METHODS:
        if method == "uniformity":
            continue
        cells = []
        for scale in ("he", "small"):
            errs = [_errors(method, scale, half) for _ in range(20)
                    for half in ((False,) if method == "rmhp" else (False, True))]
            cells.append(f"{max(e[0] for e in errs):.1e} / {max(e[1] for e in errs):.1e}")
        print(f"{method:<18} {str(default_coefs(method)):<14} {cells[0]:<26} {cells[1]}")
