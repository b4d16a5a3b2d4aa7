#!/usr/bin/env bash
# Installs everything posenc needs on a fresh Debian machine and builds it:
# Debian packages (compiler, Ninja, ccache, GoogleTest, nlohmann/json), a virtual environment in .venv with
# CMake >= 3.30 (Debian's 3.25 knows no C++20 dialect for nvcc), torch (default: the CUDA 13
# build torch==2.14.1, so that nvcc compiles and links the CUDA kernels even on a machine
# without a GPU), the Python test/run dependencies, and posenc itself (editable, via its CMake
# build in build/cmake).
#   TORCH_SPEC=torch==2.13.0 POSENC_WITH_CUDA=0 bash scripts/setup.sh   # small CPU-only setup
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: hash paths relative to the checkout, so every clone (CI) reuses the same cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ make cmake ninja-build ccache libgtest-dev nlohmann-json3-dev >/dev/null

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "${TORCH_SPEC:-torch==2.14.1}" "cmake>=3.30,<4"
python -m pip install -q pytest hypothesis expecttest numpy tqdm matplotlib "transformers>=5" build

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Developer install: editable, with the GoogleTest suite (a plain user install skips it).
POSENC_BUILD_TESTS=${POSENC_BUILD_TESTS:-1} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  python -m pip install -q --no-build-isolation -e .
python -c "import posenc, torch; print('posenc', posenc.__version__, 'with torch', torch.__version__)"
