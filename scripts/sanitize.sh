#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer (g++): builds libposenc, posenc._C, the
# GoogleTest suite and the config.json fuzz driver in their own build folder (CPU only), then
#   1. ctest (every GoogleTest case) under ASan + UBSan,
#   2. the fuzz driver tests/fuzz/fuzz_hf_config.cpp over tests/fuzz/corpus (100,000 inputs),
#   3. pytest over the CPU op tests, importing the ASan build of posenc from the build folder
#      with the ASan runtime preloaded into the (uninstrumented) Python interpreter.
# Any sanitizer report, test failure or fuzz finding fails the script.
#
#   bash scripts/sanitize.sh                        # everything
#   POSENC_FUZZ_ITERATIONS=10000 bash scripts/sanitize.sh   # a reduced fuzz run
#   bash scripts/sanitize.sh --quick                # reduced: 10,000 fuzz inputs, the quick pytest set
#   bash scripts/sanitize.sh --skip-ctest --skip-pytest    # fuzz only (also --skip-fuzz)
# Environment: POSENC_ASAN_BUILD_DIR (default build/asan), POSENC_FUZZ_SEED (1), MAX_JOBS.
#
# Suppressions (tests/sanitizers/) only cover findings inside torch, Python or OpenMP, each
# line with the reason; nothing in posenc's own code is suppressed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

QUICK=0 RUN_CTEST=1 RUN_FUZZ=1 RUN_PYTEST=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --skip-ctest) RUN_CTEST=0 ;;
    --skip-fuzz) RUN_FUZZ=0 ;;
    --skip-pytest) RUN_PYTEST=0 ;;
    *) echo "usage: $0 [--quick] [--skip-ctest] [--skip-fuzz] [--skip-pytest]" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  FUZZ_ITERATIONS=${POSENC_FUZZ_ITERATIONS:-10000}
else
  FUZZ_ITERATIONS=${POSENC_FUZZ_ITERATIONS:-100000}
fi
BUILD_DIR=${POSENC_ASAN_BUILD_DIR:-build/asan}
JOBS=${MAX_JOBS:-$(nproc)}

# float-cast-overflow is not part of GCC's -fsanitize=undefined; a double -> int64 cast out of
# range is undefined behaviour (lengths read from config.json), so it is checked too.
SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow"
FLAGS="$SAN -fno-omit-frame-pointer -O1 -g"

# torch is a CUDA build here but this build is CPU only: find_package(Torch) still needs the
# toolkit root to configure.
CUDA_ARGS=()
if python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
  CUDA_ROOT=""
  NVCC_ROOT=""
  if command -v nvcc >/dev/null; then
    NVCC_ROOT=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
  # the first candidate that has the toolkit's headers (/usr/local/bin/nvcc may be a wrapper)
  for root in "${CUDA_HOME:-}" "$NVCC_ROOT" /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do
    if [ -n "$root" ] && [ -f "$root/include/cuda_runtime.h" ]; then CUDA_ROOT=$root; break; fi
  done
  if [ -n "$CUDA_ROOT" ]; then CUDA_ARGS=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"); fi
fi

# The ASan build's Python package: the sources of python/posenc plus this build's libraries.
PKG_DIR=$ROOT/$BUILD_DIR/python/posenc
mkdir -p "$PKG_DIR"
echo "== configure $BUILD_DIR (ASan + UBSan, CPU only)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DPython3_EXECUTABLE="$(command -v python)" \
  -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS_SANITIZE="$FLAGS" \
  -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" -DCMAKE_MODULE_LINKER_FLAGS="$SAN" \
  -DPOSENC_WITH_CUDA=OFF "${CUDA_ARGS[@]}" \
  -DPOSENC_BUILD_TESTS=ON -DPOSENC_BUILD_FUZZ=ON -DPOSENC_BUILD_PYTHON=ON \
  -DPOSENC_WHEEL_LAYOUT=ON -DPOSENC_PYTHON_PACKAGE_DIR="$PKG_DIR" >"$BUILD_DIR/configure.log" \
  || { cat "$BUILD_DIR/configure.log"; exit 1; }
