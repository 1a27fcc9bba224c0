"""The benchmarked workloads, and one differentiable step (energy forward + backward) per backend.

A workload is a :class:`Case`; :func:`make_inputs` builds its leaf tensors from a seed (so the main
process and a memory probe subprocess see bitwise the same inputs), and :func:`make_step` returns
``step(inputs) -> (loss, grads)`` for one backend. Backends are the package's own (``reference``, ``torch``,
``cpu``, ``triton``, ``cuda``, all through the public ``hsu_kernels`` API) and two rivals: ``compile``
(``torch.compile`` of the eager reference step) and ``keops`` (a pykeops ``LazyTensor`` formula).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

import hsu_kernels as H

#: The package's backends in table order, then the rivals.
HSU_BACKENDS = ("reference", "torch", "cpu", "triton", "cuda")
#: The C++ CPU kernel with its close-pair check switched off (hsu_kernels._C._set_close_pair_check, every
#: kind): beside "cpu", timed in turns with it on the same inputs, it shows what the check costs where no pair
#: is close (the results would be wrong where one is).
#: "<backend>-value": the same backend with no gradient wanted (under ``torch.no_grad``: the value-only pass),
#: beside the energy + gradient step; its flop rate still counts 4 N^2 D (read its time, or its ratio).
VARIANTS = ("cpu-nocheck", "cpu-value", "torch-value")
RIVALS = ("compile", "keops")
ALL_BACKENDS = HSU_BACKENDS + VARIANTS + RIVALS

LABELS = {
    "reference": "reference (eager)",
    "torch": "torch (tiled)",
    "cpu": "cpu (C++)",
    "triton": "triton",
    "cuda": "cuda (C++)",
    "cpu-nocheck": "cpu, close-pair check off",
    "cpu-value": "cpu (C++), value only",
    "torch-value": "torch (tiled), value only",
    "compile": "torch.compile(reference)",
    "keops": "keops (LazyTensor)",
}

#: Backends that build the full N x N matrix (skipped where it would not fit, see ``matrix_bytes``).
MATERIALIZING = ("reference", "compile")

#: docs/spec.md §8: the original code's CIFAR-100 VGG network, (N, D) per regularized layer. The hidden layers are
#: regularized in half-space mode (coefficient 1), the output layer without (coefficient 10).
VGG_HIDDEN = [(64, 27), (64, 576), (64, 576), (128, 576), (128, 1152), (128, 1152), (256, 1152), (256, 2304),
              (256, 2304), (256, 4096)]
VGG_OUTPUT = (100, 256)
OUTPUT_COEF = 10.0

#: docs/spec.md §7/§8 CoMHE: pn = 20 random projections to pd = 40 dimensions, s = 2 Riesz, half-space.
COMHE_PN, COMHE_PD, COMHE_N = 20, 40, 1024


@dataclass(frozen=True)
class Case:
    """One workload. ``kind`` is ``single`` (``[N, D]``, or ``[B, N, D]`` when ``b > 0``), ``network`` (the
    VGG layer list as one regularizer step) or ``comhe`` (``[20, N, 40]``, s = 2, half-space)."""

    kind: str
    n: int = 0
    d: int = 0
    b: int = 0

    @property
    def name(self) -> str:
        if self.kind == "network":
            return f"VGG-CIFAR step ({len(VGG_HIDDEN)} hidden + output)"
        if self.kind == "comhe":
            return f"CoMHE {COMHE_PN} proj."
        return "energy" if self.b == 0 else f"energy, batch {self.b}"

    @property
    def n_label(self) -> str:
        if self.kind == "network":
            ns = [n for n, _ in VGG_HIDDEN] + [VGG_OUTPUT[0]]
            return f"{min(ns)}-{max(ns)}"
        return str(self.n)

    @property
    def d_label(self) -> str:
        if self.kind == "network":
            ds = [d for _, d in VGG_HIDDEN] + [VGG_OUTPUT[1]]
            return f"{min(ds)}-{max(ds)}"
        return str(self.d)

    def shapes(self) -> List[Tuple[int, ...]]:
        if self.kind == "network":
            return list(VGG_HIDDEN) + [VGG_OUTPUT]
        if self.kind == "comhe":
            return [(COMHE_PN, self.n, COMHE_PD)]
        return [(self.b, self.n, self.d) if self.b else (self.n, self.d)]

    def flops(self) -> float:
        """``4 N^2 D`` per matrix (``S = W W^T`` and ``C W``, 2 N^2 D each), summed over matrices and batch.
        Half-space counts the N rows of ``W``, not 2N: the work a fused kernel must do."""
        total = 0.0
        for shape in self.shapes():
            b = shape[0] if len(shape) == 3 else 1
            total += 4.0 * b * shape[-2] ** 2 * shape[-1]
        return total

    def matrix_bytes(self, itemsize: int, half_space: bool) -> int:
        """Bytes of the largest N x N matrix a materializing backend builds (of 2N points in half-space)."""
        worst = 0
        for k, shape in enumerate(self.shapes()):
            b = shape[0] if len(shape) == 3 else 1
            hs = self.case_half_space(k, half_space)
            n = shape[-2] * (2 if hs else 1)
            worst = max(worst, b * n * n * itemsize)
        return worst

    def case_half_space(self, index: int, half_space: bool) -> bool:
        if self.kind == "network":
            return index < len(VGG_HIDDEN)
        if self.kind == "comhe":
            return True
        return half_space


def parse_cases(text: str) -> List[Case]:
    """``"N,D;B,N,D;network;comhe"`` -> cases (``comhe`` takes an optional row count: ``comhe:512``)."""
    cases = []
    for item in filter(None, (x.strip() for x in text.split(";"))):
        if item == "network":
            cases.append(Case("network"))
        elif item.startswith("comhe"):
            n = int(item.split(":", 1)[1]) if ":" in item else COMHE_N
            cases.append(Case("comhe", n=n, d=COMHE_PD, b=COMHE_PN))
        else:
            parts = [int(x) for x in item.split(",")]
            if len(parts) == 2:
                cases.append(Case("single", n=parts[0], d=parts[1]))
            elif len(parts) == 3:
                cases.append(Case("single", n=parts[1], d=parts[2], b=parts[0]))
            else:
                raise ValueError(f"--sizes entry {item!r}: expected N,D or B,N,D or network or comhe[:N]")
    return cases


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> List[torch.Tensor]:
    """Leaf tensors of ``case`` with ``requires_grad``: standard normal drawn in float64 on the CPU from
    ``seed``, then cast, so every dtype and device sees the same numbers (up to rounding)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in case.shapes():
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        out.append(w.to(device=device, dtype=dtype).requires_grad_(True))
    return out


