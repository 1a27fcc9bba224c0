"""Under torch.autocast every backend computes in float32 (float64 stays float64): the same numbers as
without autocast, bitwise, and within the float32 rule of the float64 reference. D spans every internal
threshold (the C++ kernel's float64 geometry up to D = 32, its GEMM engines above; the tiled path's
float64 geometry up to 32)."""

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext
from hsu_kernels.testing import assert_close, check_against_reference, energy_and_grad, fast_backends, rand_rows

BACKENDS = ["reference"] + fast_backends("cpu")
DS = [3, 16, 32, 33, 64, 300]
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def _autocast_fn(fn, dtype):
    def run(w):
        with torch.autocast("cpu", dtype=dtype):
            return fn(w)

    return run


def test_autocast_is_really_on():
    # the products of these tests would be computed in the low precision if the ops did not switch it off
    a = torch.randn(8, 8)
    for dtype in AUTOCAST_DTYPES:
        with torch.autocast("cpu", dtype=dtype):
            assert (a @ a).dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("d", DS)
def test_energy_under_autocast(backend, dtype, d):
    # (not angular half-space: the float32 reference's own gradient is NaN there, see reference.py)
    for kind, s, hs in (("riesz", 1.0, True), ("angular", 2.0, False)):
        w = rand_rows(2, 37, d, dtype=torch.float32)
        fn = lambda x: hk.energy(x, kind, s, half_space=hs, backend=backend)  # noqa: E731
        e_plain, g_plain = energy_and_grad(fn, w)
        e_auto, g_auto = energy_and_grad(_autocast_fn(fn, dtype), w)
        assert e_auto.dtype == torch.float32 and g_auto.dtype == torch.float32
        assert torch.equal(e_auto, e_plain) and torch.equal(g_auto, g_plain), f"{backend} {kind} D={d}"
        kw = dict(kind=kind, s=s, half_space=hs)
        check_against_reference(_autocast_fn(lambda x: hk.energy(x, backend=backend, **kw), dtype),
                                lambda x: hk.energy(x, backend="reference", **kw), w.double(), torch.float32,
                                f"{backend} under {dtype} autocast, {kind}, D={d}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_stays_float64_under_autocast(backend):
    w = rand_rows(21, 40)
    fn = lambda x: hk.energy(x, "riesz", 2.0, backend=backend)  # noqa: E731
    e_auto, g_auto = energy_and_grad(_autocast_fn(fn, torch.bfloat16), w)
    e, g = energy_and_grad(lambda x: hk.energy(x, "riesz", 2.0, backend="reference"), w)
    assert e_auto.dtype == torch.float64 and g_auto.dtype == torch.float64
    torch.testing.assert_close(e_auto, e, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_auto, g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_half_inputs_under_autocast(backend, dtype):
    # half inputs: computed in float32, the energy returned in float32, the gradient in the input's dtype
    # (sum reduction: gradients of order 1, not in float16's subnormal range)
    w = rand_rows(19, 64).to(dtype)
    e, g = energy_and_grad(_autocast_fn(lambda x: hk.energy(x, reduction="sum", backend=backend), dtype), w)
    assert e.dtype == torch.float32 and g.dtype == dtype
    e_ref, g_ref = energy_and_grad(lambda x: hk.energy(x, reduction="sum", backend="reference"), w.double())
    assert_close(e, e_ref, 1e-5, f"{backend} energy")
    # one rounding of the gradient to the input's dtype
    assert_close(g, g_ref, torch.finfo(dtype).eps, f"{backend} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [16, 33, 300])
def test_cross_energy_and_energy_many_under_autocast(backend, d):
    x, y = rand_rows(13, d, dtype=torch.float32), rand_rows(9, d, dtype=torch.float32)
    ws = [rand_rows(n, dd, dtype=torch.float32) for n, dd in ((11, d), (30, 5), (7, 64))]
    for dtype in AUTOCAST_DTYPES:
        plain = hk.cross_energy(x, y, "riesz", 1.0, half_space=True, backend=backend)
        many = hk.energy_many(ws, power="a1", backend=backend)
        with torch.autocast("cpu", dtype=dtype):
            auto = hk.cross_energy(x, y, "riesz", 1.0, half_space=True, backend=backend)
            many_auto = hk.energy_many(ws, power="a1", backend=backend)
        assert auto.dtype == torch.float32 and many_auto.dtype == torch.float32
        assert torch.equal(auto, plain) and torch.equal(many_auto, many)
        ref = hk.cross_energy(x.double(), y.double(), "riesz", 1.0, half_space=True, backend="reference")
        torch.testing.assert_close(auto.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
@pytest.mark.parametrize("d", DS)
def test_compiled_ops_under_autocast(d):
    # the ops called directly (their registered Autocast kernels), D on both sides of every threshold:
    # before the kernels existed, D > 32 raised "expected scalar type Float but found BFloat16"
    w = rand_rows(2, 50, d, dtype=torch.float32)
    args = (0, 1.0, 2.0, 1e-4, 1e-4, True, True)
    plain = torch.ops.hsu.energy_grad(w, *args)
    cross = torch.ops.hsu.cross_energy_grad(w[:, :20], w[:, 20:], *args)
    for dtype in AUTOCAST_DTYPES:
        with torch.autocast("cpu", dtype=dtype):
            got = torch.ops.hsu.energy_grad(w, *args)
            got_cross = torch.ops.hsu.cross_energy_grad(w[:, :20], w[:, 20:], *args)
            got_half = torch.ops.hsu.energy_grad(w.to(dtype), *args)  # half input: computed in float32
        for a, b in zip(got + got_cross, plain + cross):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert got_half[0].dtype == torch.float32 and got_half[1].dtype == torch.float32
        torch.testing.assert_close(got_half[0], torch.ops.hsu.energy_grad(w.to(dtype).float(), *args)[0])


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")
def test_autocast_kernels_registered_for_cpu_and_cuda():
    # read from the dispatch table, so the CUDA registration is checked on machines without a GPU
    for op in ("hsu::energy_grad", "hsu::cross_energy_grad"):
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), f"{op} has no {key} kernel"
