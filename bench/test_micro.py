"""pytest-benchmark microbenchmarks: energy + gradient per backend on a few small sizes.

Run with ``pytest bench/test_micro.py --benchmark-only`` (``tests/`` is the test path, so these never run in
``make test``). Group by size to compare backends: ``--benchmark-group-by=param:size``. Each benchmark first
checks its backend against the eager reference on the same inputs, so a fast wrong kernel fails here.
"""

from __future__ import annotations

import pytest
import torch

import hsu_kernels as H

from .workloads import Case, Energy, backend_unavailable, make_inputs, make_step, rel_err

pytest.importorskip("pytest_benchmark")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1024, 64), (2048, 3), (512, 512)]
BACKENDS = ["reference", "torch", "cpu", "triton", "cuda"]


def _size_id(size):
    return f"{size[0]}x{size[1]}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_energy_grad(benchmark, backend, size):
    why = backend_unavailable(backend, DEVICE)
    if why:
        pytest.skip(f"{backend}: {why}")
    case = Case("single", n=size[0], d=size[1])
    inputs = make_inputs(case, torch.float32, DEVICE)
    step = make_step(case, Energy(), backend)
    loss, grads = step(inputs)
    if backend != "reference":
        ref_loss, ref_grads = make_step(case, Energy(), "reference")(inputs)
        assert rel_err(loss, ref_loss) < 1e-4
        assert all(rel_err(g, g0) < 1e-2 for g, g0 in zip(grads, ref_grads))

    def run():
        out = step(inputs)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"energy+grad {_size_id(size)} float32"
    benchmark.extra_info["gflop"] = case.flops() / 1e9
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu", "triton", "cuda"])
def test_network_step(benchmark, backend):
    """The VGG-CIFAR layer list (docs/spec.md §8) as one regularizer step: energy_many vs layer by layer."""
    why = backend_unavailable(backend, DEVICE)
    if why:
        pytest.skip(f"{backend}: {why}")
    case = Case("network")
    inputs = make_inputs(case, torch.float32, DEVICE)
    step = make_step(case, Energy(), backend)
    step(inputs)
    benchmark.group = "VGG-CIFAR regularizer step float32"
    benchmark.pedantic(step, args=(inputs,), rounds=5, warmup_rounds=1, iterations=1)


def test_backends_listed():
    """The microbenchmarks cover every backend the package knows (a new one needs a row here)."""
    assert set(BACKENDS) == set(H.BACKENDS) - {"auto"}


def test_cli_smoke(tmp_path, capsys):
    """``python -m bench`` end to end on a tiny workload: a table with one row per backend, a results file
    with the command and commit, exit status 0."""
    from .cli import main

    out = tmp_path / "r.md"
    rc = main(["--sizes", "64,8;network", "--backends", "reference,torch", "--no-memory", "--budget", "0.05",
               "--quiet", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "- command: `python -m bench" in text and "- commit: `" in text
    rows = [line for line in text.splitlines() if line.startswith("| reference") or line.startswith("| torch")]
    assert len(rows) == 4 and all("FAILED" not in r for r in rows)
