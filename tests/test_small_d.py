"""The D <= 4 CPU kernel (csrc/cpu/hsu_cpu_small.cpp) against a float64 oracle that is exact where the plain
reference is not, against today's general kernel on the same rows, and across thread counts.

The plain reference (hsu_kernels/reference.py) forms ``2 - 2g`` (or ``|x|^2 + |y|^2 - 2 x.y``), which loses
digits for nearly parallel rows, duplicates and (half-space) antipodes: exactly the inputs where this kernel
is meant to be precise. So the oracle here, :func:`precise_energy`, forms every squared distance from
coordinate differences in float64, ``2 - 2 g = |u_i - u_j|^2 + a_i + a_j`` with
``a_i = eps_norm / (|w_i|^2 + eps_norm)``, and every angle from the half-chord,
``theta = 2 asin(sqrt(d2) / 2)``, then lets autograd differentiate it, in row chunks (no N x N graph).
"""

import math

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext
from hsu_kernels.kinds import kind_by_name
from hsu_kernels.testing import FP32_FLOOR, check_against_reference, energy_and_grad, kind_cases, rand_rows, rel_err

pytestmark = pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")

#: every kind of the table the small-D engine takes (the log-sum kinds have their own engine)
KIND_S = [(k, s) for k, s in kind_cases(exponents=(0.5, 1.0, 2.0), general=(2.5, 3.5)) if not kind_by_name(k).logsum]


def _phi(d2m, d2p, kind, s, eps_ang):
    """phi of the pair whose squared chord is d2m (its antipodal image has d2p)."""
    if kind == "riesz":
        return d2m.pow(-s / 2)
    if kind == "log":
        return -torch.log(d2m)
    # the angle from the shorter of the two half-chords; the other branch gets a harmless stand-in so that
    # its (unused) derivative stays finite
    near = d2m <= d2p
    theta = torch.where(near, 2 * torch.asin(torch.sqrt(torch.where(near, d2m, 1.0)) / 2),
                        math.pi - 2 * torch.asin(torch.sqrt(torch.where(near, 1.0, d2p)) / 2))
    a = theta / math.pi + eps_ang
    if kind == "angular":
        return a.pow(-s)
    if kind == "angular_log":
        return -torch.log(a)
    raise AssertionError(f"no independent formula for kind={kind!r} in this test: add it to _phi")


def precise_energy(w, kind="riesz", s=1.0, half_space=False, normalize=True, eps_norm=1e-4, eps_ang=1e-4,
                   chunk=256):
    """(energy ``[B]``, gradient) of ``sum_{i<j}`` (half-space: of the 2N points), float64, from
    coordinate differences; ``w`` is ``[B, N, D]``."""
    w = w.detach().double().clone().requires_grad_(True)
    n = w.shape[1]
    total = torch.zeros(w.shape[0], dtype=torch.float64)
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        if normalize:
            n2 = (w * w).sum(-1) + eps_norm
            u, a = w / n2.sqrt()[..., None], eps_norm / n2
            aa = a[:, i0:i1, None] + a[:, None, :]
        else:
            u, aa = w, 0.0
        ui, uj = u[:, i0:i1, None, :], u[:, None, :, :]
        d2m = ((ui - uj) ** 2).sum(-1) + aa
        d2p = ((ui + uj) ** 2).sum(-1) + aa
        rows = torch.arange(i0, i1)[:, None]
        upper = torch.arange(n)[None, :] > rows
        d2m_s = torch.where(upper, d2m, 1.0)
        d2p_s = torch.where(upper, d2p, 1.0)
        e = torch.where(upper, _phi(d2m_s, d2p_s, kind, s, eps_ang), 0.0)
        if half_space:
            e = 2 * (e + torch.where(upper, _phi(d2p_s, d2m_s, kind, s, eps_ang), 0.0))
            diag = torch.arange(n)[None, :] == rows  # the pair (u_i, -u_i)
            dm, dp = torch.where(diag, d2p, 1.0), torch.where(diag, d2m, 1.0)
            e = e + torch.where(diag, _phi(dm, dp, kind, s, eps_ang), 0.0)
        part = e.sum((-1, -2))
        part.sum().backward()
        total += part.detach()
    return total, w.grad


