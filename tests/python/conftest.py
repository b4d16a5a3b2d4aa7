import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import the package from python/ unless an installed posenc is requested.
if os.environ.get("POSENC_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import posenc  # noqa: E402,F401  (registers torch.ops.posenc.*)

from hypothesis import HealthCheck, settings  # noqa: E402

# hypothesis profiles, chosen by HYPOTHESIS_PROFILE: "ci" (the default) keeps the property
# tests (test_properties.py) under a minute; "full" runs >= 10,000 generated cases in total.
# Tests that pass their own max_examples keep it.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("full", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


# The CUDA suites (test_cuda_*.py) compare the device kernels with the CPU ones. They skip
# without a GPU; POSENC_CUDA_TEST_DEVICE=cpu runs them on the CPU instead, a dry run of the
# tests' own logic (device-mismatch tests then skip).
CUDA_TEST_DEVICE = os.environ.get("POSENC_CUDA_TEST_DEVICE", "cuda")
requires_cuda = pytest.mark.skipif(
    CUDA_TEST_DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)
requires_real_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def to_device(args, device=CUDA_TEST_DEVICE):
    """Copies the tensors of an opcheck-style sample to `device` as fresh leaves (keeping
    requires_grad); other items are returned as they are."""

    def move(a):
        if isinstance(a, torch.Tensor):
            return a.detach().to(device).requires_grad_(a.requires_grad)
        return a

    return tuple(move(a) for a in args)


@pytest.fixture
def nan_filled_empty(request):
    """Deterministic mode, which also fills torch.empty results with NaN: an output element a
    kernel forgets to write then fails the comparison. Not for opcheck tests (torch's own
    checks may run ops without a deterministic implementation)."""
    if "opcheck" in request.node.name:
        yield
        return
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)
