"""The property-based suite on the Triton backend (see tests/test_properties.py), under the Triton
interpreter in its own process (``TRITON_INTERPRET=1 python -m pytest tests/test_triton_properties.py``) or
on a GPU.

- ``test_triton_well_spread`` holds Triton to the oracle and error model on float32 rows drawn as they come
  (no structure, no extreme scale), every pair at least 1/16 away from ``+-1``: the kernels' own fast path,
  with no row sent to the host's fix-up;
- ``test_triton_structured`` draws the full suite's problems (duplicates, antipodes, near-parallel rows,
  huge and tiny norms, the Gaussian kind at any scale): the fix-up of close pairs, the power-of-two
  rescaling of rows and the online log-sum-exp (issue 13). It starts from the issue's duplicates of norm
  100 at D = 40 (an infinite energy before the port).
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip(
        "the Triton backend needs a CUDA GPU or the Triton CPU interpreter: run "
        "`TRITON_INTERPRET=1 python -m pytest tests/test_triton_properties.py`",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed (pip install hsu-kernels[triton])")

from hypothesis import assume, example, given, settings  # noqa: E402
from oracle import Problem  # noqa: E402
from properties import check, closest, oracle, problems  # noqa: E402

from hsu_kernels import triton as ht  # noqa: E402
from hsu_kernels.testing import rand_rows  # noqa: E402

if not ht.available():
    pytest.skip(f"hsu_kernels.triton failed to import: {ht.import_error()!r}", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on masked lanes

DEVICE = "cpu" if INTERPRET else "cuda"
# Under the interpreter every example runs the kernels in Python (seconds each): `make test` (the ci
# profile) draws 60 per test there; on a GPU, and with HSU_HYPOTHESIS_PROFILE=long, the profile's count.
EXAMPLES = 60 if INTERPRET and os.environ.get("HSU_HYPOTHESIS_PROFILE", "ci") == "ci" else settings().max_examples


def _on_device(pb: Problem) -> Problem:
    return Problem(pb.w.to(DEVICE), pb.kind, pb.s, pb.t, pb.eps_norm, pb.eps_ang, pb.half_space, pb.normalize,
                   pb.reduction)


@settings(max_examples=EXAMPLES)
@given(pb=problems(dtypes=(torch.float32,), structured=False, dims=(16, 24, 33, 40, 64), max_s=6.0))
def test_triton_well_spread(pb):
    assume(closest(pb) >= 1 / 16)
    truth = oracle(pb)
    if pb.kind == "gaussian":
        assume(float(truth[0].min()) > -60.0)  # exp of the log terms stays in float32
    check("triton", _on_device(pb), tuple(t.to(DEVICE) for t in truth[:4]))


def _duplicates_of_norm_100() -> Problem:
    w = torch.nn.functional.normalize(rand_rows(1, 6, 40, seed=40), dim=-1) * 100
    w[0, 1] = w[0, 0]
    return Problem(w.float(), "riesz", 1.0)


@settings(max_examples=EXAMPLES)
@example(pb=_duplicates_of_norm_100())
@given(pb=problems(dtypes=(torch.float32,)))
def test_triton_structured(pb):
    check("triton", _on_device(pb), tuple(t.to(DEVICE) for t in oracle(pb)[:4]))
