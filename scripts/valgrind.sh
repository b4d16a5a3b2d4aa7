#!/usr/bin/env bash
# The GoogleTest suite under valgrind memcheck: one process running the gtest binary of a
# normal (uninstrumented) build, so that what ASan cannot see (reads of uninitialised memory)
# is checked too. Fails on any error that the suppressions (tests/sanitizers/valgrind.supp,
# only torch / OpenMP / glibc internals, each explained) do not cover.
#
#   bash scripts/valgrind.sh            # the default reduced set (see DEFAULT_FILTER)
#   bash scripts/valgrind.sh --full     # every test (slow: see README "Sanitizers and valgrind")
#   bash scripts/valgrind.sh --filter 'RopeScaling*:HfConfig*'
#   bash scripts/valgrind.sh --no-build     # use the binary as it is (e.g. another checkout's)
# Environment: POSENC_BUILD_DIR (default build/cmake; rebuilt first unless --no-build),
# POSENC_VALGRIND_LOG (default $POSENC_BUILD_DIR/valgrind.log).
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

# Under valgrind the process start alone (loading torch's CPU and CUDA libraries) takes minutes
# and a test runs 20-50x slower. The default set is the config reader and RoPE scaling (the
# code that reads untrusted input); every test's parameter registration runs in any case.
# Measured on the 2-core dev machine under load: this set 556 s (24 tests, 23 s of them test
# time); --full was not measured there (see README).
DEFAULT_FILTER='HfConfig*:HfConfigFuzzRegression*:RopeScaling*'
FILTER=$DEFAULT_FILTER
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --full) FILTER='-*Cuda*:*CUDA*' ;;
    --filter) FILTER=$2; shift ;;
    --no-build) BUILD=0 ;;
    *) echo "usage: $0 [--full | --filter GTEST_FILTER] [--no-build]" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v valgrind >/dev/null; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

BUILD_DIR=${POSENC_BUILD_DIR:-build/cmake}
if [ "$BUILD" = 1 ]; then
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    echo "valgrind.sh: $BUILD_DIR is not configured; run scripts/setup.sh (or set POSENC_BUILD_DIR)" >&2
    exit 1
  fi
  cmake --build "$BUILD_DIR" --parallel "${MAX_JOBS:-$(nproc)}" --target posenc_tests
fi

LOG=${POSENC_VALGRIND_LOG:-$BUILD_DIR/valgrind.log}
echo "== valgrind memcheck: $BUILD_DIR/posenc_tests --gtest_filter='$FILTER' (log: $LOG)"
START=$(date +%s)
# One OpenMP/ATen thread: the same code paths, far less time under valgrind's serialised
# threads. --error-exitcode makes any unsuppressed error fail the run; leaks are reported but
# not counted (torch's registries live until exit).
status=0
OMP_NUM_THREADS=1 valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes \
  --leak-check=no --num-callers=30 --suppressions=tests/sanitizers/valgrind.supp \
  --log-file="$LOG" \
  "$BUILD_DIR/posenc_tests" --gtest_filter="$FILTER" --gtest_brief=1 || status=$?
END=$(date +%s)
grep -E "ERROR SUMMARY|suppressed:" "$LOG" | tail -n 2 || true
echo "valgrind.sh: $((END - START)) s, exit status $status"
if [ "$status" = 99 ]; then
  echo "valgrind.sh: memcheck errors, see $LOG" >&2
  exit 1
fi
exit "$status"