@dataclass(frozen=True)
class Energy:
    """The energy of the single-matrix cases (the network uses it too; CoMHE is always s = 2)."""

    kind: str = "riesz"
    s: float = 1.0
    half_space: bool = False


def _loss_fn(case: Case, e: Energy, backend: str) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    """The scalar loss of ``case`` computed with an hsu_kernels backend."""
    if case.kind == "single":
        def loss(ws):
            v = H.energy(ws[0], e.kind, e.s, half_space=e.half_space, backend=backend)
            return v.sum() if v.dim() else v
    elif case.kind == "network":
        def loss(ws):
            hidden, out = list(ws[:-1]), ws[-1]
            if backend == "reference":  # the original code's way: one call per layer
                h = torch.stack([H.energy(w, e.kind, e.s, half_space=True, backend=backend) for w in hidden])
            else:
                h = H.energy_many(hidden, e.kind, e.s, half_space=True, backend=backend)
            return h.sum() + OUTPUT_COEF * H.energy(out, e.kind, e.s, backend=backend)
    else:
        def loss(ws):
            return H.energy(ws[0], "riesz", 2.0, half_space=True, backend=backend).mean()
    return loss


def _keops_energy_sum(w: torch.Tensor, e: Energy, half_space: bool) -> torch.Tensor:
    """``sum_{i<j} phi`` (Riesz only) with pykeops: ``phi`` summed over all ordered pairs, the diagonal
    masked out by an index test (exact for N < 2^24), so no N x N matrix is stored. Half-space uses
    ``E = sum_{i != j} phi(g) + sum_{i, j} phi(-g)`` (docs/spec.md §4). ``w`` is ``[N, D]`` or ``[B, N, D]``."""
    from pykeops.torch import LazyTensor

    x = w.float()
    u = x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-4)
    n = u.shape[-2]
    idx = torch.arange(n, device=u.device, dtype=torch.float32)[:, None]
    if u.dim() == 3:
        idx = idx.expand(u.shape[0], n, 1).contiguous()
    ui, uj = LazyTensor(u.unsqueeze(-2)), LazyTensor(u.unsqueeze(-3))
    ii, jj = LazyTensor(idx.unsqueeze(-2)), LazyTensor(idx.unsqueeze(-3))
    g = (ui * uj).sum(-1)
    off = (ii - jj).abs().sign()

    def phi(d2):
        if e.s == 1.0:
            return d2.rsqrt()
        if e.s == 2.0:
            return 1.0 / d2
        return d2 ** (-e.s / 2)

    total = (phi(2.0 - 2.0 * g) * off).sum(dim=u.dim() - 1).sum((-1, -2)) / 2
    if half_space:
        total = 2 * total + phi(2.0 + 2.0 * g).sum(dim=u.dim() - 1).sum((-1, -2))
    return total


