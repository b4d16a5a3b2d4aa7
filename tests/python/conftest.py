import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import the package from python/ unless an installed posenc is requested.
if os.environ.get("POSENC_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import posenc  # noqa: E402,F401  (registers torch.ops.posenc.*)


# Tolerances for comparing an op in a given dtype against an fp64 reference.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
