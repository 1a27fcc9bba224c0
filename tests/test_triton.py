"""The Triton backend against the float64 reference, forward and gradient.

Runs only where Triton can run: on CUDA, or on CPU tensors under the Triton interpreter. Without a GPU::

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton.py -q

(the variable must be set before Triton is imported, so run this file in its own pytest process).
Under the interpreter the shapes are small (N <= 130); on CUDA the same tests run at larger sizes.

Tolerances (the flash-attention habit): the kernel's error against the float64 reference may be at most
twice the reference's own error when the reference computes in the kernel's dtype (root-mean-square over
the elements; 4x element by element), plus a small floor relative to the result's scale (``FLOOR``). The
"reference's own error" is the larger of two float32 evaluations of docs/spec.md (normalize-then-multiply as in
reference.py, and the safe form ``(w_i . w_j) r_i r_j`` the kernels use): one evaluation's error is a
random draw that can be far below typical by luck (see ``assert_close_to_ref``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os

import pytest
import torch
from oracle import LOG_MEAN_REL, U, check_log_mean, clustered_rows, log_mean64, unit_d2

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip(
        "the Triton backend needs a CUDA GPU or the Triton CPU interpreter: run "
        "`TRITON_INTERPRET=1 python -m pytest tests/test_triton.py`",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import hsu_kernels  # noqa: E402
from hsu_kernels import reference  # noqa: E402
from hsu_kernels import triton as ht  # noqa: E402
from hsu_kernels._params import EnergyParams, make_params  # noqa: E402
from hsu_kernels.kinds import KIND_CODE, KIND_TABLE, kind_by_name  # noqa: E402
from hsu_kernels.testing import kind_cases  # noqa: E402

if not ht.available():
    pytest.skip(f"hsu_kernels.triton failed to import: {ht.import_error()!r}", allow_module_level=True)

import triton  # noqa: E402

from hsu_kernels.triton import kernels as tk  # noqa: E402
from hsu_kernels.triton import launch  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
ON_GPU = DEVICE == "cuda"
NS = (2, 3, 17, 130) + ((1000, 2049) if ON_GPU else ())
DS = (1, 3, 64, 300) + ((1152, 4608) if ON_GPU else ())
#: Floor of the float32 bound, relative to max |reference| (the float32 reference itself is ~1e-7 off).
FLOOR = 2e-6

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on masked lanes


@pytest.fixture(autouse=True)
def _first_config_per_launch_on_gpu(monkeypatch):
    """On a GPU the autotuner compiles and times every config a launch's pruner leaves, for every new
    specialization: hundreds of compiles, minutes that a short GPU lease does not have. These tests check
    numbers, not speed, so each launch keeps the pruner's first config (every config is run on its own by
    ``test_every_*_config``). ``HSU_TRITON_TEST_AUTOTUNE=1`` restores full autotuning. (The interpreter has
    one config per kernel: nothing changes there.)"""
    if ON_GPU and os.environ.get("HSU_TRITON_TEST_AUTOTUNE") != "1":
        for kern in (tk.fused_kernel, tk.coef_kernel, tk.gemm_kernel):
            prune = getattr(kern, "early_config_prune", None)

            def first(configs, nargs, _prune=prune, **kwargs):
                return (_prune(configs, nargs, **kwargs) if _prune else configs)[:1]

            monkeypatch.setattr(kern, "early_config_prune", first)
    yield


KINDS = kind_cases(general=(3.5, 0.7))  # every kind of the table; the power kinds at each specialized exponent


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float32).to(dtype).to(DEVICE)


def _ref_energy_grad(w, p, dtype):
    """Reference sum energy and gradient of ``w: [B, N, D]`` computed in ``dtype``."""
    wd = w.detach().to(dtype).requires_grad_(True)
    e = reference.energy_sum(wd, p)
    (g,) = torch.autograd.grad(e.sum(), wd)
    return e.detach(), g


def _safe_pairs(x, y, p):
    """``phi`` of every pair with the cosine in docs/spec.md §1's safe form ``(x_i . y_j) r_i r_j`` (the kernels'
    form; the reference normalizes first). Un-normalized: the reference's own formula."""
    if not p.normalize:
        d2 = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :] - 2 * x @ y.transpose(-1, -2)
        return reference.phi_of_d2(d2.clamp_min(0), p)
    rx = torch.rsqrt((x * x).sum(-1) + p.eps_norm)
    ry = torch.rsqrt((y * y).sum(-1) + p.eps_norm)
    return reference.phi_of_g((x @ y.transpose(-1, -2)) * rx[..., :, None] * ry[..., None, :], p)


def _safe_energy_grad(w, p, dtype):
    """The energy (docs/spec.md) of ``w: [B, N, D]`` in ``dtype`` through :func:`_safe_pairs` (half-space by
    concatenation, as the reference does)."""
    wd = w.detach().to(dtype).requires_grad_(True)
    x = torch.cat([wd, -wd], dim=-2) if p.half_space else wd
    n = x.shape[-2]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    e = _safe_pairs(x, x, p)[..., iu[0], iu[1]].sum(-1)
    (g,) = torch.autograd.grad(e.sum(), wd)
    return e.detach(), g


def _low_precision_error(w, p, e64, g64):
    """The reference's own error in ``w``'s dtype: the larger of its two forms (normalize-then-multiply,
    and the safe form), since one evaluation's error is a random draw that can be near zero by luck (a
    single energy of 130 points on the line was 40x luckier than typical in one draw). A form that is not
    finite is left out (the half-space diagonal ``g_ii`` rounds to -1 in low precision at large D, where
    the angular derivative is infinite); ``None`` when neither is finite."""
    forms = [f for f in (_ref_energy_grad(w, p, w.dtype), _safe_energy_grad(w, p, w.dtype))
             if bool(torch.isfinite(f[0]).all()) and bool(torch.isfinite(f[1]).all())]
    if not forms:
        return None, None
    err = lambda t, ref: (t.double() - ref).abs().max().item()  # noqa: E731
    return max((f[0] for f in forms), key=lambda t: err(t, e64)), max((f[1] for f in forms), key=lambda t: err(t, g64))


#: Used only where the reference cannot compute in the input's dtype (see ``_low_precision_error``):
#: relative RMS bounds on (energy, gradient), about 3x the worst the kernel showed in the interpreter
#: (energy <= 7e-8 in every dtype; gradient 3e-6 float32 at D = 300, 1.2e-5 at D = 4608, 2.1e-4 float16,
#: 6.2e-3 bfloat16).
FALLBACK_REL = {torch.float32: (1e-6, 5e-5), torch.float16: (1e-6, 7e-4), torch.bfloat16: (1e-6, 2e-2)}


def assert_rel_rms(name, got, ref64, bound):
    got, ref64 = got.detach().double().cpu(), ref64.detach().double().cpu()
    assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    rel = ((got - ref64).pow(2).mean().sqrt() / ref64.pow(2).mean().sqrt()).item()
    assert rel <= bound, f"{name}: relative rms error {rel:.3e} > documented bound {bound:.1e}"