def _keops_loss_fn(case: Case, e: Energy) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    if e.kind != "riesz" and case.kind != "comhe":
        raise NotImplementedError("the KeOps rival implements the Riesz kind only")

    def pairs(n, hs):
        return n * (2 * n - 1) if hs else n * (n - 1) / 2

    if case.kind == "single":
        def loss(ws):
            w = ws[0]
            return (_keops_energy_sum(w, e, e.half_space) / pairs(w.shape[-2], e.half_space)).sum()
    elif case.kind == "network":
        def loss(ws):
            h = sum(_keops_energy_sum(w, e, True) / pairs(w.shape[0], True) for w in ws[:-1])
            return h + OUTPUT_COEF * _keops_energy_sum(ws[-1], e, False) / pairs(ws[-1].shape[0], False)
    else:
        def loss(ws):
            w = ws[0]
            return (_keops_energy_sum(w, Energy("riesz", 2.0), True) / pairs(w.shape[-2], True)).mean()
    return loss


def make_step(case: Case, e: Energy, backend: str):
    """``step(inputs) -> (loss, grads)``: one forward and backward of the workload on ``backend``."""
    if backend == "keops":
        loss_fn = _keops_loss_fn(case, e)
    elif backend == "cpu-nocheck":
        loss_fn = _without_close_pair_check(_loss_fn(case, e, "cpu"))
    elif backend == "compile":
        loss_fn = torch.compile(_loss_fn(case, e, "reference"))
    elif backend.endswith("-value"):
        value_fn = _loss_fn(case, e, backend[: -len("-value")])

        def value_step(inputs):
            with torch.no_grad():
                return value_fn(inputs), ()

        return value_step
    else:
        loss_fn = _loss_fn(case, e, backend)

    def step(inputs):
        loss = loss_fn(inputs)
        grads = torch.autograd.grad(loss, inputs)
        return loss.detach(), grads

    return step


def _without_close_pair_check(loss_fn):
    """``loss_fn`` with the C++ kernel's close-pair check off during the call (and its backward)."""
    from hsu_kernels import _C

    def loss(ws):
        previous = _C._set_close_pair_check(False)
        try:
            return loss_fn(ws)
        finally:
            _C._set_close_pair_check(previous)

    return loss


def backend_unavailable(backend: str, device: str, explicit: bool = False) -> Optional[str]:
    """Why ``backend`` cannot run on ``device`` here, or None. ``explicit``: the user named it, so
    run it where it can run at all (KeOps on CPU)."""
    if backend in HSU_BACKENDS:
        if backend in H.available_backends(device):
            if backend == "triton" and torch.device(device).type == "cpu" and not explicit:
                return "Triton on CPU is the interpreter: a correctness tool, not a benchmark"
            return None
        try:
            H.resolve_backend(backend, torch.device(device))
        except ValueError as err:
            return str(err).split(": ", 1)[-1].split(". Available")[0]
        return "not available"
    if backend == "compile":
        return None
    if backend == "cpu-nocheck":
        return backend_unavailable("cpu", device, explicit)
    if backend.endswith("-value") and backend in VARIANTS:
        return backend_unavailable(backend[: -len("-value")], device, explicit)
    if backend == "keops":
        try:
            import pykeops  # noqa: F401
        except Exception:
            return "pykeops is not installed"
        if torch.device(device).type != "cuda" and not explicit:
            return "run on GPU only unless named in --backends"
        return None
    return f"unknown backend {backend!r}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float64 (Frobenius norms), 0 when both are 0."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def check_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance between two backends' energies and gradients in ``dtype``. Each backend rounds
    differently (blocking, summation order), so two float32 results differ by a few ulps times a
    condition factor; 1e-3 leaves room for that and still catches any real bug."""
    return {torch.float64: 1e-8, torch.float32: 1e-3}.get(dtype, 3e-2)


def isfinite_all(loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> bool:
    return bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(g).all()) for g in grads)


def nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()

