#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the one per-request cost figure that does
# not move with the load on a shared machine (CPU seconds per request on the project's machine
# vary by 15% from run to run; instruction counts by well under 1%). It does not see the kernel,
# caches or stalls: a ratio of two counts says which binary does less work in user space, not how
# much faster it is. tests/bench/PROFILE.md quotes it before and after each change.
#
#   tests/bench/callgrind.sh [--build-dir DIR] [--ag-bin BIN] [--scenario plain|stream|full|full16k|full-stream]
#                            [--seconds N]
#                            [--keep]
#
# Starts the stand-in upstream (fake_aoai) and aoai-guard (one worker, pure proxy, as the bench's
# plain scenario) under callgrind on loopback, warms up, zeroes the counters, drives wrk for N
# seconds (default 6) on 4 connections, dumps, and prints the instructions per request and the
# functions that take the most. "stream" asks the upstream for 200-chunk SSE responses. "full" is
# the bench's full scenario with a 1 KB prompt: an Entra token (the cached path; fake_entra and
# bench_mint), one RPM+TPM policy, the shipped policy plus the 50 regex rules, audit to a file; the
# count then includes the audit thread's work (not the kernel's fdatasync). "full16k": the same with
# the 16 KB prompt. "full-stream": the full scenario with the 1 KB prompt streamed back in 200 chunks
# (the audit keeps the streamed text, the response policy rewrites each chunk). Needs valgrind and wrk (scripts/install-deps.sh --bench installs wrk; apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build-bench
ag_bin=
scenario=plain
seconds=6
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift 2 ;;
    --ag-bin) ag_bin=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
ag_bin=${ag_bin:-$build/aoai-guard}
fake=$build/tests/fakes/fake_aoai
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is not installed" >&2; exit 2; }
done
[ -x "$ag_bin" ] && [ -x "$fake" ] || { echo "callgrind.sh: build $ag_bin and $fake first (scripts/bench.sh builds both)" >&2; exit 2; }
case "$scenario" in plain|stream|full|full16k|full-stream) ;; *) echo "callgrind.sh: --scenario plain, stream, full, full16k or full-stream" >&2; exit 2 ;; esac

