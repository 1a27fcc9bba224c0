"""The Thomson problem solver reaches the published s = 1 minima (Wales et al.) to 1e-6 relative."""

import time

import numpy as np
import pytest
import torch

from hsu_kernels import thomson


@pytest.mark.parametrize("n", [12, 32, 100])
def test_reaches_published_minimum(n):
    t0 = time.perf_counter()
    u, e = thomson.minimize(n, 3, restarts=4, seed=0)
    known = thomson.KNOWN_MINIMA[n]
    assert abs(e - known) / known < 1e-6, f"N = {n}: got {e:.9f}, published {known:.9f}"
    assert u.shape == (n, 3) and u.dtype == torch.float64
    assert torch.allclose(u.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    # the returned energy is the energy of the returned points, by an independent float64 sum
    d = torch.cdist(u, u)
    iu = torch.triu_indices(n, n, 1)
    assert abs(float((1 / d[iu[0], iu[1]]).sum()) - e) / e < 1e-10
    if n == 100:
        assert time.perf_counter() - t0 < 20, "N = 100 should take well under 20 s"


def test_small_known_values_and_seed():
    for n in (2, 3, 4, 5, 6):
        _, e = thomson.minimize(n, 3, restarts=2, seed=n)
        assert abs(e - thomson.KNOWN_MINIMA[n]) / thomson.KNOWN_MINIMA[n] < 1e-8
    a, _ = thomson.minimize(10, 3, restarts=1, seed=3)
    b, _ = thomson.minimize(10, 3, restarts=1, seed=3)
    assert torch.equal(a, b)


def test_other_dimensions_and_s():
    # 4 points in R^2: the square, energy 4/sqrt(2) + 2/2 with s = 1
    _, e = thomson.minimize(4, 2, restarts=2, seed=1)
    assert abs(e - (4 / np.sqrt(2) + 1.0)) < 1e-9
    # N = D + 1 points in R^D form a regular simplex for any s: all pair distances sqrt(2 (D+1)/D)
    u, e = thomson.minimize(5, 4, s=2.0, restarts=1, seed=2)
    assert abs(e - 10 / (2 * 5 / 4)) < 1e-8


def test_cli_save_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    pts, png = tmp_path / "points.npy", tmp_path / "out.png"
    assert thomson.main(["--n", "12", "--restarts", "1", "--save", str(pts), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "energy = 49.165253058" in out and "published minimum" in out
    x = np.load(pts)
    assert x.shape == (12, 3) and png.stat().st_size > 1000


def test_bad_args():
    with pytest.raises(ValueError, match="n must be"):
        thomson.minimize(1)
    with pytest.raises(TypeError, match="dim"):
        thomson.minimize(5, 3.0)
    with pytest.raises(ValueError, match="s must be"):
        thomson.minimize(5, s=0)
    with pytest.raises(ValueError, match="restarts"):
        thomson.minimize(5, restarts=0)


def test_hops_never_make_it_worse():
    u0, e0 = thomson.minimize(60, 3, restarts=1, seed=4)
    u1, e1 = thomson.minimize(60, 3, restarts=1, seed=4, hops=3)
    assert e1 <= e0
    with pytest.raises(ValueError, match="hop_scale"):
        thomson.minimize(5, hops=1, hop_scale=0.0)
