"""Backend choice for CUDA tensors: ``available_backends`` and ``auto`` ask ``torch.cuda.is_available()``, so a
machine without a GPU (or with a CPU build of torch) never lists or picks ``cuda``/``triton``, and asking
for them says why. Runs everywhere: the GPU's presence is simulated with monkeypatch."""

import pytest
import torch

import hsu_kernels as hk
from hsu_kernels import ops

CUDA = torch.device("cuda")


def _no_gpu(monkeypatch, cuda_build=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0" if cuda_build else None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)


def _gpu(monkeypatch, cuda_kernel=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops._ext, "has_cuda_kernel", lambda: cuda_kernel)


@pytest.mark.parametrize("cuda_build", [True, False])
def test_no_gpu_lists_no_gpu_backend(monkeypatch, cuda_build):
    _no_gpu(monkeypatch, cuda_build)
    assert hk.available_backends("cuda") == ["reference", "torch"]
    for d in (3, 64, 300):
        assert hk.resolve_backend("auto", CUDA, d) == "torch"
    why = r"this torch \(.*\) is not a CUDA build" if not cuda_build else "no GPU or no CUDA driver"
    for name in ("cuda", "triton"):
        with pytest.raises(ValueError, match=f"backend='{name}' is not available for cuda tensors here: "
                                             rf"torch\.cuda\.is_available\(\) is False: {why}"):
            hk.resolve_backend(name, CUDA, 64)
    # CPU tensors are not affected
    assert "cpu" in hk.available_backends("cpu") or not ops._ext.available()


def test_gpu_lists_gpu_backends(monkeypatch):
    _gpu(monkeypatch)
    names = hk.available_backends("cuda")
    assert "cuda" in names
    assert ("triton" in names) == (ops._triton_module() is not None)
    assert hk.resolve_backend("auto", CUDA, 3) == "cuda"  # small D: the CUDA C++ kernel
    big = hk.resolve_backend("auto", CUDA, 300)
    assert big == ("triton" if ops._triton_module() is not None else "cuda")
    assert hk.resolve_backend("auto", CUDA, 300, torch.float64) == "cuda"  # Triton has no float64


def test_gpu_without_cuda_kernel(monkeypatch):
    """A GPU, but an extension built without the CUDA sources: ``cuda`` is refused with the build hint."""
    _gpu(monkeypatch, cuda_kernel=False)
    assert "cuda" not in hk.available_backends("cuda")
    with pytest.raises(ValueError, match="built without CUDA"):
        hk.resolve_backend("cuda", CUDA, 3)
