"""The sphere solver (hsu_kernels/thomson.py): published Thomson minima for small N, the
universally optimal configurations for other exponents and the log energy, Tammes optima, the
icosadeltahedral seeds, and the command line's checks (all before any work) and progress output.

The N = 470 run of the README (``python -m hsu_kernels.thomson --n 470 --dim 3``) is a manual command, not a
test; test_seed_of_470_relaxes_to_the_published_minimum checks the seed it relies on."""

import math
import sys

import numpy as np
import pytest
import torch

from hsu_kernels import thomson


def _coulomb(u):
    """sum_{i<j} 1/|u_i - u_j| in float64, independently of the package's kernels."""
    d = torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(u), len(u), 1)
    return float((1 / d[iu[0], iu[1]]).sum())


@pytest.mark.parametrize("n", [12, 32, 100])
def test_reaches_published_thomson_minimum(n):
    res = thomson.minimize(n, 3, restarts=8, seed=0)
    known = thomson.KNOWN_MINIMA[n]
    assert res.published is not None and res.published.value == known
    assert abs(res.value - known) / known < 1e-9, f"N = {n}: got {res.value:.9f}, published {known:.9f}"
    assert res.gap < 1e-9
    u = res.points
    assert u.shape == (n, 3) and u.dtype == torch.float64
    assert torch.allclose(u.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert abs(_coulomb(u) - res.value) / res.value < 1e-12  # the value is the energy of the points returned


def test_small_published_values_and_determinism():
    for n in (2, 3, 4, 5, 6, 8, 15):
        res = thomson.minimize(n, 3, restarts=4, seed=n)
        assert abs(res.value - thomson.KNOWN_MINIMA[n]) / thomson.KNOWN_MINIMA[n] < 1e-9, n
    a = thomson.minimize(10, 3, restarts=2, seed=3)
    b = thomson.minimize(10, 3, restarts=2, seed=3)
    assert torch.equal(a.points, b.points) and a.value == b.value


def test_seed_of_470_relaxes_to_the_published_minimum():
    """The first icosadeltahedral seed for N = 470, the (4, 4) lattice of 482 points without its 12
    disclinations, relaxes to the published global minimum (what the CLI's default run finds first)."""
    x = thomson.icosadeltahedral_seeds(470, 1, torch.Generator().manual_seed(0))
    assert x.shape == (1, 470, 3)
    _, e = thomson.descend(x, thomson.energy_objective("riesz", 1.0))
    assert abs(float(e[0]) - thomson.KNOWN_MINIMA[470]) / thomson.KNOWN_MINIMA[470] < 1e-9


def test_caspar_klug_lattices():
    spatial = pytest.importorskip("scipy.spatial", reason="the triangulation of the points comes from scipy")
    for h, k in ((1, 0), (1, 1), (2, 0), (2, 1), (3, 2), (4, 4)):
        x = thomson.caspar_klug(h, k)
        m = 10 * (h * h + h * k + k * k) + 2
        assert x.shape == (m, 3)
        assert torch.allclose(x.norm(dim=1), torch.ones(m, dtype=torch.float64))
        # in the triangulation (the convex hull), the 12 disclinations come first with five neighbours each,
        # and every other point has six
        degree = np.zeros(m, dtype=int)
        faces = spatial.ConvexHull(x.numpy()).simplices
        edges = {tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[0], f[2]))}
        for a, b in edges:
            degree[a] += 1
            degree[b] += 1
        assert (degree[:12] == 5).all() and (degree[12:] == 6).all(), (h, k)
    assert [(h, k) for h, k, _ in thomson._lattices_near(470, 12)] == [(4, 4)]


def test_universal_optima_for_other_exponents_and_log():
    """N = 4, 6, 12: the regular configurations for every Riesz s and the log energy (Cohn-Kumar)."""
    for kind, s in (("riesz", 0.5), ("riesz", 2.0), ("riesz", 3.5), ("log", 1.0)):
        for n in (4, 6):
            res = thomson.minimize(n, 3, kind=kind, s=s, restarts=2, seed=1)
            ref = thomson.universal_optimum(n, kind, s)
            assert res.published.value == ref
            assert abs(res.value - ref) / abs(ref) < 1e-10, (kind, s, n, res.value, ref)
    # the log kind is -log r^2: the regular tetrahedron has 6 pairs at r^2 = 8/3
    assert thomson.universal_optimum(4, "log") == pytest.approx(-6 * math.log(8 / 3), rel=1e-15)
    assert thomson.universal_optimum(12, "riesz", 1.0) == pytest.approx(thomson.KNOWN_MINIMA[12], abs=1e-9)
    assert thomson.universal_optimum(5, "riesz", 1.0) is None


def test_tammes():
    for n in (6, 8):
        res = thomson.minimize(n, 3, kind="tammes", restarts=4, seed=2)
        ref = thomson.TAMMES_ANGLES[n].value
        assert res.gap is not None and res.gap < 1e-9, (n, math.degrees(res.value), math.degrees(ref))
        # the value is the smallest angle of the points returned
        u = res.points
        g = (u @ u.T - 2 * torch.eye(n, dtype=torch.float64)).max()
        assert abs(math.acos(float(g)) - res.value) < 1e-9


def test_other_dimensions():
    # 4 points on the circle: the square, energy 4/sqrt(2) + 2/2 with s = 1
    res = thomson.minimize(4, 2, restarts=2, seed=1)
    assert abs(res.value - (4 / np.sqrt(2) + 1.0)) < 1e-9
    # N = D + 1 points in R^D form a regular simplex for any s: all pair distances sqrt(2 (D+1)/D)
    res = thomson.minimize(5, 4, s=2.0, restarts=1, seed=2)
    assert abs(res.value - 10 / (2 * 5 / 4)) < 1e-8


