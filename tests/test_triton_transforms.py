"""The Triton backend inside a training loop: autocast, second derivatives, torch.func, torch.compile.

Runs where Triton can run: on CUDA, or on CPU tensors under the interpreter, in its own pytest process::

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton_transforms.py -q

(as tests/test_triton.py; ``make test`` does this). Sizes are small: the interpreter is slow.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip(
        "the Triton backend needs a CUDA GPU or the Triton CPU interpreter: run "
        "`TRITON_INTERPRET=1 python -m pytest tests/test_triton_transforms.py`",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed (pip install hsu-kernels[triton])")

from torch import func  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

import hsu_kernels as hk  # noqa: E402
from hsu_kernels import triton as ht  # noqa: E402
from hsu_kernels.testing import assert_close, energy_and_grad, rand_rows  # noqa: E402

if not ht.available():
    pytest.skip(f"hsu_kernels.triton failed to import: {ht.import_error()!r}", allow_module_level=True)

DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on masked lanes


def _rows(*shape, dtype=torch.float32):
    return rand_rows(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [3, 16, 32, 33, 64, 300])
def test_autocast(dtype, d):
    # float32 rows under autocast: the same numbers as without it (no half products), within float32
    # rounding of the float64 reference (the kernel's own accuracy without autocast: tests/test_triton.py)
    w = _rows(2, 13, d)
    fn = lambda x: hk.energy(x, "riesz", 1.0, half_space=True, backend="triton")  # noqa: E731

    def auto(x):
        with torch.autocast(DEVICE, dtype=dtype):
            return fn(x)

    e, g = energy_and_grad(fn, w)
    e_auto, g_auto = energy_and_grad(auto, w)
    assert e_auto.dtype == torch.float32 and g_auto.dtype == torch.float32
    assert torch.equal(e_auto, e) and torch.equal(g_auto, g)
    e_ref, g_ref = energy_and_grad(lambda x: hk.energy(x, "riesz", 1.0, half_space=True, backend="reference"),
                                   w.double())
    assert_close(e_auto, e_ref, 1e-5, f"energy under {dtype} autocast D={d}")
    assert_close(g_auto, g_ref, 1e-4, f"gradient under {dtype} autocast D={d}")
    x, y = _rows(7, d), _rows(5, d)
    with torch.autocast(DEVICE, dtype=dtype):
        cross = hk.cross_energy(x, y, backend="triton")
        many = hk.energy_many([x, y[:3]], backend="triton")
    assert torch.equal(cross, hk.cross_energy(x, y, backend="triton"))
    assert torch.equal(many, hk.energy_many([x, y[:3]], backend="triton"))


def _hvp(fn, inputs, vs):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    gs = torch.autograd.grad(fn(*xs).sum(), xs, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), xs)


@pytest.mark.parametrize("kind,s", [("riesz", 1.0), ("angular", 2.0), ("gaussian", 0.0)])
@pytest.mark.parametrize("half_space", [False, True])
def test_second_derivatives(kind, s, half_space):
    # Triton computes in float32 (no gradgradcheck in float64): its Hessian-vector product against the
    # reference's in float64, batched, and through energy_many's ragged launch
    w, v = _rows(2, 11, 6, dtype=torch.float64), _rows(2, 11, 6, dtype=torch.float64)
    fn = lambda b: lambda x: hk.energy(x, kind, s, half_space=half_space, backend=b)  # noqa: E731
    (got,) = _hvp(fn("triton"), [w.float()], [v.float()])
    (want,) = _hvp(fn("reference"), [w], [v])
    assert_close(got, want, 2e-5, f"{kind} half_space={half_space}")
    many = lambda b: lambda a, c: hk.energy_many([a, c], kind, s, half_space=half_space, backend=b)  # noqa: E731
    got = _hvp(many("triton"), [w[0].float(), w[1, :7].float()], [v[0].float(), v[1, :7].float()])
    want = _hvp(many("reference"), [w[0], w[1, :7]], [v[0], v[1, :7]])
    for a, b in zip(got, want):
        assert_close(a, b, 2e-5, f"energy_many {kind}")


def test_cross_energy_second_derivatives():
    x, y, vx, vy = (_rows(n, 5, dtype=torch.float64) for n in (9, 4, 9, 4))
    fn = lambda b: lambda a, c: hk.cross_energy(a, c, "riesz", 2.0, half_space=True, backend=b)  # noqa: E731
    got = _hvp(fn("triton"), [x.float(), y.float()], [vx.float(), vy.float()])
    want = _hvp(fn("reference"), [x, y], [vx, vy])
    for a, b in zip(got, want):
        assert_close(a, b, 2e-5, "cross")


def test_torch_func():
    ws = _rows(3, 9, 5)
    fn = lambda x: hk.energy(x, power="a1", backend="triton")  # noqa: E731
    ref = lambda x: hk.energy(x, power="a1", backend="reference")  # noqa: E731
    assert_close(func.vmap(fn)(ws), ref(ws.double()), 2e-6, "vmap")
    per_sample = func.vmap(func.grad(fn))(ws)
    assert_close(per_sample, func.vmap(func.grad(ref))(ws.double()), 2e-5, "vmap(grad)")
    e, pull = func.vjp(fn, ws)
    ct = torch.tensor([1.0, -0.5, 2.0], device=DEVICE)
    assert_close(pull(ct)[0], func.vjp(ref, ws.double())[1](ct.double())[0], 2e-5, "vjp")
    jac = func.jacrev(fn)(ws)
    assert jac.shape == (3, 3, 9, 5)
    assert_close(jac[1, 1], per_sample[1], 1e-6, "jacrev diagonal block")
    assert torch.all(jac[0, 1] == 0)


def test_compile_one_graph_for_every_n():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    fn = lambda x: hk.energy(x, "log", half_space=True, backend="triton")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    first = None
    for n in (5, 9, 17):
        w = _rows(n, 6).requires_grad_(True)
        got = compiled(w)
        assert_close(got.detach(), fn(w).detach(), 1e-7, f"N={n}")
        (g,) = torch.autograd.grad(got, w)
        assert_close(g, torch.autograd.grad(fn(w), w)[0], 1e-6, f"gradient N={n}")
        first = first or counter.frame_count
    assert counter.frame_count == first, "recompiled for a new N"
    bad = _rows(6, 6)
    bad[0, 0] = float("inf")
    with pytest.raises((ValueError, RuntimeError), match="NaN or Inf"):
        compiled(bad)