def _kernel(w, **kw):
    e, g = energy_and_grad(lambda x: hk.energy(x, reduction="sum", backend="cpu", **kw), w)
    return e.double(), g.double()


def _general_kernel(w, **kw):
    """Today's general kernel (csrc/cpu/hsu_cpu.cpp) on the same rows: a zero coordinate appended makes
    D = 5, past the small-D kernel, and changes no norm, dot product or distance."""
    wp = torch.cat([w, torch.zeros_like(w[..., :1]).expand(*w.shape[:-1], 5 - w.shape[-1])], -1)
    e, g = _kernel(wp, **kw)
    return e, g[..., : w.shape[-1]]


def _check(w64, dtype, what, rtol64=1e-10, **kw):
    """The kernel in ``dtype`` against the oracle on the rows rounded to ``dtype``; returns the errors.

    float64: at most ``rtol64``. float32: at most 1.5 times the error of the general kernel on the same rows
    (no loss of accuracy), or a few float32 ulps where both are that good."""
    x = w64.to(dtype)
    e_ref, g_ref = precise_energy(x.double(), **kw)
    e, g = _kernel(x, **kw)
    assert torch.isfinite(e).all() and torch.isfinite(g).all(), f"{what}: not finite"
    errs = rel_err(e, e_ref), rel_err(g, g_ref)
    if dtype == torch.float64:
        tols = (rtol64, rtol64)
    else:
        # where the general kernel's result is not even finite (it forms |x|^2 + |y|^2 - 2 x.y), the floor
        e_old, g_old = (torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for v in _general_kernel(x, **kw))
        tols = tuple(max(1.5 * rel_err(old, ref), 2 * FP32_FLOOR) for old, ref in ((e_old, e_ref), (g_old, g_ref)))
    for err, tol, name in zip(errs, tols, ("energy", "grad")):
        assert err <= tol, f"{what} {dtype} {name}: error {err:.3g} > {tol:.3g}"
    return errs


def test_oracle_matches_the_reference():
    """The oracle is the energy of docs/spec.md: on well-separated rows it agrees with the plain reference."""
    for kind, s in KIND_S:
        for hs in (False, True):
            for norm in (True, False) if not kind_by_name(kind).angle else (True,):
                w = rand_rows(2, 9, 3)
                kw = dict(kind=kind, s=s, half_space=hs, normalize=norm)
                e_ref, g_ref = energy_and_grad(lambda x: hk.energy(x, reduction="sum", backend="reference", **kw), w)
                e, g = precise_energy(w, **kw)
                assert rel_err(e, e_ref) < 1e-12 and rel_err(g, g_ref) < 1e-11, (kind, s, hs, norm)


@pytest.mark.parametrize("kind,s", KIND_S)
def test_every_kind_and_flag(kind, s):
    """Every kind, half-space and not, normalized and not, float64 and float32, D = 1..4, N = 2, 3, 17, 130
    (one or two blocks of 64 with tails), batched and not."""
    for d in (1, 2, 3, 4):
        for hs in (False, True):
            for norm in (True, False) if not kind_by_name(kind).angle else (True,):
                b, n = ((0, 2), (2, 3), (0, 17), (2, 130))[(d + 2 * hs + norm) % 4]
                w = rand_rows(*((b, n, d) if b else (n, d)))
                if not norm:
                    w = w / math.sqrt(d)
                w3 = w if b else w[None]
                for dtype in (torch.float64, torch.float32):
                    _check(w3, dtype, f"{kind} s={s} D={d} hs={hs} norm={norm} B={b} N={n}", kind=kind, s=s,
                           half_space=hs, normalize=norm)


@pytest.mark.parametrize("n", [2, 3, 17, 130])
def test_every_size(n):
    for d in (1, 2, 3, 4):
        w = rand_rows(2, n, d)
        for kw in (dict(kind="riesz", s=1.0), dict(kind="angular", s=1.0, half_space=True),
                   dict(kind="log", normalize=False)):
            for dtype in (torch.float64, torch.float32):
                _check(w, dtype, f"N={n} D={d} {kw}", **kw)


