""".ci/stages.sh, which `make test`, `make test-long` and .ci/run use: every stage runs whatever the others
did, the summary names each failed stage, and the exit status is 1 when any failed."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = os.path.join(ROOT, ".ci", "stages.sh")


def _run(*args):
    return subprocess.run(["bash", STAGES, *args], capture_output=True, text=True, timeout=60)


def test_a_failed_stage_does_not_stop_the_others_and_is_named(tmp_path):
    mark = tmp_path / "ran"
    proc = _run("first", "exit 3", "second", f"touch {mark}", "third", "false | true")
    assert proc.returncode == 1, proc.stdout
    assert mark.exists(), proc.stdout  # the stage after the failed one ran
    assert "==== failed stages: first" in proc.stdout, proc.stdout
    assert "first" in proc.stdout and "FAILED (exit 3)" in proc.stdout, proc.stdout
    assert "second" in proc.stdout and "third" in proc.stdout


def test_pipefail_inside_a_stage():
    proc = _run("piped", "false | cat")
    assert proc.returncode == 1 and "==== failed stages: piped" in proc.stdout, proc.stdout


def test_all_passed_and_bad_usage():
    proc = _run("a", "true", "b", "echo hi")
    assert proc.returncode == 0 and "==== every stage passed" in proc.stdout, proc.stdout
    assert _run("lonely").returncode == 2
