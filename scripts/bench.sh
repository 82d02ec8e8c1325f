#!/usr/bin/env bash
# The benchmark: aoai-guard against nginx (and HAProxy) on this machine, loopback only
# (tests/bench/README.md). Installs what is missing, builds a Release binary in its own build
# directory, runs every scenario and writes tests/bench/RESULTS.md.
#   scripts/bench.sh                                 everything (5-7 minutes on 2 cores)
#   scripts/bench.sh --scenarios plain,stream --rounds 5   extra arguments go to tests/bench/bench.py
# Environment: AG_BENCH_BUILD_DIR (default build-bench), AG_BENCH_SKIP_DEPS=1 (no install-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${AG_BENCH_SKIP_DEPS:-0}" != 1 ]; then
  scripts/install-deps.sh --bench
fi
build=${AG_BENCH_BUILD_DIR:-build-bench}
jobs=$(nproc)
if [ "$jobs" -gt 2 ]; then jobs=2; fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAG_WERROR=OFF -DAG_SANITIZE=OFF -DAG_TSAN=OFF \
  -DAG_FUZZ=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target aoai-guard fake_aoai fake_entra bench_stages bench_sse bench_mint \
  >"$build/bench-build.log" 2>&1 || { tail -40 "$build/bench-build.log" >&2; exit 1; }
# 10,000 idle connections need as many descriptors in the proxy and in the client: raise the soft
# limit to the hard one (bench.py lowers the connection count, and says so, if that is not enough).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard" 2>/dev/null || true
exec python3 tests/bench/bench.py --build-dir "$build" --json "$build/bench-results.json" "$@"