echo "== build (jobs: $JOBS)"
cmake --build "$BUILD_DIR" --parallel "$JOBS"

SUPP=$ROOT/tests/sanitizers
# Sanitizer settings for every step: stop at the first report, with symbolised stacks.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$SUPP/ubsan.supp"
ASAN_BASE="abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0:strict_string_checks=1:check_initialization_order=1"

FAIL=0
if [ "$RUN_CTEST" = 1 ]; then
  echo "== ctest under ASan + UBSan"
  # Leak checking is on for the C++ tests: only torch's lazily-initialised singletons are
  # suppressed (tests/sanitizers/lsan.supp).
  ASAN_OPTIONS="$ASAN_BASE:detect_leaks=1" LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0" \
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900 || FAIL=1
fi

if [ "$RUN_FUZZ" = 1 ]; then
  echo "== fuzz_hf_config: $FUZZ_ITERATIONS inputs under ASan + UBSan"
  # The reader is pure host code: leaks in it would be findings, so leak checking is on.
  ASAN_OPTIONS="$ASAN_BASE:detect_leaks=1" LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0" \
    "$BUILD_DIR/fuzz_hf_config" --corpus tests/fuzz/corpus --iterations "$FUZZ_ITERATIONS" \
    --seed "${POSENC_FUZZ_SEED:-1}" --finding-dir "$BUILD_DIR" --verbose || FAIL=1
fi

if [ "$RUN_PYTEST" = 1 ]; then
  # The CPU op tests: not the CUDA files (no kernels in this build), not the ones that build
  # C++ programs, export with AOTInductor or download/run transformers models (slow under ASan,
  # and their posenc calls are the same ops).
  TESTS=(test_alibi.py test_kerple.py test_t5.py test_sinusoidal.py test_rel_pos.py
    test_rel_pos_causal.py test_rope.py test_rope_vec.py test_rope_precision.py
    test_rope_scaling.py test_rotary_module.py test_attention.py test_bias_kernels.py
    test_modules.py test_kv_cache.py test_offset_range.py test_hf_config.py test_config_fuzz.py
    test_bad_inputs.py test_properties.py test_context_parallel.py test_flash_attn_compat.py)
  if [ "$QUICK" = 1 ]; then
    TESTS=(test_alibi.py test_kerple.py test_t5.py test_sinusoidal.py test_rel_pos.py test_rope.py
      test_rope_scaling.py test_hf_config.py test_config_fuzz.py test_bad_inputs.py)
  fi
  echo "== pytest under ASan (${#TESTS[@]} files), posenc from $PKG_DIR"
  # Python sources next to this build's libposenc.so / _C*.so (the build copied those).
  find python/posenc -maxdepth 1 -name '*.py' -exec cp {} "$PKG_DIR/" \;
  LIBASAN=$(g++ -print-file-name=libasan.so)
  LIBUBSAN=$(g++ -print-file-name=libubsan.so)
  ARGS=()
  for t in "${TESTS[@]}"; do ARGS+=("tests/python/$t"); done
  # Python and torch are not instrumented: the ASan runtime must be loaded first (LD_PRELOAD).
  # Leak checking is off: CPython and torch keep their allocations until exit by design.
  LD_PRELOAD="$LIBASAN $LIBUBSAN" \
    ASAN_OPTIONS="$ASAN_BASE:detect_leaks=0:suppressions=$SUPP/asan.supp" \
    POSENC_TEST_INSTALLED=1 PYTHONPATH="$ROOT/$BUILD_DIR/python" \
    python -m pytest -q -p no:cacheprovider "${ARGS[@]}" || FAIL=1
fi

if [ "$FAIL" != 0 ]; then
  echo "sanitize.sh: FAILED (see the reports above)" >&2
  exit 1
fi
echo "sanitize.sh: clean"
