#!/usr/bin/env bash
# Installs what is missing, builds aoai-guard with warnings as errors and AddressSanitizer +
# UndefinedBehaviorSanitizer, and runs the whole test suite with CTest.
#   scripts/test.sh                 everything
#   scripts/test.sh -R integration  extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
build=${AG_BUILD_DIR:-build-test}
sanitize=${AG_SANITIZE:-ON}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAG_WERROR=ON -DAG_SANITIZE="$sanitize" >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" "$@"
