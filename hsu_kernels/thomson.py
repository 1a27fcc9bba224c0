"""Points on a sphere that minimize an energy: the Thomson problem and its relatives.

``python -m hsu_kernels.thomson --n 470 --dim 3`` minimizes the Coulomb energy ``sum_{i<j} 1/|x_i - x_j|`` of 470
points on the unit sphere (the Thomson problem) and compares the result with the published minimum. The same
solver handles every Riesz exponent (``--s``), the logarithmic energy (``--kind log``, Smale's 7th problem) and
maximal separation (``--kind tammes``, the Tammes problem), in any dimension. While it runs, a progress line on
stderr (when stderr is a terminal, or with ``--progress``) shows the running minimization's iteration, lowest
energy and largest gradient row; files are written only where ``--save``/``--plot`` say (the README uses
``examples/out/``, which git ignores), missing folders created.

How it searches (energies; the Tammes problem below):

1. Starts, minimized together as one batch ``[B, N, dim]`` (each energy and gradient is one call of the
   package's fused kernel, :func:`hsu_kernels.energy`): uniform random points and, on the 2-sphere,
   icosadeltahedral seeds. Low-energy Thomson configurations are icosadeltahedral lattices (the Caspar-Klug
   construction, ``N' = 10 (h^2 + hk + k^2) + 2`` points with 12 five-fold disclinations) with defects; a seed
   takes such a lattice with ``N'`` near ``N`` and removes (or adds) ``|N' - N|`` points next to the 12
   disclinations, spread over them in turn. For N = 470 the lattice (h, k) = (4, 4) minus its 12 disclinations
   relaxes to the published minimum.
2. Local minimization by L-BFGS on the product of spheres (Riemannian: gradients projected on the tangent
   planes, points renormalized after each step, the history transported by projection), in float64, with a
   backtracking line search per batch member; members that have converged leave the batch.
3. Basin hopping from the best distinct minima: a move displaces the points of a random cap (radius 2.5
   nearest-neighbour distances) by a random vector of 0.5 nearest-neighbour distances, which lets dislocations
   and disclinations glide and annihilate; the batch relaxes at once and each walker accepts its move by the
   Metropolis rule at a temperature of 1e-4 of the energy per point.

The Tammes problem (maximize the smallest distance): each random start and its minimizer for Riesz energies
of rising exponent (s = 8, 32, 128, where the nearest pairs dominate) are pushed apart by bisection on the
separation ``t``: a configuration is feasible for ``t`` when L-BFGS drives
``sum_{i<j} max(0, t^2 - |x_i - x_j|^2)^2`` to zero from it; the reported value is
:func:`hsu_kernels.min_separation` of the result, as an angle. (The Riesz minimizers alone miss the optima
of N = 13 and 14; the inflated random starts find them, N = 13 in about one start of 30.)

Published values (``PUBLISHED``), printed beside the result whenever ``N`` is listed:

* Thomson (s = 1, 2-sphere): the putative global minima of the Cambridge Cluster Database (D. J. Wales et al.;
  Wales and Ulker, Phys. Rev. B 74, 212101 (2006); Wales, McKay and Altschuler, Phys. Rev. B 79, 224115
  (2009)), as tabulated in Wikipedia's "Thomson problem"; every value listed is reproduced to 1e-9 by this
  solver (tests/test_thomson.py and the README).
* Riesz s-energies (any s > 0) and the log energy, 2-sphere, N = 2, 3, 4, 6, 12: the antipodal pair,
  equilateral triangle, regular tetrahedron, octahedron and icosahedron are optimal for every completely
  monotone potential of the squared distance (Cohn and Kumar, J. Amer. Math. Soc. 20 (2007) 99-148), so for
  every Riesz s-energy and, as their s -> 0 limit, the log energy; the values are computed from these
  configurations' distances (:func:`universal_optimum`).
* Tammes (2-sphere): the proven optima for N = 2-6, 8, 9, 12 in closed form (Fejes Toth 1943; Schutte and
  van der Waerden 1951) and N = 13, 14 (Musin and Tarasov, Discrete Comput. Geom. 48 (2012) 128-141 and
  Exp. Math. 24 (2015) 460-468; digits from OEIS A217695, A383860).

Conventions: the package's ``log`` kind is ``-log |x_i - x_j|^2`` (the original MHE code's), twice the usual
log energy ``sum log(1/|x_i - x_j|)`` of Smale's problem; results are reported in both.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ._params import check_int, check_number
from .ops import energy, min_separation, pair_d2_tiles

KINDS = ("riesz", "log", "tammes")

#: ``(x [b, N, dim], members [b]) -> (values [b], gradients [b, N, dim])``: ``members`` are the indices, in the
#: batch given to :func:`descend`, of the configurations in ``x`` (a per-member objective needs them).
Objective = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]

#: Called by :func:`descend` after each iteration: ``(iteration, active [b], values [B], gradients [B, N, dim])``
#: (``active``: the members still running; values and tangent gradients of the whole batch, so far).
Monitor = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Published:
    """A published value and where it comes from."""

    value: float
    source: str


_CCD = "Cambridge Cluster Database (Wales et al.), via Wikipedia 'Thomson problem'"

#: Thomson problem (Riesz s = 1 on the 2-sphere): published putative global minima of ``sum_{i<j} 1/r_ij``.
KNOWN_MINIMA: Dict[int, float] = {
    2: 0.500000000,
    3: 1.732050808,
    4: 3.674234614,
    5: 6.474691495,
    6: 9.985281374,
    8: 19.675287861,
    12: 49.165253058,
    15: 80.670244114,
    32: 412.261274651,
    56: 1337.094945276,
    100: 4448.350634331,
    110: 5413.549294192,
    470: 104822.886324279,
}

#: Tammes problem on the 2-sphere: the proven largest smallest angle (radians) between N points.
TAMMES_ANGLES: Dict[int, Published] = {
    2: Published(math.pi, "antipodal pair"),
    3: Published(2 * math.pi / 3, "Fejes Toth 1943"),
    4: Published(math.acos(-1 / 3), "Fejes Toth 1943 (tetrahedron)"),
    5: Published(math.pi / 2, "Schutte and van der Waerden 1951"),
    6: Published(math.pi / 2, "Fejes Toth 1943 (octahedron)"),
    8: Published(math.acos((2 * math.sqrt(2) - 1) / 7), "Schutte and van der Waerden 1951 (square antiprism)"),
    9: Published(math.acos(1 / 3), "Schutte and van der Waerden 1951"),
    12: Published(math.acos(1 / math.sqrt(5)), "Fejes Toth 1943 (icosahedron)"),
    13: Published(0.997223592438119, "Musin and Tarasov 2012; OEIS A217695"),
    14: Published(0.971634742886224, "Musin and Tarasov 2015; OEIS A383860"),
}

# Pair distances of the universally optimal configurations on the 2-sphere (Cohn and Kumar 2007):
# {N: [(chord length, number of pairs)]}.
_UNIVERSAL = {
    2: [(2.0, 1)],
    3: [(math.sqrt(3.0), 3)],
    4: [(math.sqrt(8.0 / 3.0), 6)],
    6: [(math.sqrt(2.0), 12), (2.0, 3)],
    12: [(math.sqrt(2 - 2 / math.sqrt(5)), 30), (math.sqrt(2 + 2 / math.sqrt(5)), 30), (2.0, 6)],
}


def universal_optimum(n: int, kind: str, s: float = 1.0) -> Optional[float]:
    """The minimal energy of ``n`` points on the 2-sphere for N = 2, 3, 4, 6, 12 (Cohn and Kumar 2007), in the
    package's convention: Riesz ``sum r^-s``; log ``sum -log r^2``. None for other N or kinds."""
    pairs = _UNIVERSAL.get(n)
    if pairs is None or kind not in ("riesz", "log"):
        return None
    if kind == "riesz":
        return sum(c * r ** -s for r, c in pairs)
    return sum(-c * math.log(r * r) for r, c in pairs)