def assert_close_to_ref(name, got, ref64, ref_low, floor=FLOOR, factor=2.0):
    """The kernel's error against ``ref64`` may be at most ``factor`` times the low-precision reference's
    own error, measured as root-mean-square over the elements (one element's error is a random draw: in a
    max over elements either side can be lucky), and at most ``2 * factor`` times it element by element
    (which catches localized bugs); each bound gets ``floor * max|ref64|`` added. On failure says how many
    elements are off, where the worst one is, and both errors."""
    got, ref64, ref_low = got.detach().double().cpu(), ref64.detach().double().cpu(), ref_low.detach().double().cpu()
    assert torch.isfinite(ref_low).all(), f"{name}: the low-precision yardstick is not finite (no bound)"
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    err, ref_err = (got - ref64).abs(), (ref_low - ref64).abs()
    scale = ref64.abs().max().item()
    rms, ref_rms = err.pow(2).mean().sqrt().item(), ref_err.pow(2).mean().sqrt().item()
    bound_rms = factor * ref_rms + floor * scale
    bound_max = 2 * factor * ref_err.max().item() + floor * scale
    worst = err.max().item()
    if rms > bound_rms or worst > bound_max:
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        bad = int((err > bound_max).sum())
        raise AssertionError(
            f"{name}: rms error {rms:.3e} (bound {bound_rms:.3e} = {factor} x reference's own {ref_rms:.3e} "
            f"+ {floor:g} x scale {scale:.3e}); max error {worst:.3e} at {idx} (got {got[idx].item():.8g}, "
            f"reference {ref64[idx].item():.8g}; bound {bound_max:.3e}, reference's own max "
            f"{ref_err.max().item():.3e}); {bad} of {err.numel()} elements over the max bound"
        )


def check_energy(w, p, name, floor=FLOOR, factor=2.0, precision=None):
    """The kernel against the float64 reference, with the reference in ``w``'s dtype as the yardstick."""
    e, g = ht.energy_grad(w, p, precision=precision) if precision else ht.energy_grad(w, p)
    assert e.dtype == torch.float32 and g.dtype == w.dtype and g.shape == w.shape
    compare_energy(e, g, w, p, name, floor, factor)


def _as_log(e, g):
    """A sum ``S: [B]`` and its gradient as ``log S`` and ``dS / S`` (in their own dtype)."""
    return torch.log(e), g / e.reshape((-1,) + (1,) * (g.dim() - 1))


def compare_energy(e, g, w, p, name, floor=FLOOR, factor=2.0):
    """A kernel's energy ``e`` and gradient ``g`` of ``w: [B, N, D]`` against the float64 reference, with
    the reference in ``w``'s dtype as the yardstick (see :func:`check_energy`)."""
    e64, g64 = _ref_energy_grad(w, p, torch.float64)
    e_low, g_low = _low_precision_error(w, p, e64, g64)
    if p.kind == "gaussian":  # the backend returns the log-sum (docs/spec.md §4) and its gradient
        e64, g64 = _as_log(e64, g64)
        if e_low is not None:
            e_low, g_low = _as_log(e_low, g_low)
    if e_low is None:
        be, bg = FALLBACK_REL[w.dtype]
        assert_rel_rms(f"{name} energy", e, e64, be)
        assert_rel_rms(f"{name} grad", g, g64, bg)
        return
    assert_close_to_ref(f"{name} energy", e, e64, e_low, floor, factor)
    assert_close_to_ref(f"{name} grad", g, g64, g_low, floor, factor)


# ----------------------------------------------------------------------------------------------------
# float32: every kind, shapes, half-space, normalize off, batched
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("kind,s", KINDS)
def test_every_kind(kind, s, half_space):
    seed = 2 * KINDS.index((kind, s)) + int(half_space)
    n, d = (17, 64) if seed % 2 else (33, 5)
    p = make_params(kind, s, half_space=half_space)
    check_energy(_rand((2, n, d), seed), p, f"{kind} s={s} hs={half_space} N={n} D={d}")


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_shapes(n, d):
    """Tails of every block size: N and D not multiples of 16, D = 1, and D > 256 (the strip path)."""
    p = make_params("riesz", 1.0, half_space=(n + d) % 2 == 0)
    check_energy(_rand((1, n, d), 1000 * n + d), p, f"N={n} D={d} hs={p.half_space}")


@pytest.mark.parametrize("n,d", [(300, 4608), (1000, 1152)] if ON_GPU else [(9, 4608), (40, 1152)])
def test_large_d(n, d):
    """Conv-layer row lengths (up to 3 x 3 x 512 = 4608): the strip path, D looped in chunks."""
    p = make_params("angular", 1.0, half_space=True)
    check_energy(_rand((1, n, d), n + d), p, f"large D N={n} D={d}")


@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("kind,s", [("riesz", 1.0), ("riesz", 2.5), ("log", 0.0), ("gaussian", 0.0)])
def test_normalize_off(kind, s, half_space):
    d = 3 if kind != "log" else 300
    x = _rand((2, 23, d), 7 + int(10 * s) + half_space) * (0.5 if kind == "gaussian" else 1.0)
    p = make_params(kind, s, half_space=half_space, normalize=False, t=1.5)
    check_energy(x, p, f"{kind} un-normalized hs={half_space}")


@pytest.mark.parametrize("d", [3, 300])
def test_batched(d):
    """B independent energies (CoMHE projections) in one launch, and the batch equals one call per entry."""
    w = _rand((4, 19, d), 11 + d)
    p = make_params("riesz", 2.0, half_space=True)
    check_energy(w, p, f"batched D={d}")
    e, g = ht.energy_grad(w, p)
    for b in range(w.shape[0]):
        eb, gb = ht.energy_grad(w[b:b + 1], p)
        torch.testing.assert_close(e[b:b + 1], eb, rtol=1e-6, atol=0)
        torch.testing.assert_close(g[b:b + 1], gb, rtol=1e-5, atol=1e-7)


def test_eps_norm_zero_half_space():
    """eps_norm = 0: exact unit rows; the diagonal pair (u_i, -u_i) at g = -1 contributes phi(-1) each and no
    gradient. The reference cannot do this case (g_ii rounds below -1, acos gives NaN), so the expected value
    is docs/spec.md §4's form written out in float64: 2 sum_{i<j} [phi(g) + phi(-g)] + N phi(-1)."""
    p = make_params("angular", 1.0, half_space=True, eps_norm=0.0)
    w = _rand((1, 20, 3), 5)
    e, g = ht.energy_grad(w, p)
    wd = w.double().requires_grad_(True)
    u = wd / wd.norm(dim=-1, keepdim=True)
    iu = torch.triu_indices(20, 20, offset=1)
    gij = (u @ u.transpose(-1, -2))[..., iu[0], iu[1]]
    ref = 2 * (reference.phi_of_g(gij, p) + reference.phi_of_g(-gij, p)).sum(-1) + 20 * (1 + p.eps_ang) ** -p.s
    (gref,) = torch.autograd.grad(ref.sum(), wd)
    torch.testing.assert_close(e.double(), ref.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(g.double(), gref, rtol=0, atol=1e-4 * gref.abs().max().item())


@pytest.mark.parametrize("kind,s,hs", [("riesz", 1.0, True), ("angular_log", 0.0, False), ("log", 0.0, True)])
def test_strip_path_small_d(monkeypatch, kind, s, hs):
    """The strip path (coef, gemm, epilogue kernels) forced at small D, whole and in several row strips."""
    monkeypatch.setattr(launch, "FUSED_MAX_D", 0)
    p = make_params(kind, s, half_space=hs)
    check_energy(_rand((2, 70, 20), 3), p, f"strip {kind}")
    monkeypatch.setattr(launch, "STRIP_BYTES", 4 * 40 * 70)  # 128-row strips: several per matrix on N=300
    check_energy(_rand((2, 300, 20), 4), p, f"strip windows {kind}")


# ----------------------------------------------------------------------------------------------------
# Public API, cross energy, energy_many
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_public_energy(reduction):
    w = _rand((31, 40), 21).requires_grad_(True)
    out = hsu_kernels.energy(w, "angular", 2.0, half_space=True, reduction=reduction, backend="triton")
    (g,) = torch.autograd.grad(out * 3.0, w)
    wd = w.detach().double().requires_grad_(True)
    ref = reference.energy(wd, make_params("angular", 2.0, half_space=True), reduction)
    (gd,) = torch.autograd.grad(ref * 3.0, wd)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=0)
    torch.testing.assert_close(g.double(), gd, rtol=1e-4, atol=1e-4 * gd.abs().max().item())


