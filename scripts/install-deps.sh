#!/usr/bin/env bash
# Installs the Debian 12 packages aoai-guard needs, only those missing (idempotent).
#   scripts/install-deps.sh          build dependencies
#   scripts/install-deps.sh --test   + what the test suite needs (redis-server, python3, clang, valgrind)
#   scripts/install-deps.sh --bench  + what the benchmark needs (nginx-light, haproxy, wrk)
set -euo pipefail

build_pkgs=(cmake make gcc pkg-config libevent-dev libssl-dev node-llhttp libcjson-dev
            libcurl4-openssl-dev libpcre2-dev zlib1g-dev libhiredis-dev)
test_pkgs=(redis-server python3 python3-yaml openssl curl clang libclang-rt-14-dev llvm valgrind)
bench_pkgs=(nginx-light haproxy wrk)

want=("${build_pkgs[@]}")
for arg in "$@"; do
  case "$arg" in
    --test) want+=("${test_pkgs[@]}") ;;
    --bench) want+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done

# node and npm (test-only, for the openai SDK compatibility test): Debian's only when none is on PATH.
for arg in "$@"; do
  if [ "$arg" = "--test" ] || [ "$arg" = "--bench" ]; then
    command -v node >/dev/null 2>&1 || want+=(nodejs)
    command -v npm >/dev/null 2>&1 || want+=(npm)
  fi
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# nginx and haproxy packages start system services; the benchmark runs its own instances.
if [[ " ${missing[*]} " == *" nginx-light "* ]]; then $SUDO systemctl disable --now nginx 2>/dev/null || true; fi
if [[ " ${missing[*]} " == *" haproxy "* ]]; then $SUDO systemctl disable --now haproxy 2>/dev/null || true; fi