tmp=$(mktemp -d /tmp/aoai-guard-callgrind.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Waits until file $1 exists (written whole: both programs rename it into place), 60 s at most.
wait_for_file() {
  local deadline=$((SECONDS + 60))
  until [ -s "$1" ]; do
    [ $SECONDS -lt $deadline ] || { echo "callgrind.sh: $2 did not start (see $tmp)" >&2; exit 1; }
    sleep 0.05
  done
}

key=callgrind-upstream-key-0123456789
"$fake" --port 0 --port-file "$tmp/up.port" --no-record --api-key "$key" >"$tmp/upstream.log" 2>&1 &
pids+=($!)
wait_for_file "$tmp/up.port" "fake_aoai"
up_port=$(tr -dc 0-9 <"$tmp/up.port")

cat >"$tmp/gw.json" <<EOF
{"workers":1,"listeners":[{"address":"127.0.0.1","port":0}],"admin":{"address":"127.0.0.1","port":0},
"limits":{"max_connections":1000,"max_requests_per_connection":100000000},
"upstreams":[{"name":"bench","url":"http://127.0.0.1:$up_port","auth":{"type":"api_key","api_key":"$key"},"max_idle_connections":64}],
"log":{"level":"warn","access_log":false}}
EOF
token=
if [ "$scenario" != plain ] && [ "$scenario" != stream ]; then
  tenant=11111111-1111-4111-8111-111111111111
  audience=api://aoai-guard
  "$build/tests/fakes/fake_entra" --port 0 --port-file "$tmp/entra.port" --keys-dir "$tmp/entra-keys" \
    --tenant "$tenant" >"$tmp/entra.log" 2>&1 &
  pids+=($!)
  wait_for_file "$tmp/entra.port" "fake_entra"
  entra_url=http://127.0.0.1:$(tr -dc 0-9 <"$tmp/entra.port")
  kid=$(grep . "$tmp/entra-keys/kids" | tail -1)
  "$build/tests/bench_mint" --key "$tmp/entra-keys/$kid.pem" --kid "$kid" --issuer "$entra_url/$tenant/v2.0" \
    --tenant "$tenant" --audience "$audience" --count 1 --first 0 --out "$tmp/token.txt"
  token=$(tr -d '\n' <"$tmp/token.txt")
  # The bench's cfg_full (tests/bench/bench.py), one worker.
  python3 - "$tmp" "$entra_url" "$tenant" "$audience" <<'PY'
import json, sys
tmp, url, tenant, audience = sys.argv[1:]
cfg = json.load(open(f"{tmp}/gw.json"))
pol = json.load(open("conf/policy-enterprise.json"))["policy"]
pol["rules"] += json.load(open("tests/bench/policy-regex-50.json"))["rules"]
cfg.update({
    "auth": {"mode": "entra", "authority_host": url, "tenants": [tenant], "audiences": [audience],
             "rules": [{"roles": ["AI.User"], "deployments": ["*"]}]},
    "rate_limits": {"store": {"type": "memory"},
                    "policies": [{"name": "bench-rpm-tpm", "key": ["tid", "oid"],
                                  "requests_per_minute": 1000000000, "tokens_per_minute": 1000000000}]},
    "policy": pol,
    "audit": {"sinks": [{"type": "file", "path": f"{tmp}/audit.jsonl"}], "spool_dir": f"{tmp}/spool"}})
json.dump(cfg, open(f"{tmp}/gw.json", "w"))
PY
fi
valgrind --tool=callgrind --callgrind-out-file="$tmp/callgrind.out" "$ag_bin" --config "$tmp/gw.json" \
  --port-file "$tmp/gw.ports" >"$tmp/gateway.log" 2>&1 &
vg=$!
pids+=($vg)
wait_for_file "$tmp/gw.ports" "aoai-guard under valgrind"
gw_port=$(awk '$1 == "listener" {print $3; exit}' "$tmp/gw.ports")

body=$tmp/body.json
if [ "$scenario" = stream ]; then
  curl -sf -X POST -d '{"chunks":200}' "http://127.0.0.1:$up_port/_fake/config" >/dev/null
  echo '{"messages":[{"role":"user","content":"Hello"}],"stream":true}' >"$body"
elif [ "$scenario" = plain ]; then
  echo '{"messages":[{"role":"user","content":"Hello"}]}' >"$body"
else
  # The bench's prompt_body(): a 1 KB (16 KB) user message of business prose.
  [ "$scenario" = full-stream ] && curl -sf -X POST -d '{"chunks":200}' "http://127.0.0.1:$up_port/_fake/config" >/dev/null
  python3 - "$body" "$([ "$scenario" = full16k ] && echo 16384 || echo 1024)" "$scenario" <<'PY'
import json, sys
sys.path.insert(0, "tests/bench")
from bench import prompt_body
body = prompt_body(int(sys.argv[2]))
if sys.argv[3] == "full-stream":
    body["stream"] = True
json.dump(body, open(sys.argv[1], "w"))
PY
fi
drive() {
  AG_BENCH_BODY=$body AG_BENCH_CHECK=1 AG_BENCH_OUT=$2 AG_BENCH_TOKEN=$token wrk -t1 -c4 -d"$1"s -s tests/bench/wrk_post.lua \
    "http://127.0.0.1:$gw_port/" >/dev/null 2>&1
}
drive 3 "$tmp/warmup.json"
callgrind_control -z "$vg" >/dev/null 2>&1
drive "$seconds" "$tmp/run.json"
callgrind_control -d "$vg" >/dev/null 2>&1

dump=$(ls "$tmp"/callgrind.out.* | head -1)
# The run's request and error counts (wrk_post.lua's summary), the dump's total, the top functions.
python3 - "$tmp/run.json" "$dump" "$scenario" "$ag_bin" <<'PY' || { keep=1; exit 1; }
import json, re, subprocess, sys
run = json.load(open(sys.argv[1]))
n = run["requests"]
errors = sum(run["errors"].values()) + run["non200"]
if n <= 0 or errors:
    sys.exit(f"callgrind.sh: {n} requests, {errors} errors or other statuses")
total = int(re.search(r"^summary: (\d+)", open(sys.argv[2]).read(), re.M).group(1))
print(f"scenario {sys.argv[3]}: {n} requests, {total / n:.0f} instructions per request ({sys.argv[4]})")
out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", sys.argv[2]], capture_output=True, text=True).stdout
shown = 0
for line in out.splitlines():
    m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S+)", line)
    if not m or "PROGRAM TOTALS" in line:
        continue
    fn = m.group(2).split(":")[-1]
    if fn in ("event_base_dispatch", "worker_main", "clone", "start_thread", "event_base_loop"):
        continue
    print(f"{int(m.group(1).replace(',', '')) / n:10.0f}  {fn}")
    shown += 1
    if shown == 25:
        break
PY