@pytest.mark.parametrize("kind,s,hs,norm,d", [
    ("riesz", 1.0, False, True, 3), ("angular", 1.5, True, True, 64), ("gaussian", 0.0, False, False, 300),
    ("log", 0.0, True, True, 300),
])
def test_cross_energy(kind, s, hs, norm, d):
    x = _rand((2, 13, d), 31 + d).requires_grad_(True)
    y = _rand((2, 40, d), 32 + d).requires_grad_(True)
    if not norm:
        x, y = (x.detach() * 0.1).requires_grad_(True), (y.detach() * 0.1).requires_grad_(True)
    p = make_params(kind, s, half_space=hs, normalize=norm)
    e = hsu_kernels.cross_energy(x, y, kind, s, half_space=hs, normalize=norm, backend="triton")
    gx, gy = torch.autograd.grad(e.sum(), (x, y))
    compare_cross(e, gx, gy, x, y, p, f"cross {kind}")


def compare_cross(e, gx, gy, x, y, p, what):
    """A kernel's cross energy and its two gradients against the float64 reference; the yardstick is the
    larger error of the two float32 forms (the reference's and the safe one)."""
    hs = p.half_space
    outs = {}
    for dt, form in ((torch.float64, "ref"), (torch.float32, "ref"), (torch.float32, "safe")):
        xd, yd = x.detach().to(dt).requires_grad_(True), y.detach().to(dt).requires_grad_(True)
        if form == "ref":
            ed = reference.cross_energy(xd, yd, p)
        else:
            phi = _safe_pairs(xd, yd, p)
            ed = (phi + _safe_pairs(xd, -yd, p) if hs else phi).sum((-1, -2))
        outs[dt, form] = (ed.detach(),) + torch.autograd.grad(ed.sum(), (xd, yd))
    for name, got, i in (("energy", e, 0), ("grad x", gx, 1), ("grad y", gy, 2)):
        ref64 = outs[torch.float64, "ref"][i]
        low = max((outs[torch.float32, f][i] for f in ("ref", "safe")), key=lambda t: (t.double() - ref64).abs().max())
        assert_close_to_ref(f"{what} {name}", got, ref64, low)


RAGGED = [(17, 3), (130, 64), (5, 300), (2, 1), (40, 27), (9, 64), (33, 257)]


@pytest.mark.parametrize("hs", [False, True])
def test_energy_many_ragged(hs):
    """Matrices of different N and D in one call (two fused groups and one strip group): each energy and
    each gradient against the reference on that matrix alone."""
    ws = [_rand(shape, 50 + k).requires_grad_(True) for k, shape in enumerate(RAGGED)]
    p = make_params("riesz", 1.0, half_space=hs)
    e = hsu_kernels.energy_many(ws, "riesz", 1.0, half_space=hs, reduction="sum", backend="triton")
    weights = torch.arange(1, len(ws) + 1, dtype=e.dtype, device=e.device)
    grads = torch.autograd.grad((e * weights).sum(), ws)
    for k, w in enumerate(ws):
        e64, g64 = _ref_energy_grad(w[None], p, torch.float64)
        e32, g32 = _low_precision_error(w[None], p, e64, g64)
        assert_close_to_ref(f"energy_many[{k}] {RAGGED[k]} energy", e[k:k + 1], e64, e32)
        assert_close_to_ref(f"energy_many[{k}] {RAGGED[k]} grad", grads[k] / (k + 1), g64[0], g32[0])


def test_energy_many_few_launches(monkeypatch):
    """A ragged list costs one launch per (dtype, padded D) group, not one per matrix."""
    calls = []
    real = launch.run
    monkeypatch.setattr(launch, "run", lambda *a, **k: calls.append(a[2].k) or real(*a, **k))
    ws = [_rand((n, 30 + n % 3), n) for n in (5, 9, 12, 20, 3)]
    launch.energy_many_grad(ws, make_params("log", 0.0))
    assert calls == [5], calls


def test_energy_many_mean_matches_energy():
    ws = [_rand((n, d), 70 + n) for n, d in ((12, 7), (30, 7), (4, 100))]
    e = hsu_kernels.energy_many(ws, power="a1", backend="triton")
    for k, w in enumerate(ws):
        one = hsu_kernels.energy(w, power="a1", backend="triton")
        torch.testing.assert_close(e[k], one, rtol=1e-6, atol=0)


#: The absolute term of the Triton backend's bound on a float32 log-mean (oracle.check_log_mean; its relative
#: term is a few units of roundoff): as the torch backend's, the float64 rounding of the host's combination of
#: the rows (~1e-15 times log(pairs)). Rows with a close pair (every row of a tight cluster, where the log-mean
#: is near 0) are recomputed in float64 on the host and keep their float64 log-sums. Rows without one stay on
#: the kernels (float32 weights, a float32 log-sum m + log(s) near log N), but every pair of theirs has
#: -t d2 <= -t/8 (1 - |g| >= 1/16, or a relative distance >= 1/16), so where they weigh in the log-mean is not
#: near 0 and the relative term holds their error (5u relative measured, on the last case). Before the fix,
#: with 1/pairs applied after float32 roundings near log(pairs) or 1, the first case was off by 8.6e4u
#: relative (uniformity_loss, 0.11u absolute), 5.2e3u (neuron_uniformity) and 1.6e3u (pole_softmin), and
#: energy_many's means by 4u to 15u of themselves.
TRITON_LOG_MEAN_ABS = 1e-12
#: (N, r, clusters, seed) as tests/test_numerics.py's CLUSTERS, smaller under the interpreter.
TRITON_CLUSTERS = [(64, 1e-3, 1, 0), (96, 1e-2, 1, 1), (80, 3e-3, 3, 2), (64, 1.0, 1, 3)] + (
    [(1024, 1e-3, 1, 4), (2048, 3e-3, 2, 5)] if ON_GPU else [])


