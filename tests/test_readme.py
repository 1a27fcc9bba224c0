"""The README runs as written: its quick start, and every command it shows (and its links resolve).

Every command in a ``bash`` block of README.md, and every inline command in its text (a code span starting
with ``python``, ``make``, ``pip``, ``torchrun``, ``bash`` or ``source``), must match one entry of ``PLANS``
below, or ``test_every_command_has_a_plan`` fails: a new command in the README needs a way to run here.

What "runs" means, per entry:
- the quick start (the README's first ``python`` block) runs exactly as written, in a fresh empty folder;
- the example and benchmark commands run through the same entry point with the README's own flags, plus a
  size override so the suite stays short (each override is in ``PLANS``: e.g. the Thomson command with
  ``--n 12``, the classifier head with ``--n 512``, the digits example for one epoch, the benchmark on tiny
  workloads writing its results to a temporary folder), and must exit 0;
- the ``torchrun`` example, ``examples/train_head.py`` (shown in docs/distributed.md, which the README
  links), runs under ``torchrun`` with 2 processes on gloo, as its CPU command does, with 512 classes of
  dimension 16 and 3 steps instead of its default 8192 x 128 and 100 steps; its energy must fall at each step;
- ``pip install --no-build-isolation`` commands are run with ``--dry-run --no-deps``: pip builds the
  package metadata through setup.py and pyproject.toml without compiling (the compile is what ``make test``
  does with ``pip install --no-build-isolation -e .``);
- commands that cannot run inside the test suite (``make test`` itself, installs of other packages, a GPU,
  two machines) are listed with the reason, and not run.

Commands run in a temporary folder with ``PYTHONPATH`` pointing at this checkout: the same import as the
editable install of ``make test``, so the tests also run where the package is not installed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DISTRIBUTED = os.path.join(ROOT, "docs", "distributed.md")

#: Inline code spans that are commands (the rest are names, values, expressions).
INLINE_COMMAND = re.compile(r"`((?:python3?|make|pip|torchrun|bash|source) [^`]*)`")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _readme() -> str:
    return _read(README)


def code_blocks(text: str, lang: str) -> List[str]:
    """The bodies of the fenced code blocks of language ``lang``, in order."""
    return re.findall(r"^```" + re.escape(lang) + r"\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(text: str) -> List[str]:
    """Every command of the README: the lines of its ``bash`` blocks (comments removed) and its inline
    command code spans, in order of appearance, without duplicates."""
    found = []
    for block in code_blocks(text, "bash"):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    found += [m.group(1).strip() for m in INLINE_COMMAND.finditer(text)]
    # an inline span may list alternatives: "`make test PYTHON=python3` / `make bench PYTHON=python3`" are two
    return list(dict.fromkeys(found))


@dataclass
class Plan:
    """How the suite runs one README command: ``argv(cmd, tmp)`` gives the command line to run (None: not run,
    with ``reason``), ``cwd``: where."""

    pattern: str
    argv: Optional[Callable[[List[str], str], List[str]]] = None
    reason: str = ""
    needs_cuda: bool = False

    def matches(self, cmd: str) -> bool:
        return re.fullmatch(self.pattern, cmd) is not None


def _set(args: List[str], flag: str, *values: str) -> List[str]:
    """``args`` with ``flag`` given ``values`` (replacing the README's values when it has the flag)."""
    out = list(args)
    if flag in out:
        i = out.index(flag)
        j = i + 1
        while j < len(out) and not out[j].startswith("--"):
            j += 1
        out[i + 1:j] = list(values)
    else:
        out += [flag, *values]
    return out


def _python(args: List[str]) -> List[str]:
    """``python`` and ``python3`` are this interpreter; relative script paths are the checkout's."""
    rest = [os.path.join(ROOT, a) if a.endswith(".py") and os.path.exists(os.path.join(ROOT, a)) else a
            for a in args[1:]]
    return [sys.executable] + rest


def _bench(args: List[str], tmp: str) -> List[str]:
    if "--sweep" in args:
        args = _set(args, "--sweep-n", "128,256")
        args = _set(args, "--out", os.path.join(tmp, "sweep.md"))
    else:
        args = _set(args, "--sizes", "64,8")
        args = _set(args, "--no-memory")
        args = _set(args, "--quiet")
        args = _set(args, "--out", os.path.join(tmp, "bench.md"))
    return _python(_set(args, "--budget", "0.05"))


def _thomson(args: List[str], tmp: str) -> List[str]:
    return _python(_set(args, "--n", "12"))


def _digits(args: List[str], tmp: str) -> List[str]:
    return _python(_set(_set(args, "--epochs", "1"), "--out", tmp))


def _head(args: List[str], tmp: str) -> List[str]:
    return _python(_set(args, "--n", "512"))


def _bench_distributed(args: List[str], tmp: str) -> List[str]:
    for flag, *values in (("--n", "256"), ("--d", "16"), ("--shard", "64"), ("--mem-d", "64"),
                          ("--worlds", "1", "2"), ("--mem-worlds", "2"), ("--repeats", "1")):
        args = _set(args, flag, *values)
    return _python(args)


def _pip_dry_run(args: List[str], tmp: str) -> List[str]:
    target = args[-1]
    opts = [a for a in args[2:-1] if a != "-e"]
    editable = ["-e"] if "-e" in args else []
    return [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", *opts, *editable,
            os.path.join(ROOT, target) if not target.startswith("-") else target]


MAKE_TEST = "make test is what runs this suite"
PLANS = [
    Plan(r"python -m hsu_kernels\.thomson( .*)?", _thomson),
    Plan(r"python examples/digits_mhe\.py( .*)?", _digits),
    Plan(r"python examples/classifier_head\.py( .*)?", _head),
    Plan(r"python -m bench --device cuda( .*)?", _bench, needs_cuda=True),
    Plan(r"python -m bench( .*)?", _bench),
    Plan(r"python bench/bench_distributed\.py( .*)?", _bench_distributed),
    Plan(r"pip install --no-build-isolation (-e )?\.", _pip_dry_run),
    Plan(r'pip install --no-build-isolation "\.\[[a-z,]+\]"', _pip_dry_run),
    Plan(r"pip install \.", reason="stops at once on purpose: tests/test_install.py runs it and checks the message"),
    Plan(r"make test", reason=MAKE_TEST),
    Plan(r"make dev", reason="creates the venv and builds the package this suite runs in"),
    Plan(r"make test-long", reason="the property suites' long hypothesis profile: hours on 2 cores"),
    Plan(r"make test PYTHON=python3", reason=MAKE_TEST + " (with another interpreter)"),
    Plan(r"make bench( PYTHON=python3)?",
         reason="its two commands, python -m bench and python -m bench --sweep, are run here on tiny workloads"),
    Plan(r"source \.venv/bin/activate", reason="activates make test's venv in an interactive shell"),
    Plan(r"pip install torch==2\.13\.0", reason="make test's own set-up step (its venv)"),
    Plan(r'pip install (triton|torch|ninja|ninja "setuptools>=77")',
         reason="installs packages into the running environment (make test installs them into .venv)"),
    Plan(r"torchrun --nproc_per_node[= ]\d+ (examples/)?train_head\.py( .*)?",
         reason="test_torchrun_example runs examples/train_head.py with 2 processes, fewer classes and steps"),
    Plan(r"torchrun --nnodes[= ]\d+ .*", reason="needs two machines"),
    Plan(r"FORCE_CUDA=1 .*pip install --no-build-isolation -e \.",
         reason="needs nvcc and a CUDA build of torch; make cuda-check compiles the CUDA sources and the extension "
                "with nvcc"),
    Plan(r"bash bench/gpu_check\.sh", reason="needs a GPU"),
    Plan(r"bash bench/gpu_check\.sh --dry-run", reason="make cuda-check runs it (after building the CUDA extension)"),
    Plan(r"make triton-aot-check",
         reason=".ci/run runs it after make test (every Triton config through ptxas, minutes on 2 cores)"),
    Plan(r"make cuda-check", reason=".ci/run runs it after make test: it installs a CUDA torch in its own venv"),
]


def plan_for(cmd: str) -> Optional[Plan]:
    return next((p for p in PLANS if p.matches(cmd)), None)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(argv: List[str], cwd: str, timeout: float = 600) -> Tuple[int, str]:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _runnable() -> List[str]:
    """The README commands the suite runs, one per distinct command line after the size overrides (the
    classifier head's ``--n 15000`` and ``--n 100000`` both become ``--n 512``: run once)."""
    seen, out = set(), []
    for cmd in readme_commands(_readme()):
        plan = plan_for(cmd)
        if plan is None or plan.argv is None:
            continue
        key = tuple(plan.argv(shlex.split(cmd), "TMP"))
        if key not in seen:
            seen.add(key)
            out.append(cmd)
    return out


def test_every_command_has_a_plan():
    commands = readme_commands(_readme())
    assert len(commands) >= 10, commands  # the parser found the README's commands
    missing = [c for c in commands if plan_for(c) is None]
    assert not missing, f"README commands that no test runs or explains (add them to PLANS): {missing}"


def test_python_blocks_are_the_quick_start_and_named_files():
    """The first ``python`` block is the quick start; any other one is a file that a command runs, named on
    its first line (``# train_head.py: ...``)."""
    blocks = code_blocks(_readme(), "python")
    assert blocks, "the README has no python block"
    for block in blocks[1:]:
        assert re.match(r"# \w+\.py:", block), block.splitlines()[0]


def test_quick_start_runs_as_written(tmp_path):
    code = code_blocks(_readme(), "python")[0]
    (tmp_path / "quick_start.py").write_text(code)
    rc, out = _run([sys.executable, "quick_start.py"], str(tmp_path))
    assert rc == 0, out
    assert "energy" in out and "backends here" in out, out


@pytest.mark.parametrize("cmd", _runnable())
def test_readme_command_runs(cmd, tmp_path):
    plan = plan_for(cmd)
    if plan.needs_cuda and not torch.cuda.is_available():
        pytest.skip(f"{cmd!r} needs a CUDA device")
    argv = plan.argv(shlex.split(cmd), str(tmp_path))
    rc, out = _run(argv, str(tmp_path))
    assert rc == 0, f"{' '.join(argv)}\n{out}"
    assert "FAILED" not in out and "Traceback" not in out, out


def test_torchrun_example(tmp_path):
    """``examples/train_head.py`` (the ``torchrun`` example) under ``torchrun`` with 2 processes on gloo, small
    (see the module docstring): rank 0 prints every step, the energy falls at each, and no file is written."""
    script = os.path.join(ROOT, "examples", "train_head.py")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
            "--classes", "512", "--dim", "16", "--steps", "3", "--every", "1"]
    proc = subprocess.run(argv, cwd=str(tmp_path), env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    found = [re.fullmatch(r"step +(\d+)  energy ([0-9.]+)", line) for line in proc.stdout.splitlines()]
    steps = [(int(m.group(1)), float(m.group(2))) for m in found if m]
    assert [k for k, _ in steps] == [0, 1, 2], out  # rank 0 only, every step
    values = [v for _, v in steps]
    assert all(b < a for a, b in zip(values, values[1:])), out  # it falls (a printed value that never moved: issue 21)
    assert re.search(r"^energy [0-9.]+ -> [0-9.]+ in 3 steps", proc.stdout, flags=re.M), out
    assert list(tmp_path.iterdir()) == [], "the example wrote files"


#: Markdown links ``[text](target)`` and images ``![alt](target)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _doc_files() -> List[str]:
    docs = os.path.join(ROOT, "docs")
    return [README] + sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))


def _anchors(text: str) -> set:
    """GitHub's anchors of the headings of ``text``: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for title in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(path):
    """Every relative link of the README and of docs/*.md names a file of the checkout (and, with ``#``, one of
    its headings); nothing points outside the repository."""
    text = _read(path)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not full.startswith(ROOT + os.sep) or not os.path.exists(full):
            bad.append(target)
        elif anchor and full.endswith(".md") and anchor not in _anchors(_read(full)):
            bad.append(target)
    assert not bad, f"{os.path.relpath(path, ROOT)}: links to nothing: {bad}"


def test_readme_links_each_docs_page_once():
    """The README is for users; everything else is in docs/, and each page of it is linked from the README once."""
    text = _readme()
    pages = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    counts = {p: len(re.findall(r"\]\(docs/" + re.escape(p) + r"(#[^)]*)?\)", text)) for p in pages}
    assert all(c == 1 for c in counts.values()), counts
