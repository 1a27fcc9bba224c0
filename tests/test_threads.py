"""The C++ kernel gives bitwise the same energy and gradient on 1, 2, 3 and 4 threads (docs/backends.md: Determinism);
the tiled torch backend gives bitwise the same result run to run at a given thread count.

The grid covers both scheduling modes of the symmetric tiles (few tiles, N <= 512 or so: each tile's chunks
spread over the threads; many tiles: one thread per tile), the float64 geometry (D <= 32) and the GEMM
engines (D > 32), and N = 100, D = 64, which differed by 7e-12 between 1 and 4 threads before the chunks
(MKL's threaded GEMM rounds differently per thread count)."""

import itertools

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import _ext
from hsu_kernels.testing import rand_rows

THREADS = (1, 2, 3, 4)
NS = (2, 3, 17, 100, 130, 300, 700)
DS = (3, 16, 32, 33, 64, 300)

needs_ext = pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")


def _at_threads(fn):
    """``fn()`` on each thread count of THREADS (the setting restored afterwards)."""
    before = torch.get_num_threads()
    try:
        out = []
        for t in THREADS:
            torch.set_num_threads(t)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(before)


def _energy_and_grad(w, backend, **kw):
    x = w.detach().clone().requires_grad_(True)
    e = hk.energy(x, backend=backend, reduction="sum", **kw)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


def _assert_all_equal(results, what):
    for t, r in zip(THREADS[1:], results[1:]):
        for a, b in zip(r, results[0]):
            assert torch.equal(a, b), f"{what}: {t} threads differ from 1 thread by {(a - b).abs().max().item():.3g}"


@needs_ext
@pytest.mark.parametrize("n,d", list(itertools.product(NS, DS)))
def test_cpu_energy_bitwise_on_any_thread_count(n, d):
    for k, (dtype, hs, batch) in enumerate(((torch.float32, False, 1), (torch.float32, True, 2),
                                            (torch.float64, True, 1))):
        w = rand_rows(batch, n, d, dtype=dtype)
        kind = ("riesz", "angular", "gaussian")[k]
        res = _at_threads(lambda: _energy_and_grad(w, "cpu", kind=kind, half_space=hs))
        _assert_all_equal(res, f"N={n} D={d} {dtype} {kind} half_space={hs} B={batch}")


@needs_ext
@pytest.mark.parametrize("d", DS)
def test_cpu_cross_energy_and_normalize_off_bitwise(d):
    x, y = rand_rows(2, 300, d, dtype=torch.float32), rand_rows(2, 70, d, dtype=torch.float32)

    def cross():
        xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        e = hk.cross_energy(xs, ys, "riesz", 1.0, half_space=True, backend="cpu")
        return (e.detach(), *torch.autograd.grad(e.sum(), (xs, ys)))

    _assert_all_equal(_at_threads(cross), f"cross D={d}")
    w = 0.3 * rand_rows(260, d, dtype=torch.float32)
    res = _at_threads(lambda: _energy_and_grad(w, "cpu", kind="gaussian", normalize=False, half_space=True))
    _assert_all_equal(res, f"normalize=False D={d}")


@pytest.mark.parametrize("n,d", [(100, 64), (300, 33), (1000, 40)])
def test_torch_backend_repeatable_at_each_thread_count(n, d):
    # the tiled backend's products are torch's own matmuls, whose rounding may depend on the thread count
    # (docs/backends.md: Determinism); at one thread count, two runs agree bitwise
    w = rand_rows(n, d, dtype=torch.float32)
    first = _at_threads(lambda: _energy_and_grad(w, "torch", half_space=True))
    again = _at_threads(lambda: _energy_and_grad(w, "torch", half_space=True))
    for t, a, b in zip(THREADS, first, again):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), f"{t} threads: two runs differ"
