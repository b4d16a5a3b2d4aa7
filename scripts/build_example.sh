#!/usr/bin/env bash
# Install posenc from an existing CMake build and build examples/cpp against the installed
# package (find_package(posenc) -> find_dependency(Torch)). Prints the example binary's
# absolute path as the last line of stdout.
#
# Environment:
#   POSENC_BUILD_DIR          build to install from (default build/cmake; run scripts/build.sh first)
#   POSENC_INSTALL_PREFIX     install prefix (default build/install)
#   POSENC_EXAMPLE_BUILD_DIR  build directory of the example (default build/example)
#   PYTHON                    interpreter whose torch to use (default: python on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python)}
BUILD_DIR=${POSENC_BUILD_DIR:-build/cmake}
PREFIX=${POSENC_INSTALL_PREFIX:-build/install}
EXAMPLE_DIR=${POSENC_EXAMPLE_BUILD_DIR:-build/example}

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  echo "build_example.sh: $BUILD_DIR is not a configured posenc build; run scripts/build.sh first" >&2
  exit 1
fi
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
cmake --install "$BUILD_DIR" --prefix "$PREFIX" >&2

TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
ARGS=(-DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}")
command -v ninja >/dev/null && ARGS+=(-G Ninja)
command -v ccache >/dev/null && ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# --fresh: a cache left by an earlier configure (another torch, a failed run) must not stick.
cmake --fresh -S examples/cpp -B "$EXAMPLE_DIR" "${ARGS[@]}" >&2
cmake --build "$EXAMPLE_DIR" --parallel "${MAX_JOBS:-2}" >&2
echo "$(cd "$EXAMPLE_DIR" && pwd)/posenc_example"
