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
