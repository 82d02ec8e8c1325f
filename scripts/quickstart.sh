#!/usr/bin/env bash
# Installs what is missing, builds aoai-guard and runs it on its embedded defaults:
# plain HTTP on 127.0.0.1:8080, admin on 127.0.0.1:9901. With AZURE_OPENAI_ENDPOINT and
# AZURE_OPENAI_API_KEY set it forwards to your Azure OpenAI resource; otherwise it starts the
# stand-in Azure OpenAI server (tests/fakes/fake_aoai) on 127.0.0.1:8081 and forwards there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target aoai-guard fake_aoai
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
if [ -z "${AZURE_OPENAI_ENDPOINT:-}" ]; then
  build/tests/fakes/fake_aoai --port 8081 --api-key dev-key-not-secret --no-record &
  pids+=($!)
  echo "stand-in Azure OpenAI on http://127.0.0.1:8081 (set AZURE_OPENAI_ENDPOINT to use Azure)"
fi
cat <<'TRY'

Try it:
  curl -s http://127.0.0.1:8080/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21 \
    -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hello through aoai-guard"}]}'
  curl -sN http://127.0.0.1:8080/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21 \
    -H 'Content-Type: application/json' \
    -d '{"stream":true,"messages":[{"role":"user","content":"Stream this"}]}'
Health: curl -s http://127.0.0.1:9901/readyz      Stop: Ctrl-C

TRY
build/aoai-guard &
pids+=($!)
wait "${pids[-1]}"
