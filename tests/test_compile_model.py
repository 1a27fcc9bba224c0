"""A training step of a small CNN with MHERegularizer under torch.compile(fullgraph=True): no graph break
from our ops, and the same loss and gradients as eager."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hsu_kernels import available_backends
from hsu_kernels.regularizers import MHERegularizer

#: aot_eager traces forward and backward exactly as inductor does (dynamo + AOTAutograd) without the C++
#: code generation, which is what a graph break or a fake-kernel mismatch would show up in; set
#: HSU_COMPILE_BACKEND=inductor to include code generation.
COMPILER = os.environ.get("HSU_COMPILE_BACKEND", "aot_eager")


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("power,half", [("2", True), ("a1", False)])
def test_training_step_compiles_fullgraph(backend, power, half):
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend!r} not available here: {available_backends('cpu')}")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small_cnn()
    reg = MHERegularizer(model, power=power, half_space=half, backend=backend)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y) + reg()

    compiled = torch.compile(loss_fn, fullgraph=True, backend=COMPILER)
    params = list(model.parameters())
    eager = loss_fn(x, y)
    g_eager = torch.autograd.grad(eager, params)
    loss = compiled(x, y)
    g_comp = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # one optimizer step through the compiled loss, then the compiled and eager losses still agree
    opt = torch.optim.SGD(params, lr=0.05)
    opt.zero_grad()
    compiled(x, y).backward()
    opt.step()
    torch.testing.assert_close(compiled(x, y), loss_fn(x, y), rtol=1e-5, atol=1e-6)


def _train(backend, mode, batches, steps_lr=0.05):
    """Losses (cross-entropy, regularizer) of SGD steps on a small CNN with MHERegularizer: ``mode`` is
    ``"eager"`` (float32), ``"autocast"`` (the whole step's forward under CPU bf16 autocast) or ``"compile"``
    (torch.compile(dynamic=True)). Also returns, for autocast, the regularizer under autocast and in float32
    eager on the same weights at every step."""
    torch.manual_seed(0)
    model = small_cnn()
    reg = MHERegularizer(model, power="1", half_space=True, backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=steps_lr)

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y), reg()

    fn = torch.compile(loss_fn, dynamic=True, backend=COMPILER) if mode == "compile" else loss_fn
    losses, reg_pairs = [], []
    for x, y in batches:
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ce, r = fn(x, y)
            reg_pairs.append((r.detach(), reg().detach()))
        else:
            ce, r = fn(x, y)
        opt.zero_grad()
        (ce + r).backward()
        opt.step()
        losses.append((float(ce), float(r)))
    return losses, reg_pairs


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_training_steps_under_autocast_and_compile_match_float32_eager(backend):
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend!r} not available here: {available_backends('cpu')}")
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 1, 8, 8, generator=gen), torch.randint(0, 10, (b,), generator=gen))
               for b in (16, 12, 16, 20)]  # changing batch sizes: the dynamic graph serves them all
    eager, _ = _train(backend, "eager", batches)
    compiled, _ = _train(backend, "compile", batches)
    auto, reg_pairs = _train(backend, "autocast", batches)
    for step, ((ce_e, r_e), (ce_c, r_c), (ce_a, r_a)) in enumerate(zip(eager, compiled, auto)):
        assert ce_c == pytest.approx(ce_e, rel=1e-5) and r_c == pytest.approx(r_e, rel=1e-5), f"compile, step {step}"
        # bf16 convolutions move the cross-entropy and, through the updates, the weights a little
        assert ce_a == pytest.approx(ce_e, rel=3e-2) and r_a == pytest.approx(r_e, rel=1e-3), f"autocast, step {step}"
    for step, (r_auto, r_f32) in enumerate(reg_pairs):
        # on the same weights, the regularizer under autocast is the float32 one (bf16 products: ~1e-2 off)
        assert r_auto.dtype == torch.float32
        torch.testing.assert_close(r_auto, r_f32, rtol=1e-6, atol=0, msg=f"regularizer under autocast, step {step}")
