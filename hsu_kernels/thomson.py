"""The Thomson problem: N points on the unit sphere minimizing the s = 1 Riesz (Coulomb) energy.

``python -m hsu_kernels.thomson --n 470 --dim 3`` minimizes ``E = sum_{i<j} 1/|x_i - x_j|`` with the package's
fused energy + gradient (``energy(x, "riesz", s, eps_norm=0, reduction="sum")``: exact unit points), by
L-BFGS with a strong-Wolfe line search in float64 from several random starts, and prints the best energy.

The points are optimized as free vectors ``x_i`` in R^dim and used through ``u_i = x_i / |x_i|``: the energy
is invariant to each row's scale, so its gradient is tangent to the sphere and no constraint is needed;
the rows are renormalized between L-BFGS rounds to keep the scales tame.

Known minima (s = 1, dim = 3): N = 12: 49.165253058, N = 32: 412.261274651, N = 100: 4448.350634331.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Optional, Tuple

import torch

from .ops import energy

#: Published putative global minima of the s = 1 energy on the 2-sphere (Wales et al., Cambridge Cluster
#: Database), used by the tests and printed for comparison.
KNOWN_MINIMA = {
    2: 0.500000000,
    3: 1.732050808,
    4: 3.674234614,
    5: 6.474691495,
    6: 9.985281374,
    12: 49.165253058,
    32: 412.261274651,
    100: 4448.350634331,
}


def riesz_energy(x: torch.Tensor, s: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """``sum_{i<j} |u_i - u_j|^(-s)`` of the projected points ``u_i = x_i / |x_i|`` (a differentiable scalar).

    Args:
        x: ``Tensor[N, dim]``, no zero row.
        s: Riesz exponent (> 0).
    """
    return energy(x, "riesz", s, eps_norm=0.0, reduction="sum", backend=backend)


def _lbfgs(x: torch.Tensor, s: float, max_iter: int, backend: str) -> Tuple[torch.Tensor, float]:
    x = x.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-13,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        e = riesz_energy(x, s, backend)
        e.backward()
        return e

    opt.step(closure)
    with torch.no_grad():
        u = x / x.norm(dim=1, keepdim=True)
    return u, float(riesz_energy(u, s, backend))


def minimize(
    n: int,
    dim: int = 3,
    *,
    s: float = 1.0,
    restarts: int = 4,
    seed: Optional[int] = 0,
    rounds: int = 8,
    max_iter: int = 500,
    hops: int = 0,
    hop_scale: float = 0.3,
    backend: str = "auto",
    verbose: bool = False,
) -> Tuple[torch.Tensor, float]:
    """Minimize the Riesz s-energy of ``n`` points on the unit sphere in R^``dim``.

    Args:
        n: number of points (>= 2).
        dim: ambient dimension (>= 2; 3 is the Thomson problem).
        s: Riesz exponent (> 0; 1 is Coulomb).
        restarts: independent random starts (uniform on the sphere); the best is kept.
        seed: seeds the starts (``None``: not seeded).
        rounds: L-BFGS rounds per start, renormalizing in between; a round that no longer lowers the energy
            ends the start early.
        max_iter: L-BFGS iterations per round.
        hops: basin-hopping steps after the restarts: perturb the best points by ``hop_scale`` times the
            typical spacing ``sqrt(4 pi / n)``, re-minimize, keep the result if it is lower. Small N needs
            none; for N in the hundreds the landscape has very many local minima and hops help.
        hop_scale: size of a hop, in units of the typical spacing.
        backend: the kernel backend (see :func:`hsu_kernels.energy`).
        verbose: print each start's energy.

    Returns:
        ``(points, energy)``: ``Tensor[n, dim]`` float64 unit rows, and their energy (``sum_{i<j}``).
    """
    for name, value, lo in (("n", n, 2), ("dim", dim, 2), ("restarts", restarts, 1), ("rounds", rounds, 1),
                            ("max_iter", max_iter, 1), ("hops", hops, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
        raise ValueError(f"s must be a number > 0, got {s!r}")
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    if isinstance(hop_scale, bool) or not isinstance(hop_scale, (int, float)) or not hop_scale > 0:
        raise ValueError(f"hop_scale must be a number > 0, got {hop_scale!r}")

    def descend(u: torch.Tensor) -> Tuple[torch.Tensor, float]:
        e_prev = float("inf")
        for _ in range(rounds):
            u, e = _lbfgs(u, float(s), max_iter, backend)
            if e >= e_prev * (1 - 1e-15):
                break
            e_prev = e
        return u, e

    best_u, best_e = None, float("inf")
    for r in range(restarts):
        u = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        u, e = descend(u / u.norm(dim=1, keepdim=True))
        if verbose:
            print(f"  start {r}: E = {e:.9f}", file=sys.stderr)
        if e < best_e:
            best_u, best_e = u, e
    step = hop_scale * (4 * math.pi / n) ** (1 / max(dim - 1, 1))
    for h in range(hops):
        x = best_u + step * torch.randn(best_u.shape, generator=gen, dtype=torch.float64)
        u, e = descend(x / x.norm(dim=1, keepdim=True))
        if verbose:
            print(f"  hop {h}: E = {e:.9f}{' (kept)' if e < best_e else ''}", file=sys.stderr)
        if e < best_e:
            best_u, best_e = u, e
    return best_u, best_e


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
        c = x[:, 2] if x.shape[1] >= 3 else None
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=c, cmap="viridis", s=max(4, 4000 // max(len(x), 1)))
        ax.set_box_aspect((1, 1, 1))
        if x.shape[1] > 3:
            title += f" (first 3 of {x.shape[1]} coordinates)"
    ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsu_kernels.thomson", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=470, help="number of points (default 470)")
    parser.add_argument("--dim", type=int, default=3, help="ambient dimension (default 3)")
    parser.add_argument("--s", type=float, default=1.0, help="Riesz exponent (default 1, Coulomb)")
    parser.add_argument("--restarts", type=int, default=4, help="random starts (default 4)")
    parser.add_argument("--hops", type=int, default=0, help="basin-hopping steps after the starts (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--backend", default="auto", help="kernel backend (default auto)")
    parser.add_argument("--save", metavar="points.npy", help="save the points (numpy .npy, float64 [n, dim])")
    parser.add_argument("--plot", metavar="out.png", help="save a picture of the points")
    parser.add_argument("--verbose", action="store_true", help="print every start's energy")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    u, e = minimize(args.n, args.dim, s=args.s, restarts=args.restarts, seed=args.seed, hops=args.hops,
                    backend=args.backend, verbose=args.verbose)
    dt = time.perf_counter() - t0
    print(f"N = {args.n}, dim = {args.dim}, s = {args.s:g}: energy = {e:.9f}  "
          f"({args.restarts} starts, {args.hops} hops, {dt:.1f} s)")
    known = KNOWN_MINIMA.get(args.n) if args.dim == 3 and args.s == 1.0 else None
    if known is not None:
        print(f"published minimum {known:.9f}, relative difference {(e - known) / known:.2e}")
    if args.save:
        import numpy as np

        np.save(args.save, u.numpy())
        print(f"points saved to {args.save}")
    if args.plot:
        plot_points(u, args.plot, f"N = {args.n}, E = {e:.6f}")
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
