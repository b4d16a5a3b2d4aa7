"""AOTInductor: a model using posenc ops, compiled to a .pt2 package with
``torch._inductor.aoti_compile_and_package``, runs from Python (``aoti_load_package``) and from
the C++ program examples/cpp/aoti_main.cpp (``torch::inductor::AOTIModelPackageLoader``, linked
against the installed posenc) with the eager outputs (issue 11).

One compile per session (tens of seconds on two cores), shared by the Python and C++ tests. The
package is exported with a dynamic sequence length and run at two lengths.

The C++ binary comes from $POSENC_EXAMPLE_BIN's folder (scripts/build_example.sh builds both
programs there); without it this file builds examples/cpp against the installed package, as
test_torchscript_cpp.py does. It never skips: a failed build is a failure.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

import posenc

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = (10, 23)  # export length, and another one the package must handle


class RopeAlibiBlock(nn.Module):
    """RoPE on q and k, ALiBi as SDPA's mask (causal), plus T5's fused attention on the same
    rotated q, k, v. Returns every intermediate posenc result so each is checked."""

    def __init__(self, num_heads: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.rope = posenc.nn.RotaryEmbedding(head_dim, rotary_dim=head_dim - 2)
        self.alibi = posenc.nn.ALiBi(num_heads, causal=True)
        self.t5 = posenc.nn.T5RelativeBias(num_heads, num_buckets=8, max_distance=16, bidirectional=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor):
        L = q.size(2)
        q, k = self.rope(q, k)
        bias = self.alibi(L, L)
        future = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(future, float("-inf")))
        fused = self.t5.attention(q, k, v)
        return q, k, bias, attn, fused


def _inputs(L):
    g = torch.Generator().manual_seed(L)
    return tuple(torch.randn(2, 4, L, 8, generator=g) for _ in range(3))


def _check(got, want):
    assert len(got) == len(want)
    # rope, alibi: the posenc kernels themselves, called by the package: bit-identical
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    # SDPA is compiled by Inductor, and the fused op reads Inductor's q/k: fp32 rounding
    for g, w in zip(got[3:], want[3:]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=2e-6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RopeAlibiBlock().eval()
    with torch.no_grad():
        m.t5.weight.normal_(0.0, 0.5)  # a visible position term
    return m


@pytest.fixture(scope="module")
def package(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("aoti") / "block.pt2"
    L = Dim("L", min=2, max=256)
    ep = torch.export.export(model, _inputs(LENGTHS[0]), dynamic_shapes=({2: L}, {2: L}, {2: L}))
    # the posenc ops must stay ops in the graph Inductor compiles
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"posenc.rope_qk.default", "posenc.alibi_bias.default", "posenc.relative_attention.default"} <= targets, targets
    out = torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
    assert Path(out) == path and path.is_file()
    return path


def test_aoti_package_runs_in_python(model, package):
    compiled = torch._inductor.aoti_load_package(str(package))
    for L in LENGTHS:
        args = _inputs(L)
        with torch.no_grad():
            want = model(*args)
        _check(compiled(*args), want)


@pytest.fixture(scope="module")
def aoti_bin(tmp_path_factory):
    given = os.environ.get("POSENC_EXAMPLE_BIN")
    if given:
        path = Path(given).parent / "posenc_aoti_example"
        assert path.is_file() and os.access(path, os.X_OK), (
            f"{path} (next to POSENC_EXAMPLE_BIN={given}) is not an executable; rebuild examples/cpp"
        )
        return path
    tmp = tmp_path_factory.mktemp("posenc_aoti_example")
    env = dict(os.environ, POSENC_EXAMPLE_BUILD_DIR=str(tmp / "build"), PYTHON=sys.executable,
               CCACHE_BASEDIR=str(tmp))
    env.pop("POSENC_PREFIX", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_example.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (
        f"building examples/cpp against the installed package failed (rc {proc.returncode})"
        f"\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    path = Path(proc.stdout.strip().splitlines()[-1]).parent / "posenc_aoti_example"
    assert path.is_file(), proc.stdout
    return path


def _run_cpp(aoti_bin, package, inputs, tmp_path, env=None):
    inputs_path, out_path = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(list(inputs), inputs_path)
    proc = subprocess.run([str(aoti_bin), str(package), str(inputs_path), str(out_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc, out_path


def test_aoti_package_runs_in_cpp(model, package, aoti_bin, tmp_path):
    for L in LENGTHS:
        args = _inputs(L)
        with torch.no_grad():
            want = model(*args)
        proc, out_path = _run_cpp(aoti_bin, package, args, tmp_path)
        assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        assert f"posenc {posenc.__version__}" in proc.stdout
        _check(torch.load(out_path), want)


def test_aoti_cpp_reports_input_errors(package, aoti_bin, tmp_path):
    # The runner always checks the number of inputs ...
    proc, _ = _run_cpp(aoti_bin, package, _inputs(5)[:2], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: expected inputs vector size to be 3, but got 2" in proc.stderr
    # ... and the exported Dim ranges only with AOTI_RUNTIME_CHECK_INPUTS=1 (off by default).
    env = dict(os.environ, AOTI_RUNTIME_CHECK_INPUTS="1")
    proc, _ = _run_cpp(aoti_bin, package, _inputs(1), tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "dim value is too small" in proc.stderr and "but got: 1" in proc.stderr, proc.stderr
