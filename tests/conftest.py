"""Every test starts from its own fixed random state: inputs are fresh for every check inside a test
(hsu_kernels.testing.rand_rows draws a new seed from the global generator each call) and differ from test
to test, but a run is reproducible, so a failure can be replayed and CI does not depend on the draw."""

import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