@pytest.mark.parametrize("n,r,clusters,seed", TRITON_CLUSTERS)
def test_float32_log_mean_of_clustered_features(n, r, clusters, seed):
    """Issue 22 on the Triton backend: float32 log-means near 0 (clustered features) against
    ``log(mean(exp(-t d2)))`` in float64, with 1/pairs folded in before the log: uniformity_loss, the neuron
    uniformity regularizer, the MHC soft distance to a pole in the cluster, energy_many's Gaussian means (the
    ragged launch, which subtracted log(pairs) from float32 log-sums) and the "uniformity" preset's per-layer
    values (hidden layers through energy_many)."""
    x, centers = clustered_rows(n, r, clusters, seed)
    x = x.to(DEVICE)
    x64 = x.cpu().double()
    tri = lambda m: torch.triu_indices(m, m, offset=1)  # noqa: E731
    check_log_mean(hsu_kernels.uniformity_loss(x, backend="triton").cpu(), log_mean64(torch.pdist(x64) ** 2, 2.0),
                   TRITON_LOG_MEAN_ABS, "uniformity_loss")
    iu = tri(n)
    neuron = log_mean64(unit_d2(x64, x64)[iu[0], iu[1]], 2.0)
    check_log_mean(hsu_kernels.regularizers.neuron_uniformity(x, backend="triton").cpu(), neuron,
                   TRITON_LOG_MEAN_ABS, "neuron_uniformity")
    f = x64 / ((x64 * x64).sum(-1, keepdim=True) + 1e-4).sqrt()  # the MHC neurons are normalized twice
    pole = centers[:1] * 3.0
    soft = hsu_kernels.regularizers.pole_softmin(x, pole.float().to(DEVICE), backend="triton")[0]
    check_log_mean(soft.cpu(), log_mean64(unit_d2(pole, f)[0], 10.0), TRITON_LOG_MEAN_ABS, "pole_softmin",
                   scale=-1 / 10.0)
    half = x[: n // 2]
    iu2 = tri(n // 2)
    truths = [neuron, log_mean64(unit_d2(x64[: n // 2], x64[: n // 2])[iu2[0], iu2[1]], 2.0)]
    e = hsu_kernels.energy_many([x, half], "gaussian", backend="triton").cpu()
    for k, truth in enumerate(truths):  # the means themselves, near 1: the log-mean's error and one rounding
        bound = math.exp(truth) * (LOG_MEAN_REL * abs(truth) + TRITON_LOG_MEAN_ABS + U)
        assert abs(float(e[k]) - math.exp(truth)) <= bound, f"energy_many[{k}]: {float(e[k])!r} vs {math.exp(truth)!r}"
    model = torch.nn.Sequential(torch.nn.Linear(128, n), torch.nn.Linear(n, n // 2), torch.nn.Linear(n // 2, 3))
    with torch.no_grad():
        model[0].weight.copy_(x.cpu())
        model[1].weight.copy_(clustered_rows(n // 2, r, clusters, seed + 100, d=n)[0])
    model = model.to(DEVICE)
    values = hsu_kernels.MHERegularizer(model, method="uniformity", half_space=False, backend="triton").layer_values()
    for layer, value in list(zip(model, values.values()))[:2]:  # the hidden layers: one ragged launch
        w = layer.weight.detach().cpu().double()
        iw = tri(w.shape[0])
        check_log_mean(value.cpu(), log_mean64(unit_d2(w, w)[iw[0], iw[1]], 2.0), TRITON_LOG_MEAN_ABS,
                       f"uniformity preset, layer {tuple(w.shape)}")


# ----------------------------------------------------------------------------------------------------
# Half precision, tf32, determinism, errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,s,d", [("riesz", 1.0, 64), ("angular", 1.0, 300), ("log", 0.0, 3)])
def test_half_inputs(dtype, kind, s, d):
    """16-bit inputs, fp32 accumulation. Yardstick: the reference computed in the same 16-bit dtype (which
    rounds every cosine to 8 or 11 bits); the kernel must be within 2x of that error. Its energy is in fact
    about as accurate as float32 (products of 16-bit numbers are exact in fp32); its gradient carries the
    rounding of phi' to bf16 and of the output to the input dtype."""
    w = _rand((2, 41, d), 90 + d, dtype)
    p = make_params(kind, s, half_space=True)
    check_energy(w, p, f"{dtype} {kind} D={d}")
    e, _ = ht.energy_grad(w, p)
    e64, _ = _ref_energy_grad(w, p, torch.float64)
    # The energy from the exactly-representable 16-bit inputs: float32-level accuracy.
    torch.testing.assert_close(e.double(), e64, rtol=2e-5, atol=0)


@pytest.mark.parametrize("d", [64, 300])
def test_tf32_precision(d):
    """precision='tf32' (tensor-core products, 10-bit mantissas): within 1e-2 relative of the reference on
    random rows; 'ieee' is the float32 bound above. (The interpreter computes tf32 products in fp32.)"""
    w = _rand((1, 50, d), 123 + d)
    p = make_params("riesz", 1.0)
    e, g = ht.energy_grad(w, p, precision="tf32")
    e64, g64 = _ref_energy_grad(w, p, torch.float64)
    torch.testing.assert_close(e.double(), e64, rtol=1e-2, atol=0)
    torch.testing.assert_close(g.double(), g64, rtol=0, atol=1e-2 * g64.abs().max().item())


@pytest.mark.parametrize("d", [5, 300])
def test_deterministic(d):
    w = _rand((2, 45, d), 77 + d)
    p = make_params("angular", 2.0, half_space=True)
    e1, g1 = ht.energy_grad(w, p)
    e2, g2 = ht.energy_grad(w, p)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)


def test_errors():
    p = make_params("riesz", 1.0)
    with pytest.raises(TypeError, match="float64"):
        ht.energy_grad(_rand((1, 4, 3), 0, torch.float64), p)
    with pytest.raises(ValueError, match="precision"):
        ht.energy_grad(_rand((1, 4, 3), 0), p, precision="fp8")
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        ht.energy_grad(_rand((4, 3), 0), p)
    with pytest.raises(TypeError, match="dtype"):
        ht.cross_energy_grad(_rand((1, 4, 3), 0), _rand((1, 4, 3), 0, torch.bfloat16), p)
    with pytest.raises(ValueError, match="at least one"):
        ht.energy_many_grad([], p)
    with pytest.raises(TypeError, match="float64"):
        hsu_kernels.energy(_rand((4, 3), 0, torch.float64), backend="triton")


#: A kind code that no record of the table has (its codes are 0 .. len - 1).
UNKNOWN_CODE = len(KIND_TABLE)


@dataclasses.dataclass(frozen=True)
class _UnknownKind(EnergyParams):
    """Riesz parameters whose kind code is :data:`UNKNOWN_CODE`: the launcher reads the record's flags (a copy of
    the Riesz record under that code), the kernels only see the code."""

    @property
    def spec(self):
        return dataclasses.replace(kind_by_name("riesz"), name="unknown", code=UNKNOWN_CODE)

    @property
    def code(self) -> int:
        return UNKNOWN_CODE


def _messages(exc: BaseException) -> str:
    """The messages of ``exc`` and of the exceptions it was raised from (a GPU compile's CompilationError names
    the kernel's line; the assertion's message is in its cause)."""
    out = []
    while exc is not None and len(out) < 10:
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


@pytest.mark.parametrize("path", ["fused", "strip"])
@pytest.mark.parametrize("norm", [True, False])
def test_unknown_kind_code_fails_the_launch(monkeypatch, path, norm):
    """A kind code without a branch in the kernels (every switch on KIND ends in a compile-time assertion, never
    in another kind's formula) fails the launch with a message naming the code, and returns no number."""
    if path == "strip":
        monkeypatch.setattr(launch, "FUSED_MAX_D", 0)
    p = _UnknownKind(**dataclasses.asdict(make_params("riesz", 1.0, half_space=True, normalize=norm)))
    assert p.code == UNKNOWN_CODE and UNKNOWN_CODE not in KIND_CODE.values()
    w = _rand((1, 6, 5), 5)
    with pytest.raises(Exception) as info:
        ht.energy_grad(w, p)
    text = _messages(info.value)
    assert f"unknown kind code KIND={UNKNOWN_CODE}" in text and "_phi_x" in text, text


def test_sanity_values():
    """docs/spec.md §7: random near-orthogonal neurons in high dimension (mean over pairs)."""
    w = _rand((64, 256), 99)
    expected = {"0": -0.693, "1": 0.707, "2": 0.5, "a0": 0.693, "a1": 2.0, "a2": 4.0}
    for power, value in expected.items():
        got = hsu_kernels.energy(w, power=power, backend="triton").item()
        assert abs(got - value) < 0.05 * abs(value), (power, got, value)


#: (KIND, NORM) of every launch the pruners distinguish: the angle kinds are always normalized.
PRUNE_VARIANTS = [(k.code, norm) for k in KIND_TABLE for norm in ((True,) if k.angle else (True, False))]
#: The (KIND, NORM, mode, BLOCK_D) left with one config (for one batch layout at least): the table's other
#: configs spill for that launch even with 255 registers (configs.FUSED_SPILLS; bench/results/triton-ptxas-*).
#: The angular kind's uniform batch at BLOCK_D 128 in ieee (16 x 16, 8 warps, capped at 255, is left; five
#: other tiles spilled), the angular log kind's uniform batch at BLOCK_D 256 in tf32 (16 x 16, BLOCK_K 64).
ONE_CONFIG = {(KIND_CODE["angular"], True, "ieee", 128), (KIND_CODE["angular_log"], True, "tf32", 256)}


def test_gpu_config_pruning():
    """For every kind, padded D and product mode the pruner keeps the configs of ``FUSED_TABLE`` less those
    ``FUSED_SPILLS`` leaves out for that kind (what tools/triton_aot.py compiles without spills), in the table's
    order, at least two where the table has them (the autotuner has a choice) and never none; each in the
    autotuning list. The same for the coefficient kernel (``STRIP_TABLE``, ``STRIP_SPILLS``) and for the GEMM
    kernel (``GEMM_TABLE``, the same for every kind)."""
    import triton.language as tl

    from hsu_kernels.triton import configs as tables
    from hsu_kernels.triton import kernels

    fkey = kernels._key  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages[, maxnreg]), as the tables write a config

    def named(table, key, kind, norm, uniform):  # a launch named by an exclusion or lift table's entry
        return any(v in ((kind, norm), (kind, norm, uniform)) for v in table.get(key, ()))

    configs = kernels._fused_configs(interpret=False)
    strip = kernels._strip_configs(interpret=False)
    assert len({fkey(c) for c in configs}) == len(configs)
    modes = {"ieee": ("ieee", tl.float32), "tf32": ("tf32", tl.float32), "bf16": ("tf32", tl.bfloat16)}
    for (kind, norm), uniform in itertools.product(PRUNE_VARIANTS, (False, True)):
        for mode, (prec, cdt) in modes.items():
            for bd in (16, 32, 64, 128, 256):
                kept = kernels._prune_fused(configs, {}, BLOCK_D=bd, PREC=prec, C_DTYPE=cdt, KIND=kind, NORM=norm,
                                            UNIFORM=uniform)
                table = kernels.FUSED_TABLE[mode][bd]
                want = [r + ((255,) if named(tables.FUSED_LIFT, (mode, bd, r), kind, norm, uniform) else ())
                        for r in table if not named(kernels.FUSED_SPILLS, (mode, bd, r), kind, norm, uniform)]
                assert [fkey(c) for c in kept] == want, (kind, norm, uniform, mode, bd)
                # two configs at least (a choice for the autotuner), but where FUSED_SPILLS says why not
                assert len(kept) >= (1 if (kind, norm, mode, bd) in ONE_CONFIG else 2), (kind, norm, uniform, mode,
                                                                                          bd)
                for c in kept:
                    assert c.kwargs["BLOCK_K"] >= bd or bd % c.kwargs["BLOCK_K"] == 0, (mode, bd, fkey(c))
            coef = kernels._prune_strip(strip, {}, PREC=prec, KIND=kind, NORM=norm)
            want = [r + ((255,) if named(tables.STRIP_LIFT, (prec, r), kind, norm, False) else ())
                    for r in kernels.STRIP_TABLE[prec] if not named(kernels.STRIP_SPILLS, (prec, r), kind, norm, False)]
            assert [fkey(c) for c in coef] == want and len(coef) >= 2, (kind, norm, mode)
            gemm = kernels._prune_gemm(kernels._gemm_configs(interpret=False), {}, PREC2=prec, C_DTYPE=cdt)
            assert [kernels._key(c, "BLOCK_D") for c in gemm] == list(kernels.GEMM_TABLE[mode]) and len(gemm) >= 2
    # every exclusion names a config of its table and a launch that exists
    def launches_ok(launches):  # (KIND, NORM) for both batch layouts, or (KIND, NORM, UNIFORM)
        return all(tuple(v[:2]) in PRUNE_VARIANTS and len(v) in (2, 3) for v in launches)

    assert tables.LIFT_MAXNREG == 255
    for table in (kernels.FUSED_SPILLS, tables.FUSED_LIFT):
        for (mode, bd, row), launches in table.items():
            assert row in kernels.FUSED_TABLE[mode][bd] and launches_ok(launches), (mode, bd, row)
    for table in (kernels.STRIP_SPILLS, tables.STRIP_LIFT):
        for (prec, row), launches in table.items():
            assert row in kernels.STRIP_TABLE[prec] and launches_ok(launches), (prec, row)
    for (mode, bd, row), launches in tables.FUSED_LIFT.items():  # a launch is lifted or left out, not both
        assert not set(launches) & set(kernels.FUSED_SPILLS.get((mode, bd, row), ())), (mode, bd, row)
    # the capped forms are in the autotuning list, and only those
    capped = {fkey(c) for c in configs if c.maxnreg}
    assert capped == {row + (255,) for (_, _, row) in tables.FUSED_LIFT}
    # a pinned list (one config outside the table) is left alone
    odd = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 256}, num_warps=2, num_stages=1)]
    riesz = KIND_CODE["riesz"]
    assert kernels._prune_fused(odd, {}, BLOCK_D=64, PREC="ieee", C_DTYPE=tl.float32, KIND=riesz, NORM=True) == odd
    assert kernels._prune_strip(odd, {}, PREC="ieee", KIND=riesz, NORM=True) == odd
    # a kind the exclusion and register-cap tables do not name (a new one) gets every config of the tables,
    # uncapped, without an edit of configs.py
    for mode, (prec, cdt) in modes.items():
        for bd, table in kernels.FUSED_TABLE[mode].items():
            kept = kernels._prune_fused(configs, {}, BLOCK_D=bd, PREC=prec, C_DTYPE=cdt, KIND=UNKNOWN_CODE, NORM=True)
            assert [fkey(c) for c in kept] == list(table), (mode, bd)
        kept = kernels._prune_strip(strip, {}, PREC=prec, KIND=UNKNOWN_CODE, NORM=False)
        assert [fkey(c) for c in kept] == list(kernels.STRIP_TABLE[prec]), mode
    # the kind is needed: a launch without it would get another kind's configs
    with pytest.raises(ValueError, match="KIND"):
        kernels._prune_fused(configs, {}, BLOCK_D=64, PREC="ieee", C_DTYPE=tl.float32, NORM=True)


@pytest.mark.skipif(not INTERPRET, reason="on a GPU every test above already compiles the kernels for real")
def test_kernels_compile_for_gpu():
    """Under the interpreter nothing is compiled; this lowers the kernels through Triton's GPU passes and
    the bundled ptxas for sm_90 (no GPU needed), catching what the lenient interpreter accepts, and fails
    if one of them spills registers (the full check of every config is ``tools/triton_aot.py --fail-on-spill``)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "triton_aot.py")
    proc = subprocess.run([sys.executable, tool, "--arch", "90", "--quick", "--fail-on-spill"],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stdout + proc.stderr and "not found" in proc.stdout + proc.stderr:
        pytest.skip("ptxas is not available to compile for sm_90")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_non_contiguous_inputs():
    """Transposed and sliced views: the backend copies to contiguous rows, the gradient keeps the view's shape."""
    w = _rand((40, 17), 8).t().requires_grad_(True)  # [17, 40], non-contiguous
    e = hsu_kernels.energy(w, "riesz", 2.0, backend="triton")
    (g,) = torch.autograd.grad(e, w)
    wd = w.detach().double().requires_grad_(True)
    ref = reference.energy(wd, make_params("riesz", 2.0))
    (gd,) = torch.autograd.grad(ref, wd)
    torch.testing.assert_close(e.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g.double(), gd, rtol=0, atol=1e-4 * gd.abs().max().item())
    ws = [_rand((30, 12), 9)[::2], _rand((8, 50), 10)[:, 5:]]
    e2 = hsu_kernels.energy_many(ws, backend="triton")
    for k, wk in enumerate(ws):
        torch.testing.assert_close(e2[k].double(), reference.energy(wk.double(), make_params("riesz", 1.0)),
                                   rtol=1e-5, atol=0)


class _RecordingKernel:
    """Stands for an autotuned kernel: records each launch's grid (for ``BLOCK_M = 16``), positional and
    keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        def launch_(*args, **kwargs):
            self.calls.append(((grid({"BLOCK_M": 16, "BLOCK_D": 64}) if callable(grid) else grid), args, kwargs))
        return launch_


@pytest.mark.parametrize("dtype,d", [(torch.float16, 16), (torch.float32, 40), (torch.float32, 48),
                                     (torch.bfloat16, 3)])
def test_launches_are_the_compiled_kernels(monkeypatch, dtype, d):
    """What a launch passes is what ``tools/triton_aot.py`` compiles (one kernel per config and compiled-in
    flags): the kind flags beyond KIND and NORM as plain ints, the uniform layout's scalar sizes only for
    D % 16 == 0, 16-byte-aligned float32 or bfloat16 buffers (float16 runs the float32 kernels in tf32 mode; a view
    that starts off a 16-byte boundary is copied). The kernel is recorded, not run."""
    rec = _RecordingKernel()
    monkeypatch.setattr(tk, "fused_kernel", rec)
    base = torch.zeros(1 + 2 * 5 * d, dtype=dtype, device=DEVICE)
    w = base[1:].view(2, 5, d)  # starts 2 bytes (4 for float32) into its buffer
    assert w.data_ptr() % 16 != 0
    launch.run(w.reshape(-1), w.reshape(-1), launch._Layout([5, 5], [5, 5], [d, d], w.device, uniform=True),
               make_params("riesz", 1.0, half_space=True), True)
    ((_, args, kwargs),) = rec.calls
    ptrs = [a for a in args if isinstance(a, torch.Tensor)]
    assert len(ptrs) == 6 and all(t.data_ptr() % 16 == 0 for t in ptrs)
    assert args[0].dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert set(kwargs) == {"KIND", "NORM", "UNIFORM", "PREC", "PREC2", "C_DTYPE", "UPCAST", "EPI", "BLOCK_D"}
    assert kwargs["UNIFORM"] == (d % 16 == 0) and args[8:11] == ((5, 5, d) if d % 16 == 0 else (1, 1, 1))
    if dtype == torch.float16:
        assert kwargs["PREC"] == kwargs["PREC2"] == "tf32"
    ints = [a for a in args if not isinstance(a, (torch.Tensor, float))]
    assert all(type(a) is int for a in ints)  # no bool: Triton types a bool as i1, another kernel
    assert args[18:22] == (1, 1, tk.pow_mode(0.5), 1)  # hs, self_pairs, the exponent mode, the diagonal
    assert all(type(a) is float for a in args[11:18])  # s, t, eps_norm, eps_ang, the scales, tau


def test_misaligned_views_match_their_copies():
    """A view starting off a 16-byte boundary gives bitwise the result of its aligned copy (it is copied)."""
    p = make_params("angular", 1.0, half_space=True)
    w = _rand((2, 9, 3), 71)
    base = torch.zeros(1 + w.numel(), device=DEVICE)
    base[1:] = w.reshape(-1)
    view = base[1:].view(2, 9, 3)
    for a, b in zip(ht.energy_grad(view, p), ht.energy_grad(w.clone(), p)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------
# Every GPU autotuning config, pinned one at a time. On a GPU the autotuner picks among these lists; under
# the interpreter only one small config exists, so each is forced here to run its masking and indexing
# (tails of its tiles in rows, columns and D; a 2-row matrix; ragged groups; every kind; half-space).
# ----------------------------------------------------------------------------------------------------

FUSED_CONFIGS = tk._fused_configs(interpret=False)
STRIP_CONFIGS = tk._strip_configs(interpret=False)
GEMM_CONFIGS = tk._gemm_configs(interpret=False)

#: (kind, s, half_space, normalize): every kind, both half-space settings, and the un-normalized form. The
#: tile code is the same for every kind, so each config runs a rotating subset of these (every case runs
#: with several configs of each kernel).
CONFIG_CASES = [("riesz", 1.0, True, True), ("log", 0.0, False, True), ("angular", 1.5, False, True),
                ("angular_log", 0.0, True, True), ("gaussian", 0.0, True, True), ("riesz", 2.5, False, False)]


def _cases(i: int, count: int):
    """``count`` of :data:`CONFIG_CASES` for the ``i``-th config, spread so that consecutive configs differ."""
    return [CONFIG_CASES[(i + j * len(CONFIG_CASES) // count) % len(CONFIG_CASES)] for j in range(count)]


def _cfg_id(c) -> str:
    return ("-".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in c.kwargs.items()) + f"-w{c.num_warps}s{c.num_stages}"
            + (f"-r{c.maxnreg}" if c.maxnreg else ""))


def _pin(monkeypatch, kernel, config):
    """The autotuner of ``kernel`` runs ``config`` and nothing else (with one config it neither prunes nor
    benchmarks), until the test ends."""
    assert isinstance(kernel, triton.runtime.Autotuner), type(kernel)
    monkeypatch.setattr(kernel, "configs", [config])


def _selectable(config, block_d: int, kind: int, norm: bool = True) -> bool:
    """Whether the launcher's pruner keeps ``config`` for float32 rows padded to ``block_d`` (exact products,
    the default below D = 128) and the kind code ``kind``. On a GPU a config outside that set may not fit the
    SM and is never launched; the interpreter runs it anyway (more masking cases for free)."""
    import triton.language as tl

    kept = tk._prune_fused(FUSED_CONFIGS, {}, BLOCK_D=block_d, PREC="ieee", C_DTYPE=tl.float32, KIND=kind,
                           NORM=norm)
    return not ON_GPU or any(c is config for c in kept)


@contextlib.contextmanager
def _fits_this_gpu(what: str):
    """A pinned config that needs more shared memory than this GPU has is skipped with the reason (the
    autotuner drops such configs as well); the interpreter has no such limit."""
    try:
        yield
    except triton.runtime.errors.OutOfResources as exc:
        pytest.skip(f"{what} does not fit this GPU: {exc}")


def _check_many(ws, p, name):
    """``energy_many_grad`` of ``ws`` (one ragged launch per group) against each matrix's float64 reference."""
    e, grads = launch.energy_many_grad(ws, p)
    for k, w in enumerate(ws):
        compare_energy(e[k:k + 1], grads[k][None], w[None], p, f"{name} [{k}] {tuple(w.shape)}")


def _case_inputs(shapes, seed, norm):
    # un-normalized: rows of norm ~1 keep the distance kinds in their well-conditioned range
    return [_rand(shape, seed + i) * (1.0 if norm else shape[1] ** -0.5) for i, shape in enumerate(shapes)]


def test_config_lists_are_covered():
    """The lists the tests below pin are the ones the GPU autotuner uses (and are not empty)."""
    def keys(configs):
        return [(sorted(c.kwargs.items()), c.num_warps, c.num_stages) for c in configs]

    assert FUSED_CONFIGS and STRIP_CONFIGS and GEMM_CONFIGS
    assert keys(tk.fused_kernel.configs) == keys(tk._fused_configs())
    assert keys(tk.coef_kernel.configs) == keys(tk._strip_configs())
    assert keys(tk.gemm_kernel.configs) == keys(tk._gemm_configs())
    if ON_GPU:
        assert keys(tk.fused_kernel.configs) == keys(FUSED_CONFIGS)
        assert keys(tk.coef_kernel.configs) == keys(STRIP_CONFIGS)
        assert keys(tk.gemm_kernel.configs) == keys(GEMM_CONFIGS)


@pytest.mark.parametrize("config", FUSED_CONFIGS, ids=_cfg_id)
def test_every_fused_config(monkeypatch, config):
    """The fused kernel with each config: ragged groups at BLOCK_D = 16 (three kinds per config), a uniform
    batch at BLOCK_D = 64 and a cross energy at BLOCK_D = 256 (on a GPU only where the pruner keeps it)."""
    _pin(monkeypatch, tk.fused_kernel, config)
    with _fits_this_gpu(f"fused config {_cfg_id(config)}"):
        _fused_config_cases(config)


def _fused_config_cases(config):
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    idx = FUSED_CONFIGS.index(config)
    seed = 3000 + 100 * idx
    for i, (kind, s, hs, norm) in enumerate(_cases(idx, 3)):
        p = make_params(kind, s, half_space=hs, normalize=norm)
        # one ragged launch at BLOCK_D = 16: a row tail and a column tail of this tile, N = 2, D = 2 and 5
        ws = _case_inputs([(bm + 3, 12), (2, 5), (bn + 1, 2)], seed + 10 * i, norm)
        _check_many(ws, p, f"fused {_cfg_id(config)} {kind} s={s} hs={hs} norm={norm}")
    if _selectable(config, 64, KIND_CODE["angular"]):
        p = make_params("angular", 1.0, half_space=True)
        w = _rand((3, bm + 1, 48), seed + 80)  # uniform batch (scalar sizes: D % 16 == 0), BLOCK_D = 64
        compare_energy(*ht.energy_grad(w, p), w, p, f"fused {_cfg_id(config)} batch D=48")
    if _selectable(config, 256, KIND_CODE["riesz"]):
        x, y = _rand((2, 7, 200), seed + 81), _rand((2, bn + 3, 200), seed + 82)  # cross, BLOCK_D = 256
        p = make_params("riesz", 1.0, half_space=True)
        compare_cross(*ht.cross_energy_grad(x, y, p), x, y, p, f"fused {_cfg_id(config)} cross D=200")


@pytest.mark.parametrize("i", range(max(len(STRIP_CONFIGS), len(GEMM_CONFIGS))),
                         ids=lambda i: f"coef-{_cfg_id(STRIP_CONFIGS[i % len(STRIP_CONFIGS)])}"
                                       f"-gemm-{_cfg_id(GEMM_CONFIGS[i % len(GEMM_CONFIGS)])}")
def test_every_strip_config(monkeypatch, i):
    """The strip path's coefficient and GEMM kernels, each config at least once (in pairs)."""
    coef, gemm = STRIP_CONFIGS[i % len(STRIP_CONFIGS)], GEMM_CONFIGS[i % len(GEMM_CONFIGS)]
    _pin(monkeypatch, tk.coef_kernel, coef)
    _pin(monkeypatch, tk.gemm_kernel, gemm)
    monkeypatch.setattr(launch, "FUSED_MAX_D", 0)  # every D through the strip path (one ragged group)
    bm, bn, bk = coef.kwargs["BLOCK_M"], coef.kwargs["BLOCK_N"], coef.kwargs["BLOCK_K"]
    gm, gd = gemm.kwargs["BLOCK_M"], gemm.kwargs["BLOCK_D"]
    what = f"strip coef {_cfg_id(coef)} gemm {_cfg_id(gemm)}"
    with _fits_this_gpu(what):
        for j, (kind, s, hs, norm) in enumerate(_cases(i, 2)):
            p = make_params(kind, s, half_space=hs, normalize=norm)
            # tails of the coefficient tile (rows, columns, D chunks) and of the GEMM tile (rows, D)
            ws = _case_inputs([(max(bm, gm) + 3, bk + 5), (2, 3), (bn + 1, gd + 7)], 5000 + 100 * i + 10 * j, norm)
            _check_many(ws, p, f"{what} {kind} s={s} hs={hs} norm={norm}")


# ----------------------------------------------------------------------------------------------------
# Large batches: the matrix index lives on the grid's y axis (at most 65,535), so launches are chunked
# ----------------------------------------------------------------------------------------------------


def test_batch_chunks_and_grid_limits():
    assert launch.batch_chunks(70_000) == [(0, 65_535), (65_535, 70_000)]
    assert launch.batch_chunks(65_535) == [(0, 65_535)]
    assert launch.batch_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert launch.grid_of(3, 65_535) == (3, 65_535)
    assert launch.grid_of(2**31 - 1, 1, 1) == (2**31 - 1, 1, 1)
    with pytest.raises(ValueError, match="y axis"):
        launch.grid_of(3, 65_536)
    with pytest.raises(ValueError, match="z axis"):
        launch.grid_of(3, 1, 65_536)
    with pytest.raises(ValueError, match="x limit"):
        launch.grid_of(2**31, 1)


@pytest.mark.parametrize("strip,d", [(False, 3), (False, 16), (True, 3)])
def test_batch_over_grid_limit_is_chunked(monkeypatch, strip, d):
    """B = 70,000 > 65,535: every launch's grid fits and the chunks cover each matrix once. The fused kernel
    gets the whole buffers and the first matrix of its chunk (``k_base``), never a slice that could start
    off a 16-byte boundary (the kernels are compiled for aligned pointers only); D = 3 reads the table (the
    uniform layout needs D % 16 == 0), D = 16 the scalar sizes. The kernels are recorded, not run."""
    rec = {name: _RecordingKernel() for name in ("fused_kernel", "coef_kernel", "gemm_kernel", "epilogue_kernel")}
    for name, fake in rec.items():
        monkeypatch.setattr(tk, name, fake)
    if strip:
        monkeypatch.setattr(launch, "FUSED_MAX_D", 0)
    b, n = 70_000, 2
    w = torch.zeros(b, n, d, device=DEVICE)
    launch.energy_grad(w, make_params("riesz", 1.0))
    names = ("coef_kernel", "gemm_kernel", "epilogue_kernel") if strip else ("fused_kernel",)
    for name in names:
        calls = rec[name].calls
        assert [c[0][-1] for c in calls] == [65_535, 4_465], (name, [c[0] for c in calls])
        assert all(v <= launch.MAX_GRID_YZ for c in calls for v in c[0][1:])
        if name != "fused_kernel":
            k_arg = {"coef_kernel": 7, "gemm_kernel": 4, "epilogue_kernel": 6}[name]
            assert [c[1][k_arg] for c in calls] == [65_535, 4_465], name  # K: the matrices of this launch
    if not strip:
        (_, a0, _), (_, a1, _) = rec["fused_kernel"].calls
        assert (a0[6], a0[7], a1[6], a1[7]) == (b, 0, b, 65_535)  # K (the whole batch) and k_base
        assert all(u is v for u, v in zip(a0[:6], a1[:6]))  # the same buffers and table, not slices
        assert all(t.data_ptr() % 16 == 0 for t in a0[:6])
        assert a0[8:11] == ((n, n, d) if d % 16 == 0 else (1, 1, 1))  # scalar sizes: the uniform layout
        assert a0[5].numel() == (1 if d % 16 == 0 else 7 * b)  # its placeholder, or the [7, K] table
    else:  # ragged tables: the chunk's columns of the [7, K] table, offsets still absolute
        tab1 = rec["coef_kernel"].calls[1][1][6]
        assert tuple(tab1.shape) == (7, 4_465) and int(tab1[3, 0]) == 65_535 * n * d


@pytest.mark.parametrize("case", ["uniform", "uniform_d6", "cross", "ragged", "strip"])
def test_chunked_launches_match(monkeypatch, case):
    """With the chunk limit lowered to 2 matrices per launch, the kernels give bitwise the results of one
    launch (a uniform batch by its scalar sizes, D = 16, and by the table, D = 6; cross energies; ragged
    tables; the strip path)."""
    p = make_params("angular", 1.0, half_space=True)

    def run():
        if case in ("uniform", "uniform_d6", "strip"):
            return ht.energy_grad(_rand((5, 9, {"strip": 300, "uniform": 16}.get(case, 6)), 61), p)
        if case == "cross":
            return ht.cross_energy_grad(_rand((5, 4, 6), 62), _rand((5, 11, 6), 63), p)
        return launch.energy_many_grad([_rand((3 + k, 5 + k), 64 + k) for k in range(5)], p)

    whole = run()
    monkeypatch.setattr(launch, "MAX_MATRICES_PER_LAUNCH", 2)
    chunked = run()
    for a, b in zip(whole, chunked):
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert torch.equal(u, v)


# ----------------------------------------------------------------------------------------------------
# Numerics without cliffs (issue 13): the cases of tests/test_numerics.py on the Triton backend (that file's
# CPU process has no interpreter), float32 inputs (the backend refuses float64)
# ----------------------------------------------------------------------------------------------------

ISSUE13_CASES = (
    [("duplicates_of_norm_100", (d, kind, s, hs)) for d in (3, 40, 200)
     for kind, s, hs in (("riesz", 1.0, False), ("riesz", 2.0, True), ("log", 0.0, False), ("angular", 1.0, True),
                         ("angular_log", 0.0, False), ("gaussian", 0.0, True))]
    + [("near_duplicates", (d,)) for d in (3, 40)]
    + [("uniformity_of_unnormalized_float32_features", (sc,)) for sc in (1.0, 10.0, 100.0, 1e3)]
    + [("uniformity_gradient_of_collapsed_features", ())]
    + [("rows_whose_square_overflows", (d, nm)) for d in (5, 40) for nm in (1e20, 1e30)]
    + [("unnormalized_float32_rows_beyond_float32_distances", (d, nm)) for d in (3, 40) for nm in (1.5e20, 1e25)]
    + [("mean_of_float32_sums_beyond_float32", (c,)) for c in ("energy", "grad", "norm")]
    + [("half_space_raw_close_pair_float32", (d,)) for d in (1, 3)]
    + [("float32_accumulators_beyond_float32", (d,)) for d in (33, 64)]
    + [("uniformity_of_nearly_tied_pairs_at_large_scale", (d,)) for d in (1, 3, 40)]
    + [("angular_s50_float32", ()), ("coincident_rows_normalize_false", ())]
)


@pytest.mark.skipif(ON_GPU, reason="the interpreter's CPU tensors are the inputs of tests/test_numerics.py")
@pytest.mark.parametrize("name,args", ISSUE13_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_issue13_numerics(name, args):
    """Duplicates and near duplicates of norm 10-100, Gaussian uniformity of features of norm up to 1e3 and
    of collapsed features, rows whose |w|^2 overflows float32, angular s = 50, coincident rows."""
    import test_numerics as numerics

    renamed = {"near_duplicates": "float32_near_duplicates", "duplicates_of_norm_100": "float32_duplicates_of_norm_100",
               "rows_whose_square_overflows": "float32_rows_whose_square_overflows"}
    getattr(numerics, f"test_{renamed.get(name, name)}")("triton", *args)


@pytest.mark.skipif(ON_GPU, reason="the interpreter's CPU tensors are the inputs of tests/test_compile.py")
def test_compiled_mean_whose_sum_overflows_float32():
    """Issue 22 on the Triton backend: compiled (dynamic=True) means whose float32 sum overflows agree with eager,
    one graph for every N (energy_many's ragged launch takes the pair counts as SymInts)."""
    import test_compile

    test_compile.test_mean_whose_sum_overflows_float32("triton")


@pytest.mark.parametrize("norm", [1e14, 1e20, 1e-30])
@pytest.mark.parametrize("eps_norm", [1e-4, 0.0])
def test_extreme_row_scales(norm, eps_norm):
    """Rows of norm 1e14-1e20 (``r^3`` underflows float32, ``|w|^2`` overflows it) and 1e-30 (``|w|^2``
    underflows; with ``eps_norm = 0`` the rows are exact unit directions), next to rows of norm 1: the
    energy is the float64 reference's and so is the gradient (which scales as ``1/|w|``). Half-space only
    for the large norms: for tiny rows ``phi'(g) - phi'(-g)`` cancels to ~1e-28 in every row's gradient, below
    the reference's own float64 noise; and the angular half-space self pair at ``eps_norm = 0`` has no
    derivative (the reference's autograd gives NaN)."""
    w = _rand((1, 9, 5), 13)
    w[0, 2:5] *= norm
    hs = norm > 1
    for kind, s, hs in (("riesz", 1.0, hs), ("angular", 2.0, hs and eps_norm > 0), ("log", 0.0, False)):
        p = make_params(kind, s, half_space=hs, eps_norm=eps_norm)
        e, g = ht.energy_grad(w, p)
        e64, g64 = _ref_energy_grad(w, p, torch.float64)
        what = f"norm {norm:g} eps_norm {eps_norm} {kind}"
        assert torch.isfinite(e).all() and torch.isfinite(g).all(), what
        assert float((e.double() - e64).abs().max() / e64.abs().max()) <= 2e-6, what
        # per row: the rows' gradients differ in scale by the norm
        err = ((g.double() - g64).norm(dim=-1) / g64.norm(dim=-1)).max()
        assert float(err) <= 2e-5, f"{what}: gradient rows off by {float(err):.3g} relative"


def test_half_space_exact_antipodes_eps_norm_zero():
    """eps_norm = 0, half-space, w_j = -w_i: the pair (u_i, -u_j) coincides: +inf (finite without
    half-space)."""
    w = _rand((1, 5, 3), 4)
    w[0, 2] = -w[0, 0]
    assert hsu_kernels.energy(w, eps_norm=0.0, half_space=True, backend="triton") == float("inf")
    assert torch.isfinite(hsu_kernels.energy(w, eps_norm=0.0, backend="triton"))
