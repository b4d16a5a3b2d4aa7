"""Determinism: under ``torch.use_deterministic_algorithms(True)`` every differentiable op's
forward and backward (and the modules with no op of their own) is bit-identical across
repeated runs and across 1 and 2 CPU threads (``torch.equal``), and across repeated runs on
CUDA (skipped without a GPU). The cases and their shapes are in op_cases.py: big enough that
every CPU kernel's at::parallel_for really splits the work over two threads.
"""
import pytest
import torch

from op_cases import CASES, Case, assert_equal_runs

IDS = [c.name for c in CASES]


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_runs_and_threads(case: Case, deterministic) -> None:
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2
    first = case.run("cpu", 0, True)
    again = case.run("cpu", 0, True)
    assert_equal_runs(first, again, f"{case.name}: two runs on 2 threads")
    torch.set_num_threads(1)
    one = case.run("cpu", 0, True)
    assert_equal_runs(first, one, f"{case.name}: 2 threads vs 1 thread")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_runs(case: Case, deterministic) -> None:
    first = case.run("cuda", 0, True)
    for _ in range(2):
        assert_equal_runs(first, case.run("cuda", 0, True), f"{case.name}: repeated CUDA runs")
