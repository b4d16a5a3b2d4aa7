#!/usr/bin/env bash
# The whole test suite: GoogleTest under ctest, then pytest (which also runs the TorchScript
# model through the examples/cpp program and the posenc-extrapolate --quick smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: hash paths relative to the checkout, so every clone (CI) reuses the same cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
BUILD_DIR=${POSENC_BUILD_DIR:-build/cmake}
export POSENC_BUILD_DIR=$BUILD_DIR

# Incremental: picks up source changes made since setup, and refreshes python/posenc/*.so.
cmake --build "$BUILD_DIR" --parallel "${MAX_JOBS:-$(nproc)}"

ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)"

if [ -x scripts/build_example.sh ]; then
  POSENC_EXAMPLE_BIN=$(scripts/build_example.sh | tail -n 1)
  export POSENC_EXAMPLE_BIN
fi
python -m pytest tests/python -q
