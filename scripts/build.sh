#!/usr/bin/env bash
# Developer build: configure + build into build/cmake (or $POSENC_BUILD_DIR) and drop
# libposenc.so and _C*.so into python/posenc so that `import posenc` picks them up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python)}
BUILD_DIR=${POSENC_BUILD_DIR:-build/cmake}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DPython3_EXECUTABLE="$PY" \
  -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" \
  -DPOSENC_WITH_CUDA="${POSENC_WITH_CUDA:-ON}" -DPOSENC_BUILD_TESTS="${POSENC_BUILD_TESTS:-ON}" \
  -DPOSENC_WHEEL_LAYOUT=ON \
  -DPOSENC_PYTHON_PACKAGE_DIR="$PWD/python/posenc" >/dev/null
cmake --build "$BUILD_DIR" --parallel "${MAX_JOBS:-$(nproc)}"