def test_large_odd_n():
    """N = 4096 + 32: blocks of 256 and a tail, eight parts summed in order, batched. Held to today's general
    kernel (the plain reference cannot be run at this size in the test's time): float64 to 1e-9, float32 no
    worse than the general kernel in float32, both against the float64 result."""
    w = rand_rows(2, 4128, 3)
    for kw in (dict(kind="riesz", s=1.0), dict(kind="log", half_space=True), dict(kind="angular", s=1.0),
               dict(kind="riesz", s=2.0, normalize=False, half_space=True)):
        x = w if kw.get("normalize", True) else w / 3
        e64, g64 = _kernel(x, **kw)
        e_gen, g_gen = _general_kernel(x, **kw)
        assert rel_err(e64, e_gen) < 1e-9 and rel_err(g64, g_gen) < 1e-9, kw
        e32, g32 = _kernel(x.float(), **kw)
        e_ref, g_ref = _kernel(x.float().double(), **kw)
        e_old, g_old = _general_kernel(x.float(), **kw)
        assert rel_err(e32, e_ref) <= max(1.5 * rel_err(e_old, e_ref), 2 * FP32_FLOOR), kw
        assert rel_err(g32, g_ref) <= max(1.5 * rel_err(g_old, g_ref), 2 * FP32_FLOOR), kw


def _hard_rows(d, gen, extreme=True):
    """Nearly parallel rows (relative offsets 1e-4 .. 1e-7), exact duplicates, antipodes and near-antipodes,
    huge and tiny norms: about 40 rows of dimension d. ``extreme`` adds rows 3e-9 (relative) off the
    direction of others, closer than float64 rows can be told apart to 1e-10 (see test_close_pair_float64)."""
    base = torch.randn(6, d, generator=gen, dtype=torch.float64)
    rows = [base]
    for scale in (1e-4, 1e-5, 1e-6, 1e-7):
        rows.append(base[:3] * (1 + 0.1 * torch.rand(3, 1, generator=gen, dtype=torch.float64))
                    + scale * torch.randn(3, d, generator=gen, dtype=torch.float64))
    rows += [base[:2], -base[2:4], -base[4:6] + 1e-6 * torch.randn(2, d, generator=gen, dtype=torch.float64)]
    rows += [1e12 * base[:2], 1e-12 * base[2:4], 3e-3 * base[4:6]]
    if extreme:
        rows.append(base[:2] * 1e3 + 1e-5)
    return torch.cat(rows)[None]


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hard_rows(d):
    """Nearly parallel rows, duplicates, antipodes, huge and tiny norms: float64 to 1e-10 of the oracle,
    float32 no less accurate than the general kernel on the same rows."""
    gen = torch.Generator().manual_seed(100 + d)
    w = _hard_rows(d, gen)
    w64 = w[:, :-2]  # without the two extreme rows
    for kind, s in KIND_S:
        for hs in (False, True):
            # un-normalized rows 1e-7 apart have d2 ~ 1e-14, and phi' = d2^(-s/2-1) passes float32's range
            # for s > 1 (the true value is not representable); normalized rows have d2 >= 2 eps_norm-ish
            for norm in (True, False) if kind == "log" or (kind == "riesz" and s <= 1) else (True,):
                kw = dict(kind=kind, s=s, half_space=hs, normalize=norm)
                what = f"hard rows D={d} {kind} s={s} hs={hs} norm={norm}"
                for x, dtype in ((w64, torch.float64), (w, torch.float32)):
                    if not norm:
                        # scaled into the unit ball, where rows that coincide (or, in half-space mode, are
                        # antipodes) are one point twice: infinite energy, so each is kept once.
                        x = (x / x.norm(dim=-1, keepdim=True).clamp_min(1)).to(dtype)
                        x = torch.unique(x * torch.where(x[..., :1] < 0, -1.0, 1.0).to(dtype), dim=1)
                    _check(x, dtype, what, **kw)


