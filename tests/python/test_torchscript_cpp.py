"""TorchScript into C++: a model made of posenc.nn modules, scripted and saved in Python, runs
in the standalone examples/cpp program (find_package(posenc), torch::jit::load) and gives
Python's outputs.

The example binary comes from $POSENC_EXAMPLE_BIN; without it, this test builds examples/cpp
against the installed posenc package (posenc.cmake_prefix_path, as a C++ user does after
`pip install`) with scripts/build_example.sh. It never skips: a missing build is a failure.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from posenc_test_models import TinyPositionalAttention

import posenc

ROOT = Path(__file__).resolve().parents[2]


class _Inputs(torch.nn.Module):
    """Container the C++ program reads: attribute `inputs` is the tuple of forward args."""

    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs


class _RopeNoPositions(torch.nn.Module):
    def __init__(self, rope):
        super().__init__()
        self.rope = rope

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int):
        return self.rope(q, k, None, offset)


@pytest.fixture(scope="module")
def example_bin(tmp_path_factory):
    given = os.environ.get("POSENC_EXAMPLE_BIN")
    if given:
        path = Path(given)
        assert path.is_file() and os.access(path, os.X_OK), f"POSENC_EXAMPLE_BIN={given} is not an executable"
        return path
    tmp = tmp_path_factory.mktemp("posenc_example")
    # What find_package users need ships inside the package itself.
    package = Path(posenc.__file__).resolve().parent
    assert (package / "include" / "posenc" / "nn" / "rotary.h").is_file()
    assert (Path(posenc.cmake_prefix_path) / "posenc" / "posencConfig.cmake").is_file()
    assert list(package.glob("libposenc.so"))
    env = dict(
        os.environ,
        POSENC_EXAMPLE_BUILD_DIR=str(tmp / "build"),
        PYTHON=sys.executable,
        # Temporary paths differ per run; let ccache hash them relative to the temp root.
        CCACHE_BASEDIR=str(tmp),
    )
    env.pop("POSENC_PREFIX", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_example.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, (
        f"building examples/cpp against the installed package failed (rc {proc.returncode}); "
        f"install posenc first (pip install --no-build-isolation .) or set POSENC_EXAMPLE_BIN"
        f"\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), proc.stdout
    # Built against the package: its CMake cache names the package's config folder.
    cache = (tmp / "build" / "CMakeCache.txt").read_text()
    assert f"posenc_DIR:PATH={Path(posenc.cmake_prefix_path) / 'posenc'}" in cache, cache[:2000]
    return path


def _run_cpp(example_bin, scripted, inputs, tmp_path):
    model_path, inputs_path, out_path = tmp_path / "model.pt", tmp_path / "inputs.pt", tmp_path / "out.pt"
    scripted.save(str(model_path))
    torch.jit.script(_Inputs(inputs)).save(str(inputs_path))
    proc = subprocess.run(
        [str(example_bin), str(model_path), str(inputs_path), str(out_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert f"posenc {posenc.__version__}" in proc.stdout
    return torch.load(str(out_path))


def _assert_same(got, want):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_scripted_model_runs_in_cpp(example_bin, tmp_path):
    torch.manual_seed(0)
    model = TinyPositionalAttention().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        want = model(x, 3)
        torch.testing.assert_close(scripted(x, 3), want, rtol=1e-6, atol=1e-6)
    got = _run_cpp(example_bin, scripted, (x, 3), tmp_path)
    _assert_same(got, want)


def _cope_trained():
    # pos_emb starts at zeros (the paper's init): give it values so the output is not all zeros
    m = posenc.nn.CoPE(5, 4, scale=0.7)
    with torch.no_grad():
        m.pos_emb.copy_(torch.randn(5, 4))
    return m


def test_scripted_single_modules_run_in_cpp(example_bin, tmp_path):
    # Each module alone (one program run per module), with non-default options and offsets.
    torch.manual_seed(0)
    cases = [
        (posenc.nn.RotaryEmbedding(8, rotary_dim=6, interleaved=True), (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), None, 4)),
        (posenc.nn.T5RelativeBias(2, bidirectional=False), (3, 9, 6, 0)),
        (posenc.nn.KERPLEBias(2, kind="power", causal=False), (3, 9, 6, 0)),
        (posenc.nn.TransformerXLRelativeScore(8, 2, 4), (torch.randn(1, 2, 3, 4), 2)),
        (_cope_trained(), (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), 3, 0)),
    ]
    for i, (m, args) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        with torch.no_grad():
            want = m(*args)
        # Optional[Tensor] inputs cannot be a tuple attribute; drop a trailing None positions.
        if isinstance(m, posenc.nn.RotaryEmbedding):
            scripted = torch.jit.script(_RopeNoPositions(m))
            args = (args[0], args[1], args[3])
        else:
            scripted = torch.jit.script(m)
        _assert_same(_run_cpp(example_bin, scripted, args, d), want)


def test_cpp_reports_a_model_error(example_bin, tmp_path):
    # C15 inside a scripted model: the C++ program gets a catchable error with the message.
    m = torch.jit.script(posenc.nn.LearnedPositionalEmbedding(16, 4))
    model_path, inputs_path = tmp_path / "m.pt", tmp_path / "i.pt"
    m.save(str(model_path))
    torch.jit.script(_Inputs((torch.randn(1, 17, 4), 0))).save(str(inputs_path))
    proc = subprocess.run(
        [str(example_bin), str(model_path), str(inputs_path), str(tmp_path / "o.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "position 16 is past the table of 16 positions" in proc.stderr
