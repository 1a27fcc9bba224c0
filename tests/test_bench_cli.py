"""``python -m bench`` on tiny workloads: warm-up before every timing, and a correctness check that does not
depend on which backends ``--backends`` chose or their order."""

import os
import re
import sys
import time

import pytest
import torch

from hsu_kernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is a folder of the checkout, not part of the installed package
    sys.path.insert(0, ROOT)

from bench import runner  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.workloads import Case, Energy  # noqa: E402

#: The simulated compilation of the fake rival below: far longer than any of its calls.
COMPILE_S = 3.0


def _fake_keops(monkeypatch, call_s: float = 0.0):
    """Replace the ``keops`` step by one that, like KeOps, compiles once per formula and dimension (not per
    N) on its first call, then computes with the tiled torch backend; returns the set of compiled keys."""
    compiled = set()
    real = runner.make_step

    def make_step(case, energy, backend):
        if backend != "keops":
            return real(case, energy, backend)
        inner = real(case, energy, "torch")

        def step(inputs):
            key = (inputs[0].shape[-1], inputs[0].dtype)
            if key not in compiled:
                time.sleep(COMPILE_S)
                compiled.add(key)
            time.sleep(call_s)
            return inner(inputs)

        return step

    monkeypatch.setattr(runner, "make_step", make_step)
    return compiled


def _opts():
    return runner.Options(device="cpu", budget_s=0.05, max_repeats=3, measure_memory=False, verbose=False)


def test_compilation_is_never_timed(monkeypatch):
    compiled = _fake_keops(monkeypatch)
    rows = runner.run_case(Case("single", n=300, d=8), torch.float32, ["torch", "keops"], Energy(), _opts())
    row = rows[1]
    assert row.backend == "keops" and row.status == "ok", row
    assert compiled == {(8, torch.float32)}
    assert row.times and max(row.times) < COMPILE_S / 3, row.times
    assert any(n.startswith("warm-up (N=268)") for n in row.notes), row.notes  # 256 + 300 % 16 rows


def test_a_long_first_call_is_timed_only_after_the_warm_up(monkeypatch):
    """A checked call over LONG_CALL x budget is the row's only timed call: it must come after the warm-up."""
    _fake_keops(monkeypatch, call_s=0.3)
    rows = runner.run_case(Case("single", n=300, d=8), torch.float32, ["keops"], Energy(), _opts())
    row = rows[0]
    assert row.status == "ok" and "timed on the checked first call" in row.notes, row
    assert 0.3 <= row.time < 0.3 + COMPILE_S / 2, row.times


def test_warmup_case_keeps_formula_and_remainder_mod_16():
    assert runner.warmup_case(Case("single", n=100, d=3)) == Case("single", n=100, d=3)
    assert runner.warmup_case(Case("single", n=50000, d=64, b=2)) == Case("single", n=256 + 50000 % 16, d=64, b=2)
    assert runner.warmup_case(Case("network")) == Case("network")


def _check_errors(text: str):
    """backend label -> the relative error in its check column (rows of the energy workload)."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 10 and cells[1] == "energy":
            m = re.match(r"([0-9.e+-]+) vs float64", cells[10])
            out[cells[0]] = float(m.group(1)) if m else None
    return out


@pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built (the cpu backend)")
@pytest.mark.parametrize("backends", ["cpu,reference", "reference,cpu", "cpu", "torch,reference"])
def test_reference_check_does_not_depend_on_the_chosen_backends(backends, tmp_path):
    """N = 1024 on the 2-sphere in float32: the C++ kernel (float64 geometry for small D) is far more accurate
    than the eager reference, so a bound taken from whichever backend ran first failed the reference's own
    row with ``--backends cpu,reference``. The bound is twice the reference's error, computed always."""
    out = tmp_path / "r.md"
    rc = main(["--sizes", "1024,3", "--backends", backends, "--no-memory", "--budget", "0.02", "--repeats", "2",
               "--quiet", "--out", str(out)])
    text = out.read_text()
    assert rc == 0 and "FAILED" not in text, text
    errors = _check_errors(text)
    assert set(errors) == {{"cpu": "cpu (C++)", "reference": "reference (eager)", "torch": "torch (tiled)"}[b]
                           for b in backends.split(",")}, text
    assert all(e is not None for e in errors.values()), text
    # every row's error bounded from above: float32 rounding of ~5e5 pair terms and a few tiled partial sums,
    # far inside 64 units of float32 roundoff (2^-24) for any summation order a backend or a CPU's vector width
    # may take; the check column must not depend on which backend ran first (the case that used to fail)
    assert all(e < 64 * 2.0**-24 for e in errors.values()), errors


def test_default_output_is_bench_out_not_the_committed_results(tmp_path, monkeypatch):
    """Without --out a run writes bench/out/<device>-<date>.md (git-ignored, created on demand), never into the
    committed bench/results/; --out writes exactly the path given, creating its folders."""
    from bench import report

    here = os.path.join(ROOT, "bench")
    assert os.path.dirname(report.default_path("cpu")) == os.path.join(here, "out")
    assert os.path.dirname(report.default_path("cpu", "sweep-", ".png")) == os.path.join(here, "out")
    monkeypatch.setattr(report, "OUT_DIR", str(tmp_path / "out"))  # as bench/out/ before its first run
    args = ["--sizes", "64,8", "--backends", "torch", "--no-memory", "--budget", "0.02", "--repeats", "1", "--quiet"]
    assert main(args) == 0
    written = list((tmp_path / "out").iterdir())
    assert [p.name for p in written] == [os.path.basename(report.default_path("cpu"))], written
    exact = tmp_path / "some" / "where" / "table.txt"
    assert main(args + ["--out", str(exact)]) == 0
    assert exact.read_text().startswith("# hsu-kernels benchmark")
