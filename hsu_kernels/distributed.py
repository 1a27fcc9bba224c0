"""Energies of rows spread over several processes, on ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

Two layouts:

- :func:`sharded_energy`: each rank holds a different block of rows (a model-parallel classifier head); the
  result is the energy of all rows together. Shards travel around a ring with point-to-point
  ``isend``/``irecv``, so a rank holds its own shard plus the shard being sent and the one arriving, never the
  whole matrix; the transfer of the next shard overlaps the ``cross_energy`` of the current one.
- :func:`parallel_energy`: every rank holds the same rows (data-parallel training); the pairs are split
  across ranks and the energy and gradient all-reduced, so the time falls with the number of ranks.

Both split the energy of a union of row blocks ``W = W_0 u ... u W_{P-1}`` as (docs/spec.md §4)::

    E(W) = sum_r E(W_r) + c sum_{r<q} X(W_r, W_q),   c = 1, or c = 2 in half-space mode,

with ``E`` the energy (``energy(..., reduction="sum")``, which holds the half-space self pairs
``phi(-g_ii)``) and ``X`` the cross energy (``cross_energy``, which adds ``phi(-g)`` in half-space mode). The
factor 2 counts the pairs ``(w_i, w_j), (-w_i, -w_j)`` and ``(w_i, -w_j), (-w_i, w_j)`` between two blocks.

Autograd: the compiled kernels produce the gradient in the same pass as the energy, so both functions do all
their communication in the forward pass and save each rank's gradient; ``backward`` only scales it by
``grad_output`` and never communicates. Every rank must therefore back-propagate the same ``grad_output``
(the usual case: each rank adds the same regularizer with the same coefficient to its loss); the gradient a
rank receives is ``grad_output * dE/dw`` for the rows it holds. No double backward.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ._params import check_reduction, compute_dtype, make_params, num_pairs
from .ops import cross_energy, energy

STRATEGIES = ("pair", "owner")

_ENERGY_KEYS = ("kind", "s", "half_space", "normalize", "eps_norm", "eps_ang", "t", "backend", "power")

# Tags keep the three message streams between two ranks apart (gloo matches on them).
_TAG_ROWS, _TAG_GRAD, _TAG_FINAL = 11, 12, 13

#: Bytes of row and gradient buffers the ring held at once in the last ``sharded_energy`` call of this process
#: (own shard, its gradient, incoming and outgoing buffers). The benchmark reads it to show O(shard) memory.
last_ring_peak_bytes = 0


def _split_kwargs(energy_kwargs: Dict) -> Tuple[Dict, str, bool]:
    """Validate ``energy_kwargs``; return the kwargs for ``energy``/``cross_energy`` (without ``reduction``),
    the reduction and the half-space flag."""
    unknown = sorted(set(energy_kwargs) - set(_ENERGY_KEYS) - {"reduction"})
    if unknown:
        raise TypeError(f"unexpected energy argument(s) {unknown}; allowed: {list(_ENERGY_KEYS) + ['reduction']}")
    kw = dict(energy_kwargs)
    reduction = check_reduction(kw.pop("reduction", "mean"))
    p = make_params(
        kw.get("kind", "riesz"), kw.get("s", 1.0), half_space=kw.get("half_space", False),
        normalize=kw.get("normalize", True), eps_norm=kw.get("eps_norm", 1e-4), eps_ang=kw.get("eps_ang", 1e-4),
        t=kw.get("t", 2.0), power=kw.get("power"),
    )
    return kw, reduction, p.half_space


def _check_rows(w, name: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() not in (2, 3):
        raise ValueError(f"{name} must have rank 2 ([N, D]) or 3 ([B, N, D]), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got {w.dtype}")
    if w.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one column (D >= 1), got shape {tuple(w.shape)}")


def _group_info(group) -> Tuple[object, int, int, List[int]]:
    """``(group, rank in group, group size, global rank of each group rank)``."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group first")
    group = dist.group.WORLD if group is None else group
    world = dist.get_world_size(group)
    ranks = list(range(world)) if group is dist.group.WORLD else [dist.get_global_rank(group, r) for r in range(world)]
    return group, dist.get_rank(group), world, ranks


