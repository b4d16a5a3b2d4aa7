"""Concurrency: ops and modules called from 4 Python threads at once (each thread with its own
inputs, many iterations) give exactly the results of a single-threaded call (``torch.equal``).
The op cases are op_cases.py's (forward and backward); shared modules are called with a
different length in every thread (RotaryEmbedding "dynamic" keeps a per-length table).
"""
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List

import torch

from op_cases import CASES, assert_equal_runs
from posenc import nn as pnn
from posenc.rope_config import RopeConfig

THREADS = 4
ITERATIONS = 6


def _in_threads(work: Callable[[int], None]) -> None:
    # Switch between Python threads as often as possible, so that two threads' bytecode
    # interleaves inside a call (a module's cache read and write, say), not just between calls.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for f in [pool.submit(work, t) for t in range(THREADS)]:
                f.result()  # re-raises a thread's failure
    finally:
        sys.setswitchinterval(interval)


def test_ops_from_four_threads() -> None:
    seeds = [11 + t for t in range(THREADS)]
    # Half the cases at the big shapes (the kernels' own thread pools run inside each call).
    sizes = {c.name: i % 2 == 0 for i, c in enumerate(CASES)}
    expected: Dict[int, Dict[str, List[torch.Tensor]]] = {
        s: {c.name: c.run("cpu", s, sizes[c.name]) for c in CASES} for s in seeds
    }

    def work(t: int) -> None:
        seed = seeds[t]
        for it in range(ITERATIONS):
            # every thread walks the cases in its own order, so different ops overlap
            order = CASES[t::THREADS] + [c for i, c in enumerate(CASES) if i % THREADS != t]
            if it % 2:
                order = order[::-1]
            for c in order:
                assert_equal_runs(expected[seed][c.name], c.run("cpu", seed, sizes[c.name]),
                                  f"{c.name} in thread {t}, iteration {it}")

    _in_threads(work)


def _dynamic_rotary() -> pnn.RotaryEmbedding:
    cfg = RopeConfig(head_dim=32, rope_theta=10000.0, rope_type="dynamic", factor=4.0,
                     max_position_embeddings=64)
    return pnn.RotaryEmbedding(32, scaling=cfg)


def test_shared_modules_from_four_threads() -> None:
    torch.manual_seed(0)
    rotary = _dynamic_rotary()
    alibi = pnn.ALiBi(4)
    t5 = pnn.T5RelativeBias(4)
    kerple = pnn.KERPLEBias(4)
    txl = pnn.TransformerXLRelativeScore(64, 4, 16)
    gens = [torch.Generator().manual_seed(100 + t) for t in range(THREADS)]
    # thread t: sequences of 100 + 40 t positions, past max_position_embeddings, so that the
    # dynamic NTK table differs from thread to thread
    inputs = []
    for t in range(THREADS):
        s = 100 + 40 * t
        q = torch.randn(1, 4, s, 32, generator=gens[t])
        k = torch.randn(1, 4, s, 32, generator=gens[t])
        qx = torch.randn(1, 4, 24 + t, 16, generator=gens[t])
        inputs.append((s, q, k, qx))

    def call(t: int) -> List[torch.Tensor]:
        s, q, k, qx = inputs[t]
        with torch.no_grad():
            qr, kr = rotary(q, k)
            return [qr, kr, alibi(s, s + 3), t5(s, s), kerple(s, s + 1, 2, 0), txl(qx, mem_len=t)]

    expected = [call(t) for t in range(THREADS)]

    def work(t: int) -> None:
        for it in range(3 * ITERATIONS):
            assert_equal_runs(expected[t], call(t), f"modules in thread {t}, iteration {it}")

    _in_threads(work)
