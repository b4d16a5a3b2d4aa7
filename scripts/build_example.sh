#!/usr/bin/env bash
# Build examples/cpp against the installed posenc Python package (find_package(posenc) through
# posenc.cmake_prefix_path, torch through torch.utils.cmake_prefix_path): what a C++ user does
# after `pip install`. Prints the example binary's absolute path as the last line of stdout;
# the AOTInductor runner posenc_aoti_example is built next to it.
#
# Environment:
#   PYTHON                    interpreter whose torch and posenc to use (default: python on PATH)
#   POSENC_PREFIX             another prefix holding posenc's package config, e.g. a
#                             `cmake --install` of a source build (default: the installed package)
#   POSENC_EXAMPLE_BUILD_DIR  build directory of the example (default build/example)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python)}
EXAMPLE_DIR=${POSENC_EXAMPLE_BUILD_DIR:-build/example}

TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
PREFIX=${POSENC_PREFIX:-$("$PY" -c 'import posenc; print(posenc.cmake_prefix_path)')}
ARGS=(-DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}")
command -v ninja >/dev/null && ARGS+=(-G Ninja)
command -v ccache >/dev/null && ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# --fresh: a cache left by an earlier configure (another torch, a failed run) must not stick.
cmake --fresh -S examples/cpp -B "$EXAMPLE_DIR" "${ARGS[@]}" >&2
cmake --build "$EXAMPLE_DIR" --parallel "${MAX_JOBS:-2}" >&2
echo "$(cd "$EXAMPLE_DIR" && pwd)/posenc_example"