def _add_own_pairs(w3: torch.Tensor, kw: Dict, need: bool, energy_acc: torch.Tensor,
                   grad: Optional[torch.Tensor]) -> None:
    """The ring's step 0: the energy of this rank's own pairs into ``energy_acc`` (float64) and, when
    ``need``, its gradient into ``grad``."""
    e, g = _with_grads(lambda a: _self_sum(a, kw), (w3,), need)
    energy_acc += e.double()
    if need:
        grad += g[0]


def _self_sum(x3: torch.Tensor, kw: Dict) -> torch.Tensor:
    """``sum_{i<j}`` energy of each block in ``x3: [B, n, D]`` (0 pairs for n < 2, but the half-space self
    pair ``(w_i, -w_i)`` of a single row still counts)."""
    n = x3.shape[1]
    if n >= 2:
        return energy(x3, **kw, reduction="sum")
    if n == 1 and kw.get("half_space", False):
        # The energy of the two points {u, -u} is exactly the half-space self pair phi(-g_ii).
        return energy(torch.cat([x3, -x3], 1), **{**kw, "half_space": False}, reduction="sum")
    return (x3 * 0).sum((1, 2))  # keeps the autograd graph, so every caller can ask for a gradient


def _with_grads(fn, tensors: Tuple[torch.Tensor, ...], need: bool):
    """``fn(*tensors)`` and, when ``need``, its gradient with respect to each tensor (summed over batch)."""
    if not need:
        with torch.no_grad():
            return fn(*tensors), None
    leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
    with torch.enable_grad():
        e = fn(*leaves)
        grads = torch.autograd.grad(e.sum(), leaves, allow_unused=True)
    grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))
    return e.detach(), grads


def _exchange_shapes(w3: torch.Tensor, group, world: int) -> List[int]:
    """All-gather every rank's ``(B, n, D, dtype)``; check that ``B``, ``D`` and dtype agree; return the ``n``."""
    codes = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
    meta = torch.tensor([w3.shape[0], w3.shape[1], w3.shape[2], codes.get(w3.dtype, 9)], dtype=torch.int64,
                        device=w3.device)
    out = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(out, meta, group=group)
    rows = torch.stack(out).cpu().tolist()
    for r, (b, _n, d, c) in enumerate(rows):
        if (b, d, c) != (rows[0][0], rows[0][2], rows[0][3]):
            raise ValueError(
                f"w_shard must have the same batch size, D and dtype on every rank: rank 0 has (B={rows[0][0]}, "
                f"D={rows[0][2]}, dtype code {rows[0][3]}), rank {r} has (B={b}, D={d}, dtype code {c})"
            )
    return [row[1] for row in rows]



def _scaled_saved_grad(ctx, grad_out: torch.Tensor) -> torch.Tensor:
    """The backward of both Functions: the gradient saved by the forward, scaled by ``grad_out``
    (``Tensor[B]`` for batched input, a scalar otherwise)."""
    (grad,) = ctx.saved_tensors
    scale = grad_out.to(grad.dtype)
    return (scale[:, None, None] if grad.dim() == 3 else scale) * grad

class _Ring:
    """Non-blocking point-to-point messages to/from group ranks, skipping empty tensors (both ends know the
    sizes, so an empty message is never posted on either side)."""

    def __init__(self, group, ranks: List[int]):
        self.group, self.ranks = group, ranks

    def send(self, t: Optional[torch.Tensor], dst: int, tag: int):
        if t is None or t.numel() == 0:
            return None
        return dist.isend(t, self.ranks[dst], group=self.group, tag=tag)

    def recv(self, t: Optional[torch.Tensor], src: int, tag: int):
        if t is None or t.numel() == 0:
            return None
        return dist.irecv(t, self.ranks[src], group=self.group, tag=tag)

    @staticmethod
    def wait(*reqs) -> None:
        for r in reqs:
            if r is not None:
                r.wait()


def _nbytes(*ts) -> int:
    """Bytes of the distinct tensors among ``ts`` (``None`` and repeats ignored)."""
    seen = {id(t): t for t in ts if t is not None}
    return sum(t.numel() * t.element_size() for t in seen.values())