@pytest.mark.parametrize("s, eps_norm, n", [(8.0, 1e-8, 70), (6.0, 1e-10, 70), (40.0, 1e-4, 6)])
def test_float_terms_beyond_float32(s, eps_norm, n):
    """float32 Riesz rows with exact duplicates: with a tiny eps_norm the duplicates' derivatives pass
    float32's range (s = 8: d^2 ~ 2e-8 gives phi' ~ 1e39) while the energy and gradient fit, so the kernel's
    float pair terms of those runs are evaluated again in double; s = 40 is past the float terms' exponent
    limit and runs in double. Finite, and as accurate as a float32 result of the float64 oracle can be."""
    gen = torch.Generator().manual_seed(int(s))
    w = torch.randn(1, n, 3, generator=gen)
    if n > 40:
        w[0, 40:] = w[0, : n - 40]  # duplicated rows
    e_ref, g_ref = precise_energy(w.double(), kind="riesz", s=s, eps_norm=eps_norm)
    fmax = torch.finfo(torch.float32).max
    assert e_ref.abs().max() < fmax / 4 and g_ref.abs().max() < fmax / 4  # the true values fit in float32
    e, g = _kernel(w, kind="riesz", s=s, eps_norm=eps_norm)
    assert torch.isfinite(e).all() and torch.isfinite(g).all()
    assert rel_err(e, e_ref) < 1e-5 and rel_err(g, g_ref) < 1e-5, (rel_err(e, e_ref), rel_err(g, g_ref))


