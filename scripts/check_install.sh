#!/usr/bin/env bash
# A user's install with nothing but pip (no apt, no root): a scratch venv gets torch, cmake,
# ninja and nlohmann-json from pip, then posenc is installed from a clean clone of this
# checkout's HEAD and again from an sdist, imported, and examples/cpp is built against the
# installed wheel (posenc.cmake_prefix_path) and runs a scripted posenc model.
#
# Environment:
#   TORCH_SPEC        the torch to install (default torch==2.13.0, the CPU wheel)
#   POSENC_CHECK_DIR  scratch folder (default: a new temporary one, removed on success)
#   PYTHON            interpreter for the venv (default python3)
# ccache, where installed, is used (CCACHE_BASEDIR defaults to each source tree in setup.py,
# so the sdist build hits the clone build's cache entries).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${POSENC_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/posenc-install.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
step() { echo "== check_install: $*" >&2; }

step "scratch venv in $WORK/venv (${TORCH_SPEC:-torch==2.13.0}, cmake, ninja, nlohmann-json from pip)"
"${PYTHON:-python3}" -m venv "$WORK/venv"
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" cmake ninja nlohmann-json build setuptools wheel
# Only the venv's tools: a system cmake or GoogleTest must not be what makes this work.
cmake --version | head -n 1 >&2
test "$(command -v cmake)" = "$WORK/venv/bin/cmake"

step "pip install from a clean clone of HEAD"
rm -rf "$WORK/clone"
git clone -q "$ROOT" "$WORK/clone"
(cd "$WORK/clone" && MAX_JOBS=${MAX_JOBS:-$(nproc)} python -m pip install -q --no-build-isolation .)
smoke() {
  (cd "$WORK" && python - <<'PY'
import os, torch, posenc
pkg = os.path.dirname(posenc.__file__)
assert "site-packages" in pkg, pkg  # the installed wheel, not a source tree
q = torch.randn(1, 2, 5, 8)
out = posenc.ops.rope(q, torch.arange(5), posenc.ops.rope_inv_freq(8))
assert out.shape == q.shape and torch.isfinite(out).all()
cfg = os.path.join(posenc.cmake_prefix_path, "posenc", "posencConfig.cmake")
assert os.path.isfile(cfg), cfg
assert os.path.isfile(os.path.join(pkg, "include", "posenc", "posenc.h"))
print("posenc", posenc.__version__, "from", pkg, "with torch", torch.__version__)
PY
  )
}
smoke
python -m pip uninstall -q -y posenc

step "sdist: python -m build --sdist, then pip install it"
rm -rf "$WORK/dist"
(cd "$WORK/clone" && python -m build -q --sdist --no-isolation --outdir "$WORK/dist" >/dev/null)
SDIST=$(ls "$WORK"/dist/posenc-*.tar.gz)
MAX_JOBS=${MAX_JOBS:-$(nproc)} python -m pip install -q --no-build-isolation "$SDIST"
smoke

step "examples/cpp against the installed wheel, running a scripted model"
EXAMPLE_BIN=$(cd "$WORK/clone" && PYTHON=$(command -v python) POSENC_EXAMPLE_BUILD_DIR="$WORK/example" \
  bash scripts/build_example.sh | tail -n 1)
grep -q "posenc_DIR:PATH=$WORK/venv/.*/site-packages/posenc/share/cmake/posenc" "$WORK/example/CMakeCache.txt"
# torch.jit.script reads the module's source: from a file, not stdin.
cat > "$WORK/run_example.py" <<'PY'
import subprocess, sys, torch, posenc

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rope = posenc.nn.RotaryEmbedding(8)
        self.alibi = posenc.nn.ALiBi(4)

    def forward(self, q: torch.Tensor, k: torch.Tensor):
        q, k = self.rope(q, k)
        return q, k, self.alibi(q.size(-2), k.size(-2))

class Inputs(torch.nn.Module):
    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs

torch.manual_seed(0)
q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
model = Model().eval()
torch.jit.script(model).save("model.pt")
torch.jit.script(Inputs((q, k))).save("inputs.pt")
subprocess.run([sys.argv[1], "model.pt", "inputs.pt", "outputs.pt"], check=True)
got = torch.load("outputs.pt")
want = model(q, k)
assert len(got) == len(want)
for g, w in zip(got, want):
    torch.testing.assert_close(g, w, rtol=0, atol=0)
print("examples/cpp against the installed wheel: outputs equal eager")
PY
(cd "$WORK" && python run_example.py "$EXAMPLE_BIN")
if [ -z "${POSENC_CHECK_DIR:-}" ]; then rm -rf "$WORK"; fi
step "ok"