def published(n: int, dim: int, kind: str, s: float = 1.0) -> Optional[Published]:
    """The published optimum for this problem, if the tables above have it (energy, or angle for Tammes)."""
    if dim != 3:
        return None
    if kind == "tammes":
        return TAMMES_ANGLES.get(n)
    if kind == "riesz" and s == 1.0 and n in KNOWN_MINIMA:
        return Published(KNOWN_MINIMA[n], _CCD)
    value = universal_optimum(n, kind, s)
    return None if value is None else Published(value, "Cohn and Kumar 2007 (universally optimal)")


# ------------------------------------------------------------------------------------------------ energies

def riesz_energy(x: torch.Tensor, s: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """``sum_{i<j} |u_i - u_j|^(-s)`` of the projected points ``u_i = x_i / |x_i|`` (differentiable).

    Args:
        x: ``Tensor[N, dim]`` or ``Tensor[B, N, dim]``, no zero row.
        s: Riesz exponent (> 0).
    """
    return energy(x, "riesz", s, eps_norm=0.0, reduction="sum", backend=backend)


def energy_objective(kind: str, s: float, backend: str = "auto") -> Objective:
    """``x: [B, N, dim] -> (E: [B], dE/dx: [B, N, dim])`` for the Riesz (``kind="riesz"``) or log energy,
    from one fused energy-and-gradient call for the whole batch."""

    def objective(x: torch.Tensor, members: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        e = energy(x, kind, s, eps_norm=0.0, reduction="sum", backend=backend)
        (g,) = torch.autograd.grad(e.sum(), x)
        return e.detach(), g

    return objective


def _log_riesz_objective(s: float, backend: str) -> Objective:
    """``log(E_s) / s`` (a scale that stays finite for large s; same minimizers as E_s)."""
    inner = energy_objective("riesz", s, backend)

    def objective(x, members):
        e, g = inner(x, members)
        return torch.log(e) / s, g / (s * e)[:, None, None]

    return objective


def _overlap_objective(t: torch.Tensor) -> Objective:
    """``sum_{i<j} max(0, t_b^2 - |u_i - u_j|^2)^2`` for batch member b (dense: Tammes sizes are small)."""

    def objective(x, members):
        x = x.detach().requires_grad_(True)
        u = x / x.norm(dim=-1, keepdim=True)
        d2 = (2 - 2 * u @ u.transpose(1, 2)).clamp_min(0)
        n = x.shape[1]
        iu = torch.triu_indices(n, n, 1)
        over = torch.relu(t[members, None] ** 2 - d2[:, iu[0], iu[1]])
        e = (over * over).sum(-1)
        (g,) = torch.autograd.grad(e.sum(), x)
        return e.detach(), g

    return objective


# ------------------------------------------------------------------------------------- local minimization

def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((-1, -2))


def _tangent(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v - (v * x).sum(-1, keepdim=True) * x


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def nearest_neighbour_distance(x: torch.Tensor) -> torch.Tensor:
    """Mean over points of the distance to the nearest other point, per batch member: ``[B, N, dim] -> [B]``
    (rows in blocks: at most 2^22 distances at a time)."""
    block = max(1, (1 << 22) // (x.shape[0] * x.shape[1]))
    best = [d2.amin(-1) for _, _, d2 in pair_d2_tiles(_unit(x), False, block, ordered=True)]
    return torch.cat(best, 1).clamp_min(0).sqrt().mean(-1)


def descend(x: torch.Tensor, objective: Objective, *, max_iter: int = 3000, history: int = 12,
            gtol: float = 0.0, monitor: Optional[Monitor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimize ``objective`` over unit rows: batched Riemannian L-BFGS on the product of spheres.

    Each iteration evaluates the whole active batch at once (one kernel call). A member stops when its
    line search can no longer lower the energy (converged to rounding), when its largest gradient row is
    below ``gtol``, or after ``max_iter`` iterations.

    Args:
        x: ``Tensor[B, N, dim]`` float64 unit rows.
        objective: see :data:`Objective`.
        monitor: see :data:`Monitor` (the progress display; it must be cheap or throttle itself).

    Returns:
        ``(x, E)``: the minimized unit rows and their objective values.
    """
    x = _unit(x.detach().clone())
    active = torch.arange(x.shape[0])
    e, g = objective(x, active)
    g = _tangent(x, g)
    S: List[torch.Tensor] = []
    Y: List[torch.Tensor] = []
    R: List[torch.Tensor] = []
    n = x.shape[1]
    spacing = math.sqrt(4 * math.pi / n) if x.shape[2] == 3 else 2 * math.pi / n
    tiny = torch.finfo(torch.float64).tiny
    for it in range(max_iter):
        xa, ga, ea = x[active], g[active], e[active]
        # a first step moves the fastest point by a tenth of the spacing
        first = 0.1 * spacing / ga.norm(dim=-1).amax(-1).clamp_min(tiny)
        q = -ga
        alphas = []
        for s_k, y_k, r_k in zip(reversed(S), reversed(Y), reversed(R)):
            a = r_k * _dot(s_k, q)
            q = q - a[:, None, None] * y_k
            alphas.append(a)
        if S:
            yy = _dot(Y[-1], Y[-1])
            q = q * torch.where(yy > 0, _dot(S[-1], Y[-1]) / yy.clamp_min(tiny), first)[:, None, None]
        else:
            q = q * first[:, None, None]
        for s_k, y_k, r_k, a in zip(S, Y, R, reversed(alphas)):
            q = q + (a - r_k * _dot(y_k, q))[:, None, None] * s_k
        d = _tangent(xa, q)
        slope = _dot(d, ga)
        bad = ~(slope < 0)
        if bad.any():  # not a descent direction (or not finite): restart from the gradient
            d[bad] = -ga[bad] * first[bad, None, None]
            slope = _dot(d, ga)
        # no point moves by more than half a spacing in one step
        t = torch.clamp(0.5 * spacing / d.norm(dim=-1).amax(-1).clamp_min(tiny), max=1.0)
        done = torch.zeros(len(active), dtype=torch.bool)
        x_new, e_new, g_new = xa.clone(), ea.clone(), ga.clone()
        for _ in range(30):
            idx = (~done).nonzero()[:, 0]
            xt = _unit(xa[idx] + t[idx, None, None] * d[idx])
            et, gt = objective(xt, active[idx])
            ok = et <= ea[idx] + 1e-4 * t[idx] * slope[idx]
            sel = idx[ok]
            x_new[sel], e_new[sel], g_new[sel] = xt[ok], et[ok], _tangent(xt[ok], gt[ok])
            done[sel] = True
            t[idx[~ok]] *= 0.25
            if done.all():
                break
        sk = _tangent(x_new, x_new - xa)
        yk = g_new - _tangent(x_new, ga)
        sy = _dot(sk, yk)
        x[active], e[active], g[active] = x_new, e_new, g_new
        S = [_tangent(x_new, v) for v in S]
        Y = [_tangent(x_new, v) for v in Y]
        good = sy > tiny
        S.append(torch.where(good[:, None, None], sk, torch.zeros_like(sk)))
        Y.append(torch.where(good[:, None, None], yk, torch.zeros_like(yk)))
        R.append(torch.where(good, 1.0 / sy.clamp_min(tiny), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), R.pop(0)
        if monitor is not None:
            monitor(it, active, e, g)
        stop = ~done | (ea - e_new <= 1e-16 * ea.abs()) | (g_new.norm(dim=-1).amax(-1) <= gtol)
        if stop.any():
            keep = ~stop
            active = active[keep]
            S, Y, R = [v[keep] for v in S], [v[keep] for v in Y], [v[keep] for v in R]
            if len(active) == 0:
                break
    return x, e


# ---------------------------------------------------------------------------------------------- starts

def random_points(b: int, n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """``b`` sets of ``n`` points uniform on the unit sphere in R^dim, float64."""
    return _unit(torch.randn(b, n, dim, generator=gen, dtype=torch.float64))


def _icosahedron() -> Tuple[torch.Tensor, List[List[int]]]:
    """The 12 vertices and the 20 faces (counterclockwise seen from outside) of the regular icosahedron."""
    p = (1 + math.sqrt(5)) / 2
    v = torch.tensor([[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
                      [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], dtype=torch.float64)
    v = _unit(v)
    edge = float((v[0] - v[1]).norm())
    faces = []
    for i in range(12):
        for j in range(i + 1, 12):
            for k in range(j + 1, 12):
                if max(float((v[a] - v[b]).norm()) for a, b in ((i, j), (j, k), (i, k))) < edge * 1.01:
                    normal = torch.linalg.cross(v[j] - v[i], v[k] - v[i])
                    faces.append([i, j, k] if float(normal @ (v[i] + v[j] + v[k])) > 0 else [i, k, j])
    return v, faces


def caspar_klug(h: int, k: int) -> torch.Tensor:
    """The icosadeltahedral lattice (h, k): ``10 (h^2 + hk + k^2) + 2`` points on the unit sphere, the points of
    the triangular lattice inside each face of an icosahedron whose vertices are lattice points (h, k) apart,
    projected radially. Its 12 five-fold points are the icosahedron's vertices (the first 12 rows)."""
    v, faces = _icosahedron()
    s3 = math.sqrt(3)
    b = torch.tensor([h + 0.5 * k, s3 / 2 * k], dtype=torch.float64)
    c = torch.tensor([0.5 * b[0] - s3 / 2 * b[1], s3 / 2 * b[0] + 0.5 * b[1]], dtype=torch.float64)
    inv = torch.linalg.inv(torch.stack([b, c], 1))
    r = h + k + 1
    grid = torch.arange(-r, 2 * r + 1, dtype=torch.float64)
    i, j = torch.meshgrid(grid, grid, indexing="ij")
    q = torch.stack([i + 0.5 * j, s3 / 2 * j], -1).reshape(-1, 2)
    lam = q @ inv.T
    bary = torch.cat([1 - lam.sum(-1, keepdim=True), lam], -1)
    bary = bary[(bary >= -1e-9).all(-1)].clamp_min(0)
    interior = (bary > 1e-9).all(-1)
    pts = [v]
    edge_pts = []
    for f in faces:
        p = _unit(bary @ v[f])
        pts.append(p[interior])
        on_edge = ~interior & ((bary > 1e-9).sum(-1) == 2)  # edge points that are not vertices
        edge_pts.append(p[on_edge])
    e = torch.cat(edge_pts)
    if len(e):  # each edge point appears on both faces of its edge
        d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
        dup = (d < 1e-6) & torch.triu(torch.ones_like(d, dtype=torch.bool), 1)
        e = e[~dup.any(0)]
    out = torch.cat(pts + [e])
    assert len(out) == 10 * (h * h + h * k + k * k) + 2, (h, k, len(out))
    return out


def _lattices_near(n: int, window: int) -> List[Tuple[int, int, int]]:
    """(h, k, N') of the icosadeltahedral lattices with |N' - n| <= window, nearest first (h >= k >= 0)."""
    out = []
    h = 1
    while 10 * h * h + 2 <= n + window or h == 1:
        for k in range(0, h + 1):
            m = 10 * (h * h + h * k + k * k) + 2
            if abs(m - n) <= window:
                out.append((abs(m - n), h, k, m))
        h += 1
    return [(h, k, m) for _, h, k, m in sorted(out)]


def icosadeltahedral_seeds(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``count`` starts of ``n`` points on the 2-sphere made from icosadeltahedral lattices (see the
    module docstring): ``[b, n, 3]``, ``b <= count`` (0 when no lattice is near ``n``). The first seed of each
    lattice removes (adds) points exactly at (next to) the disclinations; the others break ties at random."""
    lattices = _lattices_near(n, max(12, n // 8))
    if not lattices or count <= 0:
        return torch.empty(0, n, 3, dtype=torch.float64)
    seeds = []
    for t in range(count):
        h, k, m = lattices[t % len(lattices)]
        x = caspar_klug(h, k)
        a = math.sqrt(8 * math.pi / (math.sqrt(3) * m))  # nearest-neighbour distance of the lattice
        order = torch.randperm(12, generator=gen) if t >= len(lattices) else torch.arange(12)
        if m > n:
            # remove m - n points, in turn the nearest remaining point to each disclination
            d = torch.cdist(x[:12], x)
            if t >= len(lattices):
                d = d + 0.2 * a * torch.rand(d.shape, generator=gen, dtype=torch.float64)
            keep = torch.ones(m, dtype=torch.bool)
            for r in range(m - n):
                row = d[order[r % 12]].clone()
                row[~keep] = float("inf")
                keep[int(row.argmin())] = False
            x = x[keep]
        elif m < n:
            # add n - m points, each half a spacing from a disclination in a random direction
            extra = []
            for r in range(n - m):
                c = x[order[r % 12]]
                step = _tangent(c[None, None], torch.randn(1, 1, 3, generator=gen, dtype=torch.float64))[0, 0]
                extra.append(_unit(c + 0.5 * a * step / step.norm()))
            x = torch.cat([x, torch.stack(extra)])
        # a small random displacement breaks the lattice's symmetry (a symmetric saddle would stay one)
        x = _unit(x + 1e-3 * a * torch.randn(x.shape, generator=gen, dtype=torch.float64))
        seeds.append(x)
    return torch.stack(seeds)


# -------------------------------------------------------------------------------------------------- solver

@dataclass
class Result:
    """The best configuration found.

    Attributes:
        points: ``Tensor[n, dim]`` float64 unit rows.
        value: the energy (``sum_{i<j}``, the package's convention) or, for Tammes, the smallest angle (radians).
        kind, s, dim: the problem.
        published: the published optimum for this problem, if known (:data:`PUBLISHED` tables).
        minimizations: local minimizations run; seconds: wall time.
        history: (seconds, best value) each time the best improved.
    """

    points: torch.Tensor
    value: float
    kind: str
    s: float
    dim: int
    published: Optional[Published] = None
    minimizations: int = 0
    seconds: float = 0.0
    history: List[Tuple[float, float]] = field(default_factory=list)

    @property
    def gap(self) -> Optional[float]:
        """Relative distance to the published value (positive when worse), or None."""
        if self.published is None:
            return None
        ref = self.published.value
        return (self.value - ref) / abs(ref) if self.kind != "tammes" else (ref - self.value) / ref


class _Progress:
    """Progress on stderr (tqdm when installed, else a status line), or nothing.

    It counts the L-BFGS iterations and shows, at most every ``interval`` seconds, what runs (the batch of
    starts or the basin-hopping round), inside the running minimization its iteration, how many of its
    configurations still run, their lowest value and largest gradient row, then the minimizations done
    and the best value so far. Between displays an iteration costs one clock reading.
    """

    def __init__(self, enabled: bool, desc: str, interval: float = 0.5):
        self.bar = None
        self.enabled, self.desc, self.interval = enabled, desc, interval
        self.iterations = 0
        self.minimizations = 0
        self.stage = self.current = self.best = ""
        self._shown = -math.inf
        self._width = 0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            # no total: a run usually ends early (published optimum reached, time limit), and an estimate of
            # the time left from the total would mislead
            # the displays are throttled here (``interval``), so tqdm shows each one it is given
            self.bar = tqdm(desc=desc, unit=" it", file=sys.stderr, dynamic_ncols=True, mininterval=0, miniters=1)
        except ImportError:
            self.bar = None

    def start(self, stage: str) -> None:
        """A minimization (a batch of starts, a hop, a Tammes round) begins."""
        if self.enabled:
            self.stage, self.current = stage, ""
            if self._due():
                self._show()

    def monitor(self, it: int, active: torch.Tensor, e: torch.Tensor, g: torch.Tensor) -> None:
        """:data:`Monitor` of :func:`descend` for energies: the batch's lowest value (finished members
        included, so it never rises) and the largest gradient row of the members still running."""
        if not self.enabled:
            return
        self.iterations += 1
        if not self._due():
            return
        gmax = float(g[active].norm(dim=-1).amax())
        self.current = (f"iter {it + 1}: {len(active)} of {len(e)} running, lowest E {float(e.min()):.9f}, "
                        f"max |grad| {gmax:.1e}")
        self._show()

    def tick(self, it: int, active: torch.Tensor, e: torch.Tensor, g: torch.Tensor) -> None:
        """:data:`Monitor` that only counts (the Tammes penalties are no value to show)."""
        if not self.enabled:
            return
        self.iterations += 1
        if self._due():
            self._show()

    def update(self, k: int, best: str) -> None:
        """``k`` minimizations done; ``best``: the best value so far."""
        if not self.enabled:
            return
        self.minimizations += k
        self.best, self.current = best, ""
        if self._due():
            self._show()

    def _due(self) -> bool:
        return time.monotonic() - self._shown >= self.interval

    def _show(self) -> None:
        self._shown = time.monotonic()
        done = f"{self.minimizations} minimizations" + (" done" if self.stage else "")
        post = "; ".join(t for t in (self.stage, self.current, done, self.best) if t)
        if self.bar is not None:
            self.bar.set_postfix_str(post, refresh=False)
            if self.iterations > self.bar.n:
                self.bar.update(self.iterations - self.bar.n)
            else:
                self.bar.refresh()
        else:
            line = f"{self.desc}: {self.iterations} it; {post}"
            print("\r" + line.ljust(self._width), end="", file=sys.stderr, flush=True)
            self._width = len(line)

    def close(self) -> None:
        """The final state (the minimizations and the best value), then the line ends."""
        if not self.enabled:
            return
        self.stage = self.current = ""
        self._show()
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


def _distinct(e: torch.Tensor, k: int, rel: float = 1e-10) -> List[int]:
    """Indices of the ``k`` lowest values of ``e`` that differ from each other by more than ``rel``."""
    out: List[int] = []
    for i in torch.argsort(e).tolist():
        if all(abs(float(e[i]) - float(e[j])) > rel * abs(float(e[j])) for j in out):
            out.append(i)
        if len(out) == k:
            break
    return out


def minimize(
    n: int,
    dim: int = 3,
    *,
    kind: str = "riesz",
    s: float = 1.0,
    restarts: int = 16,
    hops: int = 0,
    batch: int = 16,
    seeds: bool = True,
    seed: Optional[int] = 0,
    time_limit: Optional[float] = None,
    stop_at_published: bool = True,
    backend: str = "auto",
    progress: bool = False,
) -> Result:
    """Points on the unit sphere in R^``dim`` minimizing an energy, or maximizing their separation.

    Args:
        n: number of points (>= 2).
        dim: ambient dimension (>= 2; 3 is the 2-sphere of the Thomson and Tammes problems).
        kind: ``"riesz"`` (``sum r^-s``; s = 1 is the Thomson problem), ``"log"`` (``sum -log r^2``, the
            package's log kind: twice Smale's ``sum log 1/r``) or ``"tammes"`` (largest smallest distance).
        s: the Riesz exponent (> 0; ignored by the other kinds).
        restarts: starts, minimized in batches of ``batch``: icosadeltahedral seeds first (2-sphere,
            ``seeds=True``, up to a quarter of them, at least one), the rest uniform random.
        hops: basin-hopping rounds after the starts; each moves and relaxes ``batch`` walkers at once
            (energies only).
        batch: configurations per kernel call.
        seeds: use icosadeltahedral seeds (2-sphere, energies).
        seed: seeds the random generator (None: not seeded).
        time_limit: seconds after which no new batch is started (None: no limit).
        stop_at_published: stop once the best value matches the published optimum to 1e-9 relative.
        backend: kernel backend (see :func:`hsu_kernels.energy`).
        progress: show a progress bar on stderr.

    Returns:
        :class:`Result` with the best configuration.
    """
    check_int("n", n, 2)
    check_int("dim", dim, 2)
    check_int("restarts", restarts, 1)
    check_int("hops", hops, 0)
    check_int("batch", batch, 1)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    s = check_number("s", s, positive=kind == "riesz")
    time_limit = None if time_limit is None else check_number("time_limit", time_limit, positive=True)
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    t0 = time.perf_counter()
    pub = published(n, dim, kind, s)
    result = Result(torch.empty(0), math.inf if kind != "tammes" else -math.inf, kind, s, dim, pub)
    bar = _Progress(progress, f"{kind} N={n}")

    def better(v: float) -> bool:
        return v < result.value if kind != "tammes" else v > result.value

    def record(x: torch.Tensor, values: torch.Tensor, count: int) -> None:
        result.minimizations += count
        i = int(values.argmin()) if kind != "tammes" else int(values.argmax())
        if better(float(values[i])):
            result.points, result.value = x[i].clone(), float(values[i])
            result.history.append((time.perf_counter() - t0, result.value))
        post = f"best {result.value:.9f}" if kind != "tammes" else f"best {math.degrees(result.value):.8f} deg"
        if result.gap is not None:
            post += f" ({result.gap:+.1e} from published)"
        bar.update(count, post)

    def reached() -> bool:
        return stop_at_published and result.gap is not None and result.gap <= 1e-9

    def out_of_time() -> bool:
        return time_limit is not None and time.perf_counter() - t0 > time_limit

    objective = energy_objective(kind, s, backend) if kind != "tammes" else None
    # the seeds (if any) form the first batch on their own: they are the likeliest to be the answer, and
    # relax much faster than random starts
    batches: List[torch.Tensor] = []
    if seeds and dim == 3 and kind != "tammes":
        seeded = icosadeltahedral_seeds(n, min(restarts, max(1, restarts // 4)), gen)
        batches += list(torch.split(seeded, batch)) if len(seeded) else []
    left = restarts - sum(len(x) for x in batches)
    if left > 0:
        batches += list(torch.split(random_points(left, n, dim, gen), batch))
    found_x, found_e = [], []
    for k, x in enumerate(batches):
        bar.start(f"batch {k + 1}/{len(batches)} ({len(x)} starts)")
        if kind == "tammes":
            x, v = _tammes(x, backend, bar=bar)
        else:
            x, v = descend(x, objective, monitor=bar.monitor)
        found_x.append(x)
        found_e.append(v)
        record(x, v, len(x))
        if reached() or out_of_time():
            break
    if kind != "tammes" and hops > 0 and not reached() and not out_of_time():
        xs, es = torch.cat(found_x), torch.cat(found_e)
        pick = _distinct(es, batch)
        walkers = torch.cat([xs[pick]] * math.ceil(batch / len(pick)))[:batch].clone()
        we = torch.cat([es[pick]] * math.ceil(batch / len(pick)))[:batch].clone()
        temperature = 1e-4 * float(we.min()) / n
        for h in range(hops):
            bar.start(f"hop {h + 1}/{hops} ({batch} walkers)")
            a = nearest_neighbour_distance(walkers)
            centre = walkers[torch.arange(batch), torch.randint(0, n, (batch,), generator=gen)]
            inside = ((walkers - centre[:, None]).norm(dim=-1) < 2.5 * a[:, None]).to(torch.float64)
            noise = torch.randn(walkers.shape, generator=gen, dtype=torch.float64)
            y, ey = descend(walkers + 0.5 * a[:, None, None] * inside[..., None] * noise, objective,
                            monitor=bar.monitor)
            luck = torch.rand(batch, generator=gen, dtype=torch.float64)
            accept = (ey < we) | (luck < torch.exp(-(ey - we) / temperature))
            walkers[accept], we[accept] = y[accept], ey[accept]
            record(y, ey, batch)
            if reached() or out_of_time():
                break
    bar.close()
    result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------------- Tammes

def _angle(x: torch.Tensor) -> torch.Tensor:
    """Smallest angle between the rows of each ``[N, dim]`` in ``x: [B, N, dim]``, from min_separation."""
    d2 = -min_separation(x.detach(), eps_norm=0.0)
    return 2 * torch.asin((d2.clamp(0, 4) / 4).sqrt())


def _chord(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(_angle(x) / 2)


def _tammes(x: torch.Tensor, backend: str, rtol: float = 1e-10,
            bar: Optional[_Progress] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Largest smallest angle from the starts ``x: [B, N, dim]`` (module docstring). Two candidates per start:
    the start itself and its Riesz continuation (s = 8, 32, 128); each is then pushed apart by bisection on
    the separation t with the overlap penalty, between its own separation and 1.03 times the best of the
    continuations. Returns the better candidate of each start and its angle, ``([B, N, dim], [B])``."""
    bar = bar or _Progress(False, "")
    stage = bar.stage
    b = x.shape[0]
    smooth = x.clone()
    for s in (8.0, 32.0, 128.0):
        bar.start(f"{stage}, Riesz s = {s:g} continuation")
        smooth, _ = descend(smooth, _log_riesz_objective(s, backend), max_iter=1000, monitor=bar.tick)
    y = torch.cat([smooth, x])
    lo = _chord(y)
    hi = torch.full_like(lo, 1.03 * float(lo[:b].max()))
    for r in range(60):
        if bar.enabled:
            widest = math.degrees(2 * math.asin(min(1.0, float(lo.max()) / 2)))
            bar.start(f"{stage}, bisection {r + 1}: widest {widest:.8f} deg")
        mid = 0.5 * (lo + hi)
        z, _ = descend(y, _overlap_objective(mid), max_iter=200, monitor=bar.tick)
        got = _chord(z)
        better = got > lo
        y[better], lo[better] = z[better], got[better]
        # mid counts as infeasible when the penalty could not be driven to zero; lo >= hi only when the
        # upper bound was too low
        hi = torch.where(got >= mid, torch.maximum(hi, lo * 1.001), mid)
        if bool(((hi - lo) <= rtol * lo).all()):
            break
    pick = torch.where(lo[:b] >= lo[b:], torch.arange(b), torch.arange(b, 2 * b))
    y = y[pick]
    return y, _angle(y)


# ---------------------------------------------------------------------------------------------------- CLI

def plot_points(u: torch.Tensor, path: str, title: str = "") -> None:
    """Save a picture of points on the 2-sphere (or the circle) as PNG. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = u.detach().cpu().numpy()
    fig = plt.figure(figsize=(6, 6))
    if x.shape[1] == 2:
        ax = fig.add_subplot(111)
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.7"))
        ax.scatter(x[:, 0], x[:, 1], s=12)
        ax.set_aspect("equal")
    else:
        ax = fig.add_subplot(111, projection="3d")
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=x[:, 2], cmap="viridis", s=max(4, 4000 // max(len(x), 1)))
        ax.set_box_aspect((1, 1, 1))
        if x.shape[1] > 3:
            title += f" (first 3 of {x.shape[1]} coordinates)"
    ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _positive_int(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _check_output(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """Before the run: ``path`` can be written, its missing folders created (by :func:`_make_folder`, after
    the run); errors name ``option``."""
    if os.path.isdir(path):
        parser.error(f"{option} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        parser.error(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        what = "the folder" if existing == folder else f"cannot create {folder}: the folder"
        parser.error(f"{option} {path}: {what} {existing} is not writable")


def _make_folder(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hsu_kernels.thomson", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=_positive_int(2), default=470, help="number of points (default 470)")
    parser.add_argument("--dim", type=_positive_int(2), default=3, help="ambient dimension (default 3)")
    parser.add_argument("--kind", choices=KINDS, default="riesz",
                        help="riesz (sum r^-s), log (sum -log r^2) or tammes (max. smallest distance)")
    parser.add_argument("--s", type=_positive_float, default=1.0, help="Riesz exponent (default 1: Thomson)")
    parser.add_argument("--restarts", type=_positive_int(1), default=16, help="starts (default 16)")
    parser.add_argument("--hops", type=_positive_int(0), default=60,
                        help="basin-hopping rounds after the starts (default 60)")
    parser.add_argument("--batch", type=_positive_int(1), default=16, help="configurations per kernel call")
    parser.add_argument("--time-limit", type=_positive_float, default=900.0,
                        help="seconds after which no new batch starts (default 900)")
    parser.add_argument("--no-seeds", action="store_true", help="random starts only (no icosadeltahedral seeds)")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop when the published optimum is reached")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--backend", default="auto", help="kernel backend (default auto)")
    parser.add_argument("--save", metavar="PATH.npy",
                        help="save the points (numpy .npy, float64 [n, dim]), e.g. examples/out/points.npy; "
                             "missing folders are created (default: not saved)")
    parser.add_argument("--plot", metavar="PATH.png",
                        help="save a picture of the points (needs matplotlib), e.g. examples/out/thomson.png")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="progress on stderr even when it is not a terminal (default: only on a terminal)")
    shown.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # everything that could fail after the run is checked before it
    from . import ops

    if args.backend not in ops.BACKENDS:
        parser.error(f"--backend: choose from {', '.join(ops.BACKENDS)}, got {args.backend!r}")
    try:
        ops.resolve_backend(args.backend, torch.device("cpu"), args.dim, torch.float64)
    except ValueError as err:
        parser.error(f"--backend: {err}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
        _check_output(parser, "--plot", args.plot)
    if args.save:
        _check_output(parser, "--save", args.save)

    res = minimize(args.n, args.dim, kind=args.kind, s=args.s, restarts=args.restarts, hops=args.hops,
                   batch=args.batch, seeds=not args.no_seeds, seed=args.seed, time_limit=args.time_limit,
                   stop_at_published=not args.keep_going, backend=args.backend,
                   progress=args.progress or (not args.no_progress and sys.stderr.isatty()))
    what = {"riesz": f"Riesz s = {args.s:g} energy", "log": "log energy (sum -log r^2)",
            "tammes": "smallest angle"}[args.kind]
    shown = f"{res.value:.9f}" if args.kind != "tammes" else f"{res.value:.12f} rad = {math.degrees(res.value):.8f} deg"
    print(f"N = {args.n}, dim = {args.dim}: {what} = {shown}  "
          f"({res.minimizations} local minimizations, {res.seconds:.1f} s)")
    if args.kind == "log":
        print(f"  Smale's log energy sum log(1/r) = {res.value / 2:.9f}")
    if res.published is not None:
        ref = res.published.value
        ref_text = f"{ref:.9f}" if args.kind != "tammes" else f"{ref:.12f} rad"
        print(f"published optimum {ref_text} ({res.published.source}); relative difference {res.gap:+.2e}")
    if args.save:
        import numpy as np

        _make_folder(args.save)
        with open(args.save, "wb") as f:  # a file object: np.save would append .npy to another suffix
            np.save(f, res.points.numpy())
        print(f"points saved to {args.save}")
    if args.plot:
        _make_folder(args.plot)
        plot_points(res.points, args.plot, f"N = {args.n}, {what} = {res.value:.9g}")
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