def _ring_owner(w3, kw, c, group, rank, world, ranks, sizes, need):
    """Every ordered pair of blocks on the owner of its first block: rank r computes ``X(W_r, W_q)`` for every
    ``q != r`` and keeps only the gradient with respect to its own rows. ``P - 1`` ring steps, no gradient
    traffic, twice the pair work of :func:`_ring_pair` (each ``X`` is computed on both owners)."""
    ring = _Ring(group, ranks)
    right, left = (rank + 1) % world, (rank - 1) % world
    bsz, n, d = w3.shape
    energy_acc = torch.zeros(bsz, dtype=torch.float64, device=w3.device)
    grad = torch.zeros_like(w3) if need else None
    peak = _nbytes(w3, grad)
    cur = w3
    for k in range(world):
        nxt, reqs = None, ()
        if k < world - 1:
            src = (rank - k - 1) % world
            nxt = w3.new_empty(bsz, sizes[src], d)
            reqs = (ring.send(cur, right, _TAG_ROWS), ring.recv(nxt, left, _TAG_ROWS))
            peak = max(peak, _nbytes(w3, grad, cur, nxt))
        if k == 0:
            if n > 0:
                _add_own_pairs(w3, kw, need, energy_acc, grad)
        elif n > 0 and cur.shape[1] > 0:
            e, g = _with_grads(lambda a, b: cross_energy(a, b, **kw), (w3, cur), need)
            energy_acc += 0.5 * c * e.double()  # the other owner counts the other half
            if need:
                grad += c * g[0]
        _Ring.wait(*reqs)
        cur = nxt
    return energy_acc, grad, peak