def test_hops_never_make_it_worse():
    a = thomson.minimize(60, 3, restarts=2, seed=4, seeds=False)
    b = thomson.minimize(60, 3, restarts=2, seed=4, seeds=False, hops=2, batch=2)
    assert b.value <= a.value and b.minimizations == a.minimizations + 4


def test_bad_arguments_of_minimize():
    with pytest.raises(ValueError, match="n must be"):
        thomson.minimize(1)
    with pytest.raises(TypeError, match="dim"):
        thomson.minimize(5, 3.0)
    with pytest.raises(ValueError, match="s must be"):
        thomson.minimize(5, s=0)
    with pytest.raises(ValueError, match="restarts"):
        thomson.minimize(5, restarts=0)
    with pytest.raises(ValueError, match="kind"):
        thomson.minimize(5, kind="coulomb")
    with pytest.raises(ValueError, match="time_limit"):
        thomson.minimize(5, time_limit=-1.0)


# ----------------------------------------------------------------------------------------------- the CLI

@pytest.fixture
def no_run(monkeypatch):
    """Makes any run of the solver fail the test: the checks under test must come before it."""
    def boom(*args, **kwargs):
        raise AssertionError("the solver ran although the arguments were bad")

    monkeypatch.setattr(thomson, "minimize", boom)


@pytest.mark.parametrize("argv,message", [
    (["--n", "1"], "--n: must be >= 2"),
    (["--n", "ten"], "--n: expected an integer"),
    (["--s", "-1"], "--s: must be a finite number > 0"),
    (["--s", "nan"], "--s: must be a finite number > 0"),
    (["--kind", "coulomb"], "--kind: invalid choice"),
    (["--restarts", "0"], "--restarts: must be >= 1"),
    (["--time-limit", "0"], "--time-limit: must be a finite number > 0"),
    (["--backend", "gpu"], "--backend: choose from"),
])
def test_cli_argument_errors(argv, message, capsys, no_run):
    with pytest.raises(SystemExit) as exc:
        thomson.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err and "Traceback" not in err


def test_cli_checks_plot_and_save_before_the_run(tmp_path, monkeypatch, capsys, no_run):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for option in ("--save", "--plot"):
        with pytest.raises(SystemExit) as exc:
            thomson.main(["--n", "12", option, str(blocked / "sub" / "out.x")])
        assert exc.value.code == 2 and "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        thomson.main(["--n", "12", "--save", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    with pytest.raises(SystemExit) as exc:
        thomson.main(["--n", "12", "--plot", str(tmp_path / "out.png")])
    assert exc.value.code == 2 and "--plot needs matplotlib" in capsys.readouterr().err


def test_cli_refuses_an_unwritable_folder(tmp_path, capsys, no_run):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write to any folder, so there is no unwritable folder to test with")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(SystemExit):
        thomson.main(["--n", "12", "--save", str(locked / "p.npy")])
    assert "not writable" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder to create inside it
        thomson.main(["--n", "12", "--save", str(locked / "out" / "p.npy")])
    assert "cannot create" in capsys.readouterr().err


def test_cli_run_save_plot_and_progress(tmp_path, capsys):
    """--save and --plot create their missing folders (the README writes to examples/out/, which a fresh
    checkout lacks) and write exactly the paths given; progress goes to stderr only when asked for or when
    stderr is a terminal (under pytest it is not)."""
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    pts, png = tmp_path / "examples" / "out" / "points.data", tmp_path / "examples" / "out" / "thomson.png"
    assert thomson.main(["--n", "12", "--restarts", "2", "--save", str(pts), "--plot", str(png), "--progress"]) == 0
    captured = capsys.readouterr()
    assert "energy = 49.165253058" in captured.out and "published optimum 49.165253058" in captured.out
    assert f"points saved to {pts}" in captured.out and f"plot saved to {png}" in captured.out
    assert "riesz N=12" in captured.err and "minimizations; best 49.165253058" in captured.err  # when asked
    x = np.load(pts)  # the path as given: no .npy appended
    assert x.shape == (12, 3) and png.stat().st_size > 1000
    for quiet in ([], ["--no-progress"]):
        assert thomson.main(["--n", "12", "--restarts", "2", *quiet]) == 0
        assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        thomson.main(["--progress", "--no-progress"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_inside_a_minimization(tqdm_installed, capsys, monkeypatch):
    """The progress shows the running minimization's iteration, its lowest energy and largest gradient row
    while it runs (N = 470 spends minutes in its first minimization on a busy machine)."""
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = thomson._Progress(True, "riesz N=40", interval=0.0)
    assert (bar.bar is not None) == tqdm_installed
    bar.start("batch 1/1 (2 starts)")
    x = thomson.random_points(2, 40, 3, torch.Generator().manual_seed(0))
    _, e = thomson.descend(x, thomson.energy_objective("riesz", 1.0), max_iter=5, monitor=bar.monitor)
    bar.update(2, f"best {float(e.min()):.9f}")
    bar.close()
    err = capsys.readouterr().err
    assert bar.iterations == 5
    for text in ("riesz N=40", "batch 1/1 (2 starts)", "iter 5: 2 of 2 running, lowest E ", "max |grad| ",
                 "2 minimizations", f"best {float(e.min()):.9f}"):
        assert text in err, (text, err)


def test_cli_log_and_tammes_reports(capsys):
    assert thomson.main(["--n", "6", "--kind", "log", "--restarts", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Smale's log energy" in out and "Cohn and Kumar" in out
    assert thomson.main(["--n", "6", "--kind", "tammes", "--restarts", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "90.00000000 deg" in out and "published optimum" in out