def test_close_pair_float64():
    """Two float64 rows whose directions differ by ~1e-7 (and a third row), Riesz s = 1 with eps_norm = 0,
    against the exact energy and gradient in 50-digit arithmetic: the kernel keeps ~1e-16 / 1e-7 relative,
    where forming 2 - 2g would keep ~1e-16 / 1e-14 = 1e-2."""
    mpmath = pytest.importorskip("mpmath", reason="the exact value is computed with mpmath")
    mpmath.mp.dps = 50
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    w[1] = w[0] * 1.7 + 1e-7 * torch.randn(3, generator=gen, dtype=torch.float64)
    W = [[mpmath.mpf(float(v)) for v in row] for row in w]
    norms = [mpmath.sqrt(sum(v * v for v in row)) for row in W]
    U = [[v / nr for v in row] for row, nr in zip(W, norms)]
    energy, grad = mpmath.mpf(0), [[mpmath.mpf(0)] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            d2 = sum((U[i][k] - U[j][k]) ** 2 for k in range(3))
            g = 1 - d2 / 2
            if i < j:
                energy += d2 ** mpmath.mpf(-0.5)
            # d/dw_i of (2 - 2g)^(-1/2) = (2 - 2g)^(-3/2) dg/dw_i, dg/dw_i = (u_j - g u_i) / |w_i|
            for k in range(3):
                grad[i][k] += d2 ** mpmath.mpf(-1.5) * (U[j][k] - g * U[i][k]) / norms[i]
    e, gk = _kernel(w[None], kind="riesz", s=1.0, eps_norm=0.0)
    g_exact = torch.tensor([[float(v) for v in row] for row in grad], dtype=torch.float64)
    assert abs(float(e) - float(energy)) / float(energy) < 1e-8
    assert rel_err(gk[0], g_exact) < 1e-8


def test_nearly_parallel_points_on_the_sphere():
    """Points within 1e-6 of each other on the unit sphere (exact unit rows, eps_norm = 0): the pair terms
    are huge and 2 - 2g in float32 would lose most digits; this kernel keeps them, and so does the general
    kernel, whose close-pair path recomputes such pairs from coordinates in float64 (issue 13)."""
    gen = torch.Generator().manual_seed(5)
    p = torch.randn(1, 64, 3, generator=gen, dtype=torch.float64)
    p = torch.cat([p, p + 1e-6 * torch.randn(1, 64, 3, generator=gen, dtype=torch.float64)], 1)
    p = p / p.norm(dim=-1, keepdim=True)
    kw = dict(kind="riesz", s=1.0, eps_norm=0.0)
    x = p.float()
    e_ref, g_ref = precise_energy(x.double(), **kw)
    e, g = _kernel(x, **kw)
    assert rel_err(e, e_ref) < 2 * FP32_FLOOR and rel_err(g, g_ref) < 2 * FP32_FLOOR
    e_old, g_old = _general_kernel(x, **kw)
    assert rel_err(e_old, e_ref) < 2 * FP32_FLOOR and rel_err(g_old, g_ref) < 2 * FP32_FLOOR
    # float64 (its close pairs on the careful path): u_i = w_i / |w_i| is rounded (1e-16) in the oracle, so
    # the distance of two rows 1e-6 apart is known to about 1e-16 / 1e-6 relative there
    _check(p, torch.float64, "nearly parallel, float64", rtol64=1e-8, **kw)


def _close_rows64(b, n, d, gen):
    """float64 rows with close pairs all over the sweep: a third of them near copies (relative offsets
    1e-3 .. 1e-12, norms changed), exact duplicates, power-of-two multiples, antipodes and near-antipodes of
    rows anywhere before them."""
    w = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    for k in torch.randperm(n, generator=gen)[: n // 3].tolist():
        src = w[:, int(torch.randint(0, n, (1,), generator=gen))]
        op = k % 5
        if op == 0:
            rel = 10.0 ** -float(torch.randint(3, 13, (1,), generator=gen))
            w[:, k] = src * 1.3 * (1 + rel * torch.randn(b, d, generator=gen, dtype=torch.float64))
        elif op == 1:
            w[:, k] = src
        elif op == 2:
            w[:, k] = 4 * src
        elif op == 3:
            w[:, k] = -src
        else:
            w[:, k] = -src * (1 + 1e-8 * torch.randn(b, d, generator=gen, dtype=torch.float64))
    return w


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_float64_close_pairs_across_tiles(d):
    """float64 rows whose close pairs (1 - |g| below 2^-10: duplicates, near copies, antipodes) fall in
    every tile and part of the sweep (N = 1100, 9 blocks, batched): this kernel takes them on the general
    kernel's careful path, so it agrees with the general kernel (the same rows with zero coordinates
    appended), every kind, half-space and not; eps_norm > 0 keeps duplicate pairs finite."""
    gen = torch.Generator().manual_seed(40 + d)
    w = _close_rows64(2, 1100, d, gen)
    for kind, s in (("riesz", 1.0), ("riesz", 3.5), ("log", 0.0), ("angular", 2.5), ("angular_log", 0.0)):
        for hs in (False, True):
            kw = dict(kind=kind, s=s, half_space=hs, eps_norm=1e-8)
            e, g = _kernel(w, **kw)
            e_gen, g_gen = _general_kernel(w, **kw)
            what = f"D={d} {kind} s={s} hs={hs}"
            # both are ~1e-11 from the truth here (rows 1e-12 apart); without the careful path this kernel's
            # Riesz results are 1e-12 (energy) and 5e-10 (gradient) away
            assert rel_err(e, e_gen) < 2e-13, f"{what}: energy {rel_err(e, e_gen):.3g}"
            assert rel_err(g, g_gen) < 3e-11, f"{what}: gradient {rel_err(g, g_gen):.3g}"


def test_matches_plain_reference_on_ordinary_inputs():
    """Through the public API, with the project's standard check (float32 within twice the reference's own
    float32 error) on fresh random rows."""
    for kind, s in KIND_S:
        for hs in (False, True):
            kw = dict(kind=kind, s=s, half_space=hs, reduction="mean")
            check_against_reference(lambda x: hk.energy(x, backend="cpu", **kw),
                                    lambda x: hk.energy(x, backend="reference", **kw),
                                    rand_rows(2, 50, 3), torch.float32, f"{kind} {s} hs={hs}")


def test_half_inputs_and_non_contiguous():
    w = rand_rows(2, 40, 6)[..., ::2]  # non-contiguous, D = 3
    for dtype in (torch.float16, torch.bfloat16):
        x = w.to(dtype)
        e, g = energy_and_grad(lambda y: hk.energy(y, reduction="sum", backend="cpu"), x)
        e_ref, g_ref = precise_energy(x.double())
        assert e.dtype == torch.float32 and g.dtype == dtype
        assert rel_err(e, e_ref) < 1e-5 and rel_err(g, g_ref) < 2 * torch.finfo(dtype).eps


def test_errors_and_infinities():
    with pytest.raises(ValueError, match="w contains NaN or Inf"):
        torch.ops.hsu.energy_grad(torch.tensor([[[1.0, float("nan"), 0.0], [0.0, 1.0, 0.0]]]), 0, 1.0, 2.0, 1e-4,
                                  1e-4, False, True)
    with pytest.raises(ValueError, match="zero row"):
        hk.energy(torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), eps_norm=0.0, backend="cpu")
    # a point given twice with exact unit rows: infinite Riesz energy, not NaN
    w = torch.tensor([[0.6, 0.8, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert hk.energy(w, "riesz", 1.0, eps_norm=0.0, backend="cpu") == float("inf")


def test_bitwise_same_on_any_thread_count():
    """The partition into tiles and every reduction order are fixed by N alone."""
    old = torch.get_num_threads()
    w = rand_rows(3, 1100, 3).float()  # 9 blocks of 128 (a bye every round), 3 batch entries
    # float64 with close pairs in every part: the careful path's terms in the parts' sums
    w64 = _close_rows64(3, 1100, 3, torch.Generator().manual_seed(8))
    cases = ((w, dict(kind="riesz", s=1.0)), (w, dict(kind="angular", s=2.0, half_space=True)),
             (w, dict(kind="log", normalize=False, half_space=True)),
             (w64, dict(kind="riesz", s=1.0, half_space=True, eps_norm=1e-8)), (w64, dict(kind="angular", s=2.0)))
    try:
        results = {}
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            results[threads] = [_kernel(x, **kw) for x, kw in cases]
    finally:
        torch.set_num_threads(old)
    for threads in (2, 3, 4):
        for (e, g), (e1, g1) in zip(results[threads], results[1]):
            assert torch.equal(e, e1) and torch.equal(g, g1), f"{threads} threads differ from 1"


@pytest.mark.skipif(not (torch.cuda.is_available() and _ext.has_cuda_kernel()),
                    reason="needs a GPU and the extension built with CUDA")
def test_cuda_small_d_kernel():
    """The CUDA backend at D <= 4 (served by the general CUDA kernels, csrc/cuda/hsu_cuda_kernels.cuh) against
    the oracle: every kind and flag, batched, odd N, hard rows; float64 to 1e-9, float32 within twice the CPU
    kernel's error on the same rows (or 4 float32 ulps), nearly parallel rows included."""
    gen = torch.Generator().manual_seed(7)
    cases = [rand_rows(2, n, d) for n, d in ((2, 3), (17, 2), (130, 4), (1100, 3))]
    cases += [_hard_rows(d, gen) for d in (2, 3, 4)]
    for w in cases:
        for kind, s in KIND_S:
            for hs in (False, True):
                for norm in (True, False) if not kind_by_name(kind).angle else (True,):
                    kw = dict(kind=kind, s=s, half_space=hs, normalize=norm)
                    x = w if norm else w / w.norm(dim=-1, keepdim=True).clamp_min(1)
                    for dtype in (torch.float64, torch.float32):
                        xc = x.to(dtype)
                        e_ref, g_ref = precise_energy(xc.double(), **kw)
                        if not (torch.isfinite(e_ref).all() and torch.isfinite(g_ref).all()):
                            continue  # coinciding un-normalized rows: infinite energy, nothing to compare
                        e, g = energy_and_grad(
                            lambda y: hk.energy(y, reduction="sum", backend="cuda", **kw), xc.cuda())
                        if dtype == torch.float64:
                            tols = (1e-9, 1e-9)
                        else:
                            e_cpu, g_cpu = _kernel(xc, **kw)
                            tols = (max(2 * rel_err(e_cpu, e_ref), 4 * FP32_FLOOR),
                                    max(2 * rel_err(g_cpu, g_ref), 4 * FP32_FLOOR))
                        what = f"cuda {kind} s={s} hs={hs} norm={norm} shape={tuple(x.shape)} {dtype}"
                        assert rel_err(e.cpu(), e_ref) <= tols[0] and rel_err(g.cpu(), g_ref) <= tols[1], what