def _ring_pair(w3, kw, c, group, rank, world, ranks, sizes, need):
    """Every unordered pair of blocks once: at ring step ``k = 1..P//2`` rank r computes ``X(W_r, W_{r-k})``.
    For even P the blocks at distance P/2 meet on both of their ranks at the last step, so the work is split:
    rank ``r < P/2`` takes the first half of its own rows against the visitor, the visitor's owner the other
    half (as the visiting block). The gradient with respect to the visiting block travels on with it, one step
    behind, and goes straight to its owner after the last step. About half the pair work of
    :func:`_ring_owner`, in ``P//2`` ring steps, with one gradient message per step."""
    ring = _Ring(group, ranks)
    right, left = (rank + 1) % world, (rank - 1) % world
    bsz, n, d = w3.shape
    steps = world // 2
    split_last = world % 2 == 0
    energy_acc = torch.zeros(bsz, dtype=torch.float64, device=w3.device)
    grad = torch.zeros_like(w3) if need else None
    peak = _nbytes(w3, grad)

    cur = w3
    home, home_req = None, None
    pending_grad_send, pending_buf = None, None
    for k in range(steps + 1):
        nxt, reqs = None, ()
        if k < steps:
            src = (rank - k - 1) % world
            nxt = w3.new_empty(bsz, sizes[src], d)
            reqs = (ring.send(cur, right, _TAG_ROWS), ring.recv(nxt, left, _TAG_ROWS))
        if k == steps and need and steps >= 1:
            # Our own rows' gradient from the others comes back from rank r + P//2 after its last step.
            home = torch.empty_like(w3)
            home_req = ring.recv(home, (rank + steps) % world, _TAG_FINAL)
        peak = max(peak, _nbytes(w3, grad, home, cur, nxt, pending_buf))
        if k == 0:
            if n > 0:
                _add_own_pairs(w3, kw, need, energy_acc, grad)
            _Ring.wait(*reqs)
            cur = nxt
            continue
        q = (rank - k) % world
        g_acc, g_req = None, None
        if need:
            g_acc = torch.zeros_like(cur) if k == 1 else torch.empty_like(cur)
            if k >= 2:
                g_req = ring.recv(g_acc, left, _TAG_GRAD)
        # Which of our rows [mine) meet which rows of the visitor [theirs) at this step.
        mine, theirs = (0, n), (0, cur.shape[1])
        if split_last and k == steps:
            if rank < steps:
                mine = (0, n // 2)
            else:
                theirs = (cur.shape[1] // 2, cur.shape[1])
        x, y = w3[:, mine[0]:mine[1]], cur[:, theirs[0]:theirs[1]]
        gy = None
        if x.shape[1] > 0 and y.shape[1] > 0:
            e, g = _with_grads(lambda a, b: cross_energy(a, b, **kw), (x, y), need)
            energy_acc += c * e.double()
            if need:
                grad[:, mine[0]:mine[1]] += c * g[0]
                gy = g[1]
        _Ring.wait(g_req)
        if need:
            if gy is not None:
                g_acc[:, theirs[0]:theirs[1]].add_(gy, alpha=c)
                del gy, g
            peak = max(peak, _nbytes(w3, grad, home, cur, nxt, g_acc, pending_buf))
            _Ring.wait(pending_grad_send)  # the previous step's gradient buffer is free from here on
            pending_grad_send = ring.send(g_acc, right if k < steps else q, _TAG_GRAD if k < steps else _TAG_FINAL)
            pending_buf = g_acc  # keep the buffer alive until its send completes
        _Ring.wait(*reqs)
        cur = nxt
    _Ring.wait(pending_grad_send, home_req)
    del pending_buf
    if need and home is not None:
        grad += home
    return energy_acc, grad, peak


class _ShardedEnergy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, kw, c, group, strategy, sizes):
        global last_ring_peak_bytes
        group, rank, world, ranks = _group_info(group)
        w3 = (w if w.dim() == 3 else w.unsqueeze(0)).contiguous()
        need = ctx.needs_input_grad[0]
        ring = _ring_pair if strategy == "pair" else _ring_owner
        e, grad, peak = ring(w3.detach(), kw, c, group, rank, world, ranks, sizes, need)
        last_ring_peak_bytes = peak
        dist.all_reduce(e, group=group)
        if need:
            ctx.save_for_backward(grad if w.dim() == 3 else grad[0])
        out_dtype = compute_dtype(w.dtype)
        e = e.to(out_dtype)
        return e if w.dim() == 3 else e[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return _scaled_saved_grad(ctx, grad_out), None, None, None, None, None


def sharded_energy(w_shard: torch.Tensor, group=None, *, strategy: str = "pair", **energy_kwargs) -> torch.Tensor:
    """The energy of all rows of a matrix whose rows are spread over the ranks of ``group``.

    Rank ``r`` holds rows ``W_r``; the value is ``energy(cat([W_0, ..., W_{P-1}]), **energy_kwargs)`` on every
    rank, computed without ever gathering ``W``: the shards travel around a ring (``isend``/``irecv``), each
    rank holding its own shard, its gradient and at most one incoming and one outgoing shard (plus, with
    ``strategy="pair"``, one incoming and one outgoing gradient buffer): O(shard) memory per rank. The next
    shard's transfer overlaps the current ``cross_energy``. Shards may have different numbers of rows (even 0).

    Args:
        w_shard: ``Tensor[n_r, D]`` (or ``Tensor[B, n_r, D]``, B independent energies), this rank's rows.
            ``B``, ``D`` and dtype must agree across ranks; ``n_r`` may differ.
        group: the process group (default: the world).
        strategy: ``"pair"`` computes each pair of shards once (``P//2`` ring steps) and sends the gradient of
            the visiting shard back to its owner; ``"owner"`` computes every ordered pair of shards on the owner
            of the first (``P - 1`` ring steps, twice the pair work) and sends no gradient. Same result.
        **energy_kwargs: as in :func:`hsu_kernels.energy` (``kind``, ``s``, ``half_space``, ``normalize``,
            ``eps_norm``, ``eps_ang``, ``t``, ``reduction``, ``backend``, ``power``); ``reduction="mean"``
            divides by the pairs of all ``N = sum n_r`` rows (``N(N-1)/2``, or ``N(2N-1)`` in half-space).

    Returns:
        A scalar (``Tensor[B]`` for batched input), the same on every rank. Its backward gives this rank the
        gradient for its own rows (every rank must back-propagate the same ``grad_output``); the backward
        sends nothing.
    """
    _check_rows(w_shard, "w_shard")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    kw, reduction, half_space = _split_kwargs(energy_kwargs)
    if w_shard.shape[-2] > 0 and not bool(torch.isfinite(w_shard).all()):
        raise ValueError("w_shard contains NaN or Inf")
    group, _, world, _ = _group_info(group)
    sizes = _exchange_shapes(w_shard if w_shard.dim() == 3 else w_shard.unsqueeze(0), group, world)
    total = sum(sizes)
    if total < 2:
        raise ValueError(f"the shards hold {total} row(s) in all; an energy needs at least 2")
    e = _ShardedEnergy.apply(w_shard, kw, 2.0 if half_space else 1.0, group, strategy, sizes)
    if reduction == "mean":
        e = e / num_pairs(total, half_space)
    return e


def row_blocks(n: int, world: int) -> List[Tuple[int, int]]:
    """Contiguous row blocks ``[a_r, b_r)`` that split the pairs ``i < j`` of ``n`` rows evenly: block r pairs
    its rows with every later row, so its work is about ``sum_{i in block} (n - i)``, the area of a slice of a
    triangle, and ``a_r = n (1 - sqrt(1 - r/P))`` makes every slice equal."""
    edges = [round(n * (1 - (1 - r / world) ** 0.5)) for r in range(world)] + [n]
    for r in range(1, world + 1):
        edges[r] = max(edges[r], edges[r - 1])
    return [(edges[r], edges[r + 1]) for r in range(world)]


class _ParallelEnergy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, kw, c, group):
        group, rank, world, _ = _group_info(group)
        w3 = (w if w.dim() == 3 else w.unsqueeze(0)).detach().contiguous()
        bsz, n, _ = w3.shape
        a, b = row_blocks(n, world)[rank]
        need = ctx.needs_input_grad[0]
        e = torch.zeros(bsz, dtype=torch.float64, device=w3.device)
        grad = torch.zeros_like(w3) if need else None
        if b > a:
            es, gs = _with_grads(lambda x: _self_sum(x, kw), (w3[:, a:b],), need)
            e += es.double()
            if need:
                grad[:, a:b] += gs[0]
            if b < n:
                ex, gx = _with_grads(lambda x, y: cross_energy(x, y, **kw), (w3[:, a:b], w3[:, b:]), need)
                e += c * ex.double()
                if need:
                    grad[:, a:b] += c * gx[0]
                    grad[:, b:] += c * gx[1]
        reqs = [dist.all_reduce(e, group=group, async_op=True)]
        if need:
            reqs.append(dist.all_reduce(grad, group=group, async_op=True))
        for r in reqs:
            r.wait()
        if need:
            ctx.save_for_backward(grad if w.dim() == 3 else grad[0])
        e = e.to(compute_dtype(w.dtype))
        return e if w.dim() == 3 else e[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return _scaled_saved_grad(ctx, grad_out), None, None, None


def parallel_energy(w: torch.Tensor, group=None, **energy_kwargs) -> torch.Tensor:
    """The energy of ``w``, held identically by every rank of ``group``, with the pair work split across ranks.

    Rank r takes the row block ``[a_r, b_r)`` of :func:`row_blocks` (equal numbers of pairs per rank): the
    energy inside the block plus its ``cross_energy`` with every later row. The partial energies and
    gradients are all-reduced (one scalar per batch entry and one ``[N, D]`` gradient), so each rank does
    about ``1/P`` of the pair work.

    Args:
        w: ``Tensor[N, D]`` or ``Tensor[B, N, D]``, the same on every rank (not checked: a rank with different
            rows silently gives a meaningless result).
        group: the process group (default: the world).
        **energy_kwargs: as in :func:`hsu_kernels.energy`, ``reduction`` included.

    Returns:
        A scalar (``Tensor[B]`` batched), the same on every rank, equal to ``energy(w, **energy_kwargs)``; its
        backward gives every rank the full gradient ``dE/dw`` (already summed over ranks; the backward sends
        nothing). Under DDP, averaging that identical gradient over ranks leaves it unchanged.
    """
    _check_rows(w, "w")
    kw, reduction, half_space = _split_kwargs(energy_kwargs)
    n = w.shape[-2]
    if n < 2:
        raise ValueError(f"w must have at least 2 rows (N >= 2), got N = {n}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w contains NaN or Inf")
    e = _ParallelEnergy.apply(w, kw, 2.0 if half_space else 1.0, group)
    if reduction == "mean":
        e = e / num_pairs(n, half_space)
    return e
