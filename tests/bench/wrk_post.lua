-- wrk script for the aoai-guard benchmark (tests/bench/bench.py sets the environment).
--   AG_BENCH_PATH    request target (default: chat completions on gpt-4o-mini)
--   AG_BENCH_BODY    file holding the JSON request body (POST)
--   AG_BENCH_TOKEN   a bearer token sent on every request (cached-token path)
--   AG_BENCH_TOKENS  a file of bearer tokens, one per line: each thread walks its own slice and every
--                    request carries the next one (cold-token path)
--   AG_BENCH_CHECK   "1": count every status other than 200 (slower: wrk then parses each response)
--   AG_BENCH_OUT     where done() writes the run's summary as one JSON object
-- The summary holds what wrk's text output lacks: p99.9 and the exact error counters.

local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

local path = os.getenv("AG_BENCH_PATH") or "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
local body_file = os.getenv("AG_BENCH_BODY")
local body = body_file and slurp(body_file) or '{"messages":[{"role":"user","content":"Hello"}]}'
local token = os.getenv("AG_BENCH_TOKEN")
local tokens_file = os.getenv("AG_BENCH_TOKENS")
local check = os.getenv("AG_BENCH_CHECK") == "1"

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Host"] = "127.0.0.1"
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

-- Per-thread state (each wrk thread has its own Lua state).
non200 = 0
local my_tokens = nil
local next_token = 1

function init(args)
  non200 = 0
  if tokens_file and tokens_file ~= "" then
    local all = {}
    for line in io.lines(tokens_file) do
      if #line > 0 then all[#all + 1] = line end
    end
    assert(#all > 0, "no tokens in " .. tokens_file)
    -- Rotate the list so threads start 1/8 of it apart and do not send the same tokens together.
    local n = #all
    local start = math.floor((id - 1) * n / 8)
    my_tokens = {}
    for i = 1, n do
      my_tokens[i] = all[((start + i - 1) % n) + 1]
    end
  end
end

if tokens_file and tokens_file ~= "" then
  function request()
    local t = my_tokens[next_token]
    next_token = next_token + 1
    if next_token > #my_tokens then next_token = 1 end
    local h = {}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["Authorization"] = "Bearer " .. t
    return wrk.format("POST", path, h, body)
  end
end

if check then
  function response(status, headers, resp_body)
    if status ~= 200 then
      non200 = non200 + 1
      if non200 <= 3 then
        io.stderr:write("non-200 response: " .. status .. " " .. string.sub(resp_body or "", 1, 300) .. "\n")
      end
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (tonumber(t:get("non200")) or 0)
  end
  local out = os.getenv("AG_BENCH_OUT")
  local e = summary.errors
  local s = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"non200":%d,"checked":%s,' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, bad, check and "true" or "false",
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9))
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(s)
    f:close()
  else
    io.write(s)
  end
end
