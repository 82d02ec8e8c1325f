"""Issue 4: rate limits and token quotas through the real binary (memory store and a real Redis).

Identities come from the inbound api-key mode ("auth": {"mode": "api_key"}): policies key their
counters by the api-key identity's name ("key": ["name"]). Token costs are made exact with
embeddings whose input is token ids (one id = one token for both the gateway's estimator and the
fake's usage), and quotas (fixed calendar windows, nothing drains) give exact reconciliation checks.

The limiter's clock is not injectable from the binary (ag_limiter_opts.clock is only reachable from
C), so calendar rollover is covered by the unit tests; here the quota's reset time is checked
against the real UTC calendar."""
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

from entra import APP_A, APP_B, FakeEntra, auth_section, mint, v2_claims
from harness import (CHAT, GatewayTestCase, base_config, chat_body, parse_responses, raw_exchange, request,
                     upstream, wait_until)

KEY_A = "key-app-a-0123456789abcdef"
KEY_B = "key-app-b-0123456789abcdef"
EMB = "/openai/deployments/{dep}/embeddings?api-version=2024-10-21"
RL_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
              "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")


def api_key_auth():
    return {"mode": "api_key", "api_keys": [
        {"name": "app-a", "key": KEY_A, "deployments": ["*"]},
        {"name": "app-b", "key": KEY_B, "deployments": ["*"]}]}


def chat_path(dep):
    return f"/openai/deployments/{dep}/chat/completions?api-version=2024-10-21"


def ids_input(n):
    """An embeddings input of exactly n token ids (nested when above the API's 2048 items)."""
    if n <= 2048:
        return [7] * n
    out = []
    while n > 0:
        k = min(n, 1000)
        out.append([7] * k)
        n -= k
    return out


class Resp:
    def __init__(self, status, header_list, body, elapsed):
        self.status = status
        self.header_list = header_list  # [(lower name, value)] in order, duplicates kept
        self.body = body
        self.elapsed = elapsed
        self.headers = {}
        for k, v in header_list:
            self.headers[k] = v

    def all(self, name):
        return [v for k, v in self.header_list if k == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        rl = [(k, v) for k, v in self.header_list if k.startswith(("x-ratelimit", "retry-after"))]
        return f"<{self.status} {rl} {self.body[:240]!r}>"


def call(port, path, body, key=None, headers=None, timeout=20, conn=None):
    """POSTs a JSON body; returns a Resp with every header (duplicates kept) and the elapsed time."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if key:
        h["api-key"] = key
    if headers:
        h.update(headers)
    t0 = time.monotonic()
    c.request("POST", path, body=json.dumps(body).encode(), headers=h)
    r = c.getresponse()
    payload = r.read()
    elapsed = time.monotonic() - t0
    hl = [(k.lower(), v) for k, v in r.getheaders()]
    c.close()
    return Resp(r.status, hl, payload, elapsed)


def burst(n, fn):
    """Runs fn(i, conn) on n threads, each with its own connected socket, released together."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        try:
            conn = fn.connect(i)
            conn.connect()
            barrier.wait(timeout=30)
            results[i] = fn(i, conn)
        except BaseException as e:  # reported below
            barrier.abort()
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors or any(t.is_alive() for t in threads):
        raise AssertionError(f"burst: {len(errors)} errors, first: {errors[:1]!r}")
    return results


def window_end_ms(period, now_ms):
    """First millisecond after the UTC calendar window containing now_ms (weeks start Monday)."""
    t = datetime.datetime.fromtimestamp(now_ms / 1000, tz=datetime.timezone.utc)
    if period == "hour":
        end = t.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
    elif period == "day":
        end = t.replace(hour=0, minute=0, second=0, microsecond=0) + datetime.timedelta(days=1)
    elif period == "week":
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = day + datetime.timedelta(days=7 - day.weekday())
    elif period == "month":
        first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (first + datetime.timedelta(days=32)).replace(day=1)
    elif period == "year":
        end = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0).replace(year=t.year + 1)
    else:
        raise ValueError(period)
    return int(end.timestamp() * 1000)


def ceil_div(a, b):
    return -(-a // b)


# ---- a minimal Redis client and server, stdlib only ----

class RedisClient:
    def __init__(self, port, timeout=2.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.s.makefile("rb")

    def close(self):
        self.f.close()
        self.s.close()

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"redis: short reply {line!r}")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError(f"redis: bad reply {line!r}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisServer:
    """Our own redis-server on 127.0.0.1, no persistence; can be hung (SIGSTOP), killed, restarted."""

    def __init__(self, workdir, password=None, start=True):
        self.password = password
        self.exe = shutil.which("redis-server")
        if not self.exe:
            raise AssertionError("redis-server is not installed (apt-get install redis-server): the Redis "
                                 "rate-limit tests need a real server and must not be skipped")
        self.workdir = workdir
        self.port = free_port()
        self.p = None
        self.stopped = False
        if start:
            self.start()

    def start(self):
        log = open(os.path.join(self.workdir, "redis.log"), "ab")
        argv = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.workdir]
        if self.password:
            argv += ["--requirepass", self.password]
        self.p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_until(self.ping, 10, what=f"redis-server PONG on port {self.port}")

    def ping(self):
        if self.p.poll() is not None:
            with open(os.path.join(self.workdir, "redis.log"), "rb") as f:
                raise AssertionError(f"redis-server exited with {self.p.returncode}: {f.read()[-2000:]!r}")
        try:
            c = RedisClient(self.port, timeout=0.5)
            try:
                if self.password:
                    c.cmd("AUTH", self.password)
                return c.cmd("PING") == "PONG"
            finally:
                c.close()
        except OSError:
            return False

    def client(self):
        c = RedisClient(self.port)
        if self.password:
            c.cmd("AUTH", self.password)
        return c

    def keys(self, pattern):
        c = self.client()
        try:
            return sorted(k.decode() for k in c.cmd("KEYS", pattern))
        finally:
            c.close()

    def hang(self):
        os.kill(self.p.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self):
        os.kill(self.p.pid, signal.SIGCONT)
        self.stopped = False

    def kill(self):
        self.p.kill()  # SIGKILL works on a stopped process too
        self.p.wait()
        self.stopped = False

    def close(self):
        if self.p is not None and self.p.poll() is None:
            self.kill()


# ---- tests ----

class LimitsTestCase(GatewayTestCase):
    def start(self, policies, store=None, workers=1, auth=True, name="gw", up=None):
        self.up = up or getattr(self, "up", None) or self.fake()
        rl = {"policies": policies}
        if store:
            rl["store"] = store
        extra = {"rate_limits": rl}
        if auth:
            extra["auth"] = api_key_auth()
        cfg = base_config([upstream(self.up)], workers=workers, **extra)
        return self.gateway(cfg, name=name)

    def upstream_requests(self):
        return self.up.stats()["requests"]

    def assert_single_headers(self, r, names=RL_HEADERS):
        for n in names:
            self.assertLessEqual(len(r.all(n)), 1, f"{n} sent more than once: {r.header_list}")

    def assert_refusal(self, r, status, message, retry_ms_range):
        """A refusal in Azure's shape, with retry-after consistent with retry-after-ms."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers.get("content-type", "").split(";")[0], "application/json", r)
        err = r.json()["error"]
        self.assertEqual(err["code"], str(status), r)
        ms = int(r.headers["retry-after-ms"])
        lo, hi = retry_ms_range
        self.assertTrue(lo <= ms <= hi, f"retry-after-ms {ms} not in [{lo}, {hi}]: {r}")
        self.assertEqual(int(r.headers["retry-after"]), ceil_div(ms, 1000), r)
        self.assertEqual(len(r.all("retry-after")), 1, r)
        self.assertEqual(len(r.all("retry-after-ms")), 1, r)
        if isinstance(message, str):
            self.assertEqual(err["message"], message.format(secs=ceil_div(ms, 1000),
                                                            s="" if ceil_div(ms, 1000) == 1 else "s"), r)
        else:
            self.assertRegex(err["message"], message)
        return ms

    def wait_access(self, gw, request_id):
        return wait_until(lambda: [l for l in gw.access_lines() if l.get("request_id") == request_id],
                          timeout=10, what=f"access line of {request_id}")[-1]


RPM_MSG = ("Requests exceeded the limit of {limit} requests per minute of rate-limit policy '{policy}'. "
           "Please retry after {{secs}} second{{s}}.")
TPM_MSG = ("Requests exceeded the limit of {limit} tokens per minute of rate-limit policy '{policy}'. "
           "Please retry after {{secs}} second{{s}}.")
QUOTA_MSG = ("Out of token quota: policy '{policy}' allows {limit} tokens per {period} (UTC). "
             "The quota is replenished in {{secs}} second{{s}}.")


class MemoryStore(LimitsTestCase):
    def test_rpm_per_identity_other_identity_unaffected(self):
        gw = self.start([{"name": "per-key", "key": ["name"], "requests_per_minute": 3}])
        # no credential: refused by auth before any limit, nothing forwarded
        r = call(gw.port, CHAT, chat_body())
        self.assertEqual(r.status, 401, r)
        t_first = time.monotonic()
        for i in range(3):
            r = call(gw.port, CHAT, chat_body(f"a{i}"), key=KEY_A)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.all("x-ratelimit-limit-requests"), ["3"], r)
            self.assertEqual(r.all("x-ratelimit-remaining-requests"), [str(2 - i)], r)
        r = call(gw.port, CHAT, chat_body("a3"), key=KEY_A)
        elapsed_ms = int((time.monotonic() - t_first) * 1000)
        # GCRA: the 4th fits 60000/3 ms after the first, minus the time already gone
        self.assert_refusal(r, 429, RPM_MSG.format(limit=3, policy="per-key"),
                            (20000 - elapsed_ms - 5, 20000))
        self.assertEqual(r.all("x-ratelimit-limit-requests"), ["3"], r)
        self.assertEqual(r.all("x-ratelimit-remaining-requests"), ["0"], r)
        self.assertEqual(self.upstream_requests(), 3)
        # another identity has its own counter
        r = call(gw.port, CHAT, chat_body("b0"), key=KEY_B)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.all("x-ratelimit-remaining-requests"), ["2"], r)
        self.assertEqual(self.upstream_requests(), 4)
        # app-a is still refused
        r = call(gw.port, CHAT, chat_body("a4"), key=KEY_A)
        self.assertEqual(r.status, 429, r)
        self.assertEqual(self.upstream_requests(), 4)
        # the refusals are in the access log, with the identity
        lines = wait_until(lambda: [l for l in gw.access_lines() if l.get("status") == 429] or None,
                           what="429 access lines")
        self.assertTrue(all(l.get("identity") == "app-a" for l in lines), lines)

    def test_anonymous_keyed_by_deployment_case_insensitive(self):
        gw = self.start([{"name": "per-dep", "key": ["deployment"], "requests_per_minute": 2}], auth=False)
        self.assertEqual(call(gw.port, chat_path("gpt-a"), chat_body()).status, 200)
        r = call(gw.port, chat_path("GPT-A"), chat_body())
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.all("x-ratelimit-remaining-requests"), ["0"], r)
        r = call(gw.port, chat_path("Gpt-A"), chat_body())
        self.assertEqual(r.status, 429, r)
        r = call(gw.port, chat_path("gpt-b"), chat_body())
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.all("x-ratelimit-remaining-requests"), ["1"], r)
        self.assertEqual(self.upstream_requests(), 3)

    def test_headers_of_the_tightest_limit_replace_upstreams(self):
        # the fake sends its own x-ratelimit-remaining-* (1000 requests / 1e6 tokens budgets)
        gw = self.start([
            {"name": "wide", "requests_per_minute": 1000, "tokens_per_minute": 100000},
            {"name": "tight-req", "key": ["name"], "requests_per_minute": 5},
            {"name": "tight-tok", "key": ["name"], "tokens_per_minute": 500}])
        t0 = time.monotonic()
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(40)}, key=KEY_A)
        self.assertEqual(r.status, 200, r)
        self.assert_single_headers(r)
        self.assertEqual(r.headers["x-ratelimit-limit-requests"], "5")
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "4")
        self.assertEqual(r.headers["x-ratelimit-limit-tokens"], "500")
        self.assertEqual(r.headers["x-ratelimit-remaining-tokens"], "460")
        self.assertEqual(r.json()["usage"]["total_tokens"], 40)
        # token ids are priced exactly: 460 - 100, plus what drained meanwhile (one token per 120 ms)
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(100)}, key=KEY_A)
        elapsed_ms = int((time.monotonic() - t0) * 1000)
        self.assertEqual(r.status, 200, r)
        self.assert_single_headers(r)
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "3")
        rem = int(r.headers["x-ratelimit-remaining-tokens"])
        self.assertTrue(360 <= rem <= 360 + elapsed_ms // 120, (rem, elapsed_ms))

    def test_tpm_request_larger_than_limit_refused_at_once(self):
        gw = self.start([{"name": "tpm", "key": ["name"], "tokens_per_minute": 100}])
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(101)}, key=KEY_A)
        self.assert_refusal(r, 429, "This request needs an estimated 101 tokens, more than the limit of 100 "
                            "tokens per minute of rate-limit policy 'tpm'. Lower max_tokens (or "
                            "max_completion_tokens) or shorten the prompt.", (60000, 60000))
        self.assertEqual(self.upstream_requests(), 0)
        # ... and touched no counter: exactly the limit still fits
        t0 = time.monotonic()
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(100)}, key=KEY_A)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.all("x-ratelimit-limit-tokens"), ["100"], r)
        self.assertEqual(r.all("x-ratelimit-remaining-tokens"), ["0"], r)
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_A)
        elapsed_ms = int((time.monotonic() - t0) * 1000)
        # one token drains every 600 ms at 100/min
        self.assert_refusal(r, 429, TPM_MSG.format(limit=100, policy="tpm"), (600 - elapsed_ms - 5, 600))
        self.assertEqual(r.all("x-ratelimit-remaining-tokens"), ["0"], r)
        self.assertEqual(self.upstream_requests(), 1)
        # a chat whose max_tokens alone exceeds the limit
        r = call(gw.port, CHAT, chat_body(max_tokens=1000), key=KEY_B)
        self.assert_refusal(r, 429, re.compile(r"^This request needs an estimated 10\d\d tokens, more than the "
                                               r"limit of 100 tokens per minute"), (60000, 60000))
        self.assertEqual(self.upstream_requests(), 1)

    def test_tpm_reservations_of_concurrent_requests(self):
        gw = self.start([{"name": "tpm", "key": ["name"], "tokens_per_minute": 10000}], workers=2)
        body = chat_body("Tell me a story", max_tokens=3000)
        # calibration on app-b's fresh counter: the estimate is exactly limit - remaining
        r = call(gw.port, CHAT, body, key=KEY_B)
        self.assertEqual(r.status, 200, r)
        est = 10000 - int(r.headers["x-ratelimit-remaining-tokens"])
        self.assertTrue(3000 < est < 3100, est)
        used = r.json()["usage"]["total_tokens"]
        # three reservations fit in 10000, the fourth cannot while they are in flight
        self.up.configure(first_byte_delay_ms=1500)

        def one(i, conn):
            return call(gw.port, CHAT, body, key=KEY_A, conn=conn)
        one.connect = lambda i: http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        t0 = time.monotonic()
        res = burst(6, one)
        ok = [r for r in res if r.status == 200]
        refused = [r for r in res if r.status == 429]
        self.assertEqual((len(ok), len(refused)), (3, 3), res)
        for r in refused:
            self.assertLess(r.elapsed, 1.0, "refusals must not wait for the upstream")
        elapsed_ms = int((time.monotonic() - t0) * 1000)
        drain = ceil_div(elapsed_ms * 10000, 60000) + 1
        rem = sorted((int(r.headers["x-ratelimit-remaining-tokens"]) for r in ok), reverse=True)
        for k, v in enumerate(rem):
            want = 10000 - (k + 1) * est
            self.assertTrue(want <= v <= want + drain, f"remaining {rem}, estimate {est}, drain {drain}")
        wait_ms = (4 * est - 10000) * 6  # (4E - L) tokens at L/60000 per ms
        for r in refused:
            self.assert_refusal(r, 429, TPM_MSG.format(limit=10000, policy="tpm"),
                                (wait_ms - elapsed_ms - 5, wait_ms))
        self.assertEqual(self.upstream_requests(), 4)
        # once they ended, the reservations were reconciled to the real usage (a few tokens each):
        # the same request fits again at once instead of waiting ~wait_ms
        for r in ok:
            self.wait_access(gw, r.headers["x-request-id"])
        self.up.configure(first_byte_delay_ms=0)
        r = call(gw.port, CHAT, body, key=KEY_A)
        self.assertEqual(r.status, 200, r)
        self.assertGreaterEqual(int(r.headers["x-ratelimit-remaining-tokens"]), 10000 - est - 3 * used)

    def test_concurrent_burst_admits_exactly_the_limit(self):
        gw = self.start([{"name": "burst", "key": ["name"], "requests_per_minute": 10}], workers=2)

        def one(i, conn):
            return call(gw.port, CHAT, chat_body(f"burst {i}"), key=KEY_A, conn=conn)
        one.connect = lambda i: http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        t0 = time.monotonic()
        res = burst(50, one)
        elapsed = time.monotonic() - t0
        # one request drains every 6 s at 10/min: the count is exact only within that time
        self.assertLess(elapsed, 5.5, "the burst took too long to be meaningful")
        ok = [r for r in res if r.status == 200]
        refused = [r for r in res if r.status == 429]
        self.assertEqual((len(ok), len(refused)), (10, 40), [r.status for r in res])
        self.assertEqual(sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok), list(range(10)))
        for r in refused:
            self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "0", r)
            self.assertLessEqual(int(r.headers["retry-after-ms"]), 6000, r)
            self.assertEqual(r.json()["error"]["code"], "429")
        self.assertEqual(self.upstream_requests(), 10)
        r = call(gw.port, CHAT, chat_body(), key=KEY_B)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "9")

    def test_token_quota_403_and_utc_calendar_reset(self):
        periods = ["hour", "day", "week", "month", "year"]
        gw = self.start([{"name": f"q-{p}", "match": {"deployments": [f"emb-{p}"]},
                          "token_quota": {"period": p, "tokens": 50}} for p in periods])
        for p in periods:
            path = EMB.format(dep=f"emb-{p}")
            r = call(gw.port, path, {"input": ids_input(51)}, key=KEY_A)
            now = int(time.time() * 1000)
            end = window_end_ms(p, now)
            self.assert_refusal(r, 403, f"This request needs an estimated 51 tokens, more than the token quota "
                                f"of 50 tokens per {p} of policy 'q-{p}'.", (end - now - 3000, end - now + 3000))
            r = call(gw.port, path, {"input": ids_input(30)}, key=KEY_A)
            self.assertEqual(r.status, 200, r)
            r = call(gw.port, path, {"input": ids_input(20)}, key=KEY_B)
            self.assertEqual(r.status, 200, r)
            r = call(gw.port, path, {"input": ids_input(1)}, key=KEY_A)
            now = int(time.time() * 1000)
            end = window_end_ms(p, now)
            self.assert_refusal(r, 403, QUOTA_MSG.format(policy=f"q-{p}", limit=50, period=p),
                                (end - now - 3000, end - now + 3000))
            for h in RL_HEADERS:
                self.assertNotIn(h, r.headers, f"a quota-only policy has no rate headers: {r}")
        self.assertEqual(self.upstream_requests(), 2 * len(periods))

    def test_streamed_usage_reconciles_tpm(self):
        gw = self.start([{"name": "tpm", "key": ["name"], "tokens_per_minute": 10000}])
        body = chat_body("one two three four five six", stream=True, max_tokens=4000,
                         stream_options={"include_usage": True})
        r1 = call(gw.port, CHAT, body, key=KEY_A)
        self.assertEqual(r1.status, 200, r1)
        self.assertTrue(r1.headers["content-type"].startswith("text/event-stream"), r1)
        self.assert_single_headers(r1)
        est = 10000 - int(r1.headers["x-ratelimit-remaining-tokens"])
        self.assertTrue(4000 < est < 4100, est)
        events = [l[6:] for l in r1.body.decode().split("\n") if l.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        used = json.loads(events[-2])["usage"]["total_tokens"]
        self.assertEqual(self.wait_access(gw, r1.headers["x-request-id"]).get("total_tokens"), used)
        # the same messages without streaming: the same estimate
        r2 = call(gw.port, CHAT, chat_body("one two three four five six", max_tokens=4000), key=KEY_A)
        self.assertEqual(r2.status, 200, r2)
        rem2 = int(r2.headers["x-ratelimit-remaining-tokens"])
        # reconciled: at most the real usage is left of the first request (it drains as well);
        # kept at the estimate it would be about 10000 - 2 * est
        self.assertTrue(10000 - used - est <= rem2 <= 10000 - est,
                        f"remaining {rem2}: the streamed reservation ({est}) was not reconciled to {used}")

    def test_streamed_usage_reconciles_quota_exactly(self):
        gw = self.start([{"name": "q", "key": ["name"], "token_quota": {"period": "year", "tokens": 5000}}])
        body = chat_body("one two three four five six", stream=True, max_tokens=4000,
                         stream_options={"include_usage": True})
        r = call(gw.port, CHAT, body, key=KEY_A)
        self.assertEqual(r.status, 200, r)
        events = [l[6:] for l in r.body.decode().split("\n") if l.startswith("data: ")]
        used = json.loads(events[-2])["usage"]["total_tokens"]
        self.assertGreater(used, 5)
        self.wait_access(gw, r.headers["x-request-id"])
        # exactly what is left of the quota after the real usage fits; not one token more
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5000 - used)}, key=KEY_A)
        self.assertEqual(r.status, 200, f"quota not reconciled to the streamed usage ({used}): {r}")
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_A)
        self.assertEqual(r.status, 403, f"more than the quota was refunded: {r}")
        # JSON usage reconciles too (app-b)
        r = call(gw.port, CHAT, chat_body("one two three", max_tokens=4000), key=KEY_B)
        self.assertEqual(r.status, 200, r)
        used = r.json()["usage"]["total_tokens"]
        self.wait_access(gw, r.headers["x-request-id"])
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5000 - used)}, key=KEY_B)
        self.assertEqual(r.status, 200, r)
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_B)
        self.assertEqual(r.status, 403, r)

    def test_client_abort_mid_stream_keeps_the_estimate(self):
        """A caller that hangs up before the usage chunk must not get its reservation back."""
        gw = self.start([{"name": "q", "key": ["name"], "tokens_per_minute": 1000000,
                          "token_quota": {"period": "year", "tokens": 5000}}])
        self.up.configure(chunks=6, chunk_interval_ms=300)
        payload = json.dumps(chat_body("one two three four five six", stream=True, max_tokens=3000,
                                       stream_options={"include_usage": True})).encode()
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"api-key: " + KEY_A.encode() + b"\r\nx-request-id: abort-mid-stream\r\n"
                  b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        buf = b""
        while b"\"content\"" not in buf:  # the first content delta
            b = s.recv(65536)
            self.assertTrue(b, buf)
            buf += b
        s.close()
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        self.assertTrue(head.startswith("http/1.1 200"), head)
        m = re.search(r"\r\nx-ratelimit-remaining-tokens: (\d+)", head)
        self.assertTrue(m, head)
        est = 1000000 - int(m.group(1))
        self.assertTrue(3000 < est < 3100, est)
        self.wait_access(gw, "abort-mid-stream")
        self.up.configure(chunks=0, chunk_interval_ms=0)
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5000 - est)}, key=KEY_A)
        self.assertEqual(r.status, 200, f"the aborted stream's estimate ({est}) was charged more than once: {r}")
        r = call(gw.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_A)
        self.assertEqual(r.status, 403, f"the aborted stream's reservation was refunded: {r}")

    def test_v1_and_responses_paths_cannot_escape_a_deployment_limit(self):
        gw = self.start([{"name": "dep", "match": {"deployments": ["gpt-4o-mini"]}, "requests_per_minute": 1}],
                        auth=False)
        r = call(gw.port, CHAT, chat_body())
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.all("x-ratelimit-remaining-requests"), ["0"], r)
        for path, body in [("/openai/v1/chat/completions", dict(chat_body(), model="gpt-4o-mini")),
                           ("/openai/v1/responses", {"model": "GPT-4o-Mini", "input": "hi"}),
                           ("/openai/responses?api-version=2025-03-01-preview", {"model": "gpt-4o-mini",
                                                                                 "input": "hi"}),
                           (chat_path("GPT-4O-MINI"), chat_body())]:
            r = call(gw.port, path, body)
            self.assertEqual(r.status, 429, f"{path}: {r}")
        # another deployment is not matched by the policy: no limit, no headers of ours
        r = call(gw.port, chat_path("gpt-4o"), chat_body())
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("x-ratelimit-limit-requests", r.headers, r)
        self.assertEqual(self.upstream_requests(), 2)

    def test_pipelined_requests_refusal_keeps_the_connection(self):
        gw = self.start([{"name": "rpm", "requests_per_minute": 2}], auth=False)
        reqs = b""
        for i in range(4):
            p = json.dumps(chat_body(f"pipelined {i}")).encode()
            close = b"Connection: close\r\n" if i == 3 else b""
            reqs += (b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + close + b"Content-Length: " + str(len(p)).encode() + b"\r\n\r\n" + p)
        resps = parse_responses(raw_exchange(gw.port, reqs, timeout=10))
        self.assertEqual([x[0] for x in resps], [200, 200, 429, 429], resps)
        for i in range(2):
            self.assertEqual(json.loads(resps[i][2])["choices"][0]["message"]["content"], f"Echo: pipelined {i}")
        self.assertNotEqual(resps[2][1].get("connection"), "close", resps[2][1])
        self.assertEqual(json.loads(resps[2][2])["error"]["code"], "429")
        self.assertEqual(self.upstream_requests(), 2)

    def test_reload_keeps_counters_and_applies_new_limits(self):
        pol = {"name": "per-key", "key": ["name"], "requests_per_minute": 3}
        gw = self.start([pol])
        self.assertEqual([call(gw.port, CHAT, chat_body(), key=KEY_A).status for _ in range(4)],
                         [200, 200, 200, 429])
        with open(gw.config_path) as f:
            cfg = json.load(f)
        n_reloads = [0]

        def reload(cfg):
            n_reloads[0] += 1
            gw.reload(cfg)
            wait_until(lambda: len([l for l in gw.log_lines() if "configuration reload" in l.get("msg", "")])
                       >= n_reloads[0], what="the reload to be applied or rejected")

        # an unrelated policy added: per-key keeps its counter
        cfg["rate_limits"]["policies"] = [pol, {"name": "other", "match": {"deployments": ["nothing"]},
                                                "requests_per_minute": 1}]
        reload(cfg)
        self.assertIn("configuration reloaded",
                      [l for l in gw.log_lines() if "configuration reload" in l.get("msg", "")][-1]["msg"])
        self.assertEqual(call(gw.port, CHAT, chat_body(), key=KEY_A).status, 429)
        # the limit raised to 5: the 3 requests already counted stay counted, 2 more fit
        cfg["rate_limits"]["policies"][0] = dict(pol, requests_per_minute=5)
        reload(cfg)
        # workers take the new snapshot asynchronously; refusals charge nothing, so poll
        r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(
            call(gw.port, CHAT, chat_body(), key=KEY_A)), timeout=10, what="the raised limit to apply")
        self.assertEqual((r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]),
                         ("5", "1"), r)
        self.assertEqual([call(gw.port, CHAT, chat_body(), key=KEY_A).status for _ in range(2)], [200, 429])
        # a changed store needs a restart: the reload is rejected and the limits stay in force
        cfg["rate_limits"]["store"] = {"type": "memory", "max_keys": 1000}
        reload(cfg)
        last = [l for l in gw.log_lines() if "configuration reload" in l.get("msg", "")][-1]["msg"]
        self.assertIn("rejected", last)
        self.assertIn("rate_limits.store", last)
        self.assertEqual(call(gw.port, CHAT, chat_body(), key=KEY_A).status, 429)
        self.assertEqual(call(gw.port, CHAT, chat_body(), key=KEY_B).status, 200)

    def test_full_memory_table_refuses_new_counters_with_503(self):
        # 60 s per request at 1/min: every counter stays live for the whole test
        gw = self.start([{"name": "per-dep", "key": ["deployment"], "requests_per_minute": 1}],
                        store={"type": "memory", "max_keys": 16, "shards": 1}, auth=False)
        for i in range(16):
            r = call(gw.port, chat_path(f"dep-{i}"), chat_body())
            self.assertEqual(r.status, 200, f"dep-{i}: {r}")
        r = call(gw.port, chat_path("dep-16"), chat_body())
        self.assert_refusal(r, 503, "The rate-limit store is unavailable. Please retry after 1 second.",
                            (1000, 1000))
        self.assertEqual(self.upstream_requests(), 16)
        # existing counters still work
        self.assertEqual(call(gw.port, chat_path("dep-3"), chat_body()).status, 429)

    def test_refusals_counted_in_metrics(self):
        gw = self.start([{"name": "per-key", "key": ["name"], "requests_per_minute": 1},
                         {"name": "quota", "key": ["name"], "token_quota": {"period": "year", "tokens": 10}}])
        self.assertEqual(call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5)}, key=KEY_A).status, 200)
        self.assertEqual(call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5)}, key=KEY_A).status, 429)
        self.assertEqual(call(gw.port, EMB.format(dep="emb"), {"input": ids_input(5)}, key=KEY_A).status, 429)
        self.assertEqual(call(gw.port, EMB.format(dep="emb"), {"input": ids_input(11)}, key=KEY_B).status, 403)

        def metric():
            st, h, body = request(gw.admin_port, "GET", "/metrics")
            self.assertEqual(st, 200)
            got = {}
            for line in body.decode().splitlines():
                m = re.match(r'^aoai_guard_ratelimit_rejections_total\{policy="([^"]*)"\} (\S+)$', line)
                if m:
                    got[m.group(1)] = float(m.group(2))
            return got if got.get("per-key") == 2 and got.get("quota") == 1 else None
        wait_until(metric, timeout=10, what="aoai_guard_ratelimit_rejections_total per policy")


class QuotaRollover(LimitsTestCase):
    """Quota periods roll over at UTC calendar boundaries, through the binary with the test clock
    (AOAI_GUARD_TEST_CLOCK_FILE: "now" in Unix ms, read at every decision)."""

    def set_clock(self, when):
        with open(self.clock, "w") as f:
            f.write(str(int(when.timestamp() * 1000)))

    def run_period(self, period, before, after, tokens=20):
        self.clock = os.path.join(self.tmp, f"clock-{period}")
        self.set_clock(before)
        self.up = self.fake(name=f"aoai-{period}")
        cfg = base_config([upstream(self.up)], auth=api_key_auth(), rate_limits={"policies": [
            {"name": f"quota-{period}", "key": ["name"], "token_quota": {"period": period, "tokens": 1000}}]})
        gw = self.gateway(cfg, name=f"gw-{period}", env={"AOAI_GUARD_TEST_CLOCK_FILE": self.clock})
        emb = "/openai/deployments/emb/embeddings?api-version=2024-10-21"
        r = call(gw.port, emb, {"input": ids_input(900)}, key=KEY_A)
        self.assertEqual(r.status, 200, r)
        r = call(gw.port, emb, {"input": ids_input(900)}, key=KEY_A)
        self.assertEqual(r.status, 403, r)  # 1800 > 1000 in this period
        window_left = int(r.headers["retry-after-ms"])
        self.assertAlmostEqual(window_left, int((after - before).total_seconds() * 1000) - 5000, delta=2000)
        self.set_clock(after)  # 5 s into the next period
        r = call(gw.port, emb, {"input": ids_input(900)}, key=KEY_A)
        self.assertEqual(r.status, 200, r)  # a fresh quota
        gw.stop()

    def test_day_rollover(self):
        utc = datetime.timezone.utc
        self.run_period("day", datetime.datetime(2026, 11, 28, 23, 59, 50, tzinfo=utc),
                        datetime.datetime(2026, 11, 29, 0, 0, 5, tzinfo=utc))

    def test_month_rollover_in_a_leap_february(self):
        utc = datetime.timezone.utc
        self.run_period("month", datetime.datetime(2028, 2, 29, 23, 59, 50, tzinfo=utc),
                        datetime.datetime(2028, 3, 1, 0, 0, 5, tzinfo=utc))


class EntraIdentities(LimitsTestCase):
    """Entra ID callers: counters keyed by (tid, oid) and by app stack; matching by app and role."""

    def test_user_and_app_limits_stack(self):
        entra = self.track(FakeEntra(self.tmp))
        kid = entra.kids()[0]
        self.up = self.fake()
        policies = [{"name": "per-user", "key": ["tid", "oid"], "requests_per_minute": 2},
                    {"name": "per-app", "key": ["app"], "requests_per_minute": 3},
                    {"name": "app-b-only", "match": {"apps": [APP_B.upper()], "roles": ["Batch"]},
                     "requests_per_minute": 1}]
        cfg = base_config([upstream(self.up)], auth=auth_section(entra, rules=[
            {"roles": ["AI.User"], "deployments": ["*"]}]), rate_limits={"policies": policies})
        gw = self.gateway(cfg)
        wait_until(lambda: request(gw.admin_port, "GET", "/readyz", timeout=5)[0] == 200, timeout=20,
                   what="/readyz 200")
        oid = ["0d0d0d0d-0000-4000-8000-0000000000%02d" % i for i in range(1, 5)]
        tok = {
            "u1": mint(entra.key_path(kid), kid, v2_claims(entra, oid=oid[0], app=APP_A)),
            "u2": mint(entra.key_path(kid), kid, v2_claims(entra, oid=oid[1], app=APP_A)),
            "u3": mint(entra.key_path(kid), kid, v2_claims(entra, oid=oid[2], app=APP_B)),
            "u4": mint(entra.key_path(kid), kid, v2_claims(entra, oid=oid[3], app=APP_B,
                                                            roles=["AI.User", "Batch"])),
        }

        def send(who):
            r = call(gw.port, CHAT, chat_body(), headers={"Authorization": "Bearer " + tok[who]})
            pair = (r.headers.get("x-ratelimit-limit-requests"), r.headers.get("x-ratelimit-remaining-requests"))
            return r, (r.status,) + pair

        # u1: per-user 2 is the tightest, then per-user refuses
        self.assertEqual(send("u1")[1], (200, "2", "1"))
        self.assertEqual(send("u1")[1], (200, "2", "0"))
        r, got = send("u1")
        self.assertEqual(got, (429, "2", "0"))
        self.assertIn("'per-user'", r.json()["error"]["message"])
        # u2, same app: its own user counter, but the app's third and last request
        self.assertEqual(send("u2")[1], (200, "3", "0"))
        r, got = send("u2")
        self.assertEqual(got[0], 429, r)
        self.assertIn("'per-app'", r.json()["error"]["message"])
        # app B is unaffected; only u4 has the Batch role the third policy matches
        self.assertEqual(send("u3")[1], (200, "2", "1"))
        self.assertEqual(send("u4")[1], (200, "1", "0"))
        r, got = send("u4")
        self.assertEqual(got[0], 429, r)
        self.assertIn("'app-b-only'", r.json()["error"]["message"])
        self.assertEqual(self.upstream_requests(), 5)


class RedisStore(LimitsTestCase):
    def setUp(self):
        super().setUp()
        self.redis = RedisServer(self.tmp)
        self.addCleanup(self.redis.close)

    def store(self, prefix, on_error="fail_open", timeout_ms=300):
        return {"type": "redis", "url": f"redis://127.0.0.1:{self.redis.port}", "key_prefix": prefix,
                "timeout_ms": timeout_ms, "on_error": on_error, "reconnect_min_ms": 50,
                "reconnect_max_ms": 300}

    def test_two_gateways_share_one_limit(self):
        pol = [{"name": "per-key", "key": ["name"], "requests_per_minute": 10}]
        g1 = self.start(pol, store=self.store("shared:"), workers=2, name="gw1")
        g2 = self.start(pol, store=self.store("shared:"), workers=2, name="gw2")
        t0 = time.monotonic()
        res = [call((g1, g2)[i % 2].port, CHAT, chat_body(f"seq {i}"), key=KEY_A) for i in range(12)]
        self.assertLess(time.monotonic() - t0, 5.5, "too slow to be meaningful (one request drains per 6 s)")
        self.assertEqual([r.status for r in res], [200] * 10 + [429] * 2, res)
        self.assertEqual([r.headers["x-ratelimit-remaining-requests"] for r in res[:10]],
                         [str(9 - i) for i in range(10)])
        for r in res[10:]:
            self.assert_refusal(r, 429, RPM_MSG.format(limit=10, policy="per-key"), (1, 6000))
        self.assertEqual(self.upstream_requests(), 10)

        # a burst from 50 connections spread over both gateways: exactly 10 admitted
        def one(i, conn):
            return call(0, CHAT, chat_body(f"burst {i}"), key=KEY_B, conn=conn)
        one.connect = lambda i: http.client.HTTPConnection("127.0.0.1", (g1, g2)[i % 2].port, timeout=30)
        t0 = time.monotonic()
        res = burst(50, one)
        self.assertLess(time.monotonic() - t0, 5.5, "the burst took too long to be meaningful")
        self.assertEqual(sum(r.status == 200 for r in res), 10, [r.status for r in res])
        self.assertEqual(sum(r.status == 429 for r in res), 40, [r.status for r in res])
        self.assertEqual(self.upstream_requests(), 20)

        # counters live in Redis under the prefix, hashed: no identity in clear
        keys = self.redis.keys("shared:*")
        self.assertEqual(len(keys), 2, keys)
        for k in keys:
            self.assertRegex(k, r"^shared:per-key:rpm:[0-9a-f]{32}$")
            self.assertNotIn("app-", k)
        c = self.redis.client()
        try:
            for k in keys:
                ttl = c.cmd("PTTL", k)
                self.assertTrue(0 < ttl <= 61000, (k, ttl))
        finally:
            c.close()

    def test_shared_quota_reconciled_through_redis(self):
        pol = [{"name": "q", "key": ["name"], "token_quota": {"period": "year", "tokens": 5000}}]
        g1 = self.start(pol, store=self.store("quota:"), name="gw1")
        g2 = self.start(pol, store=self.store("quota:"), name="gw2")
        r = call(g1.port, CHAT, chat_body("one two three four", stream=True, max_tokens=4000,
                                          stream_options={"include_usage": True}), key=KEY_A)
        self.assertEqual(r.status, 200, r)
        events = [l[6:] for l in r.body.decode().split("\n") if l.startswith("data: ")]
        used = json.loads(events[-2])["usage"]["total_tokens"]
        self.wait_access(g1, r.headers["x-request-id"])
        # the adjustment reaches Redis asynchronously after the access line: wait on the counter itself
        r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(
            call(g2.port, EMB.format(dep="emb"), {"input": ids_input(5000 - used)}, key=KEY_A)),
            timeout=5, what="the reconciled quota to admit exactly the rest")
        r = call(g1.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_A)
        self.assertEqual(r.status, 403, r)
        r = call(g2.port, EMB.format(dep="emb"), {"input": ids_input(1)}, key=KEY_A)
        self.assertEqual(r.status, 403, r)
        keys = self.redis.keys("quota:*")
        self.assertEqual(len(keys), 1, keys)
        self.assertRegex(keys[0], r"^quota:q:year:[0-9a-f]{32}$")
        # a quota counter lives until a minute after its window (the UTC year) ends
        c = self.redis.client()
        try:
            ttl = c.cmd("PTTL", keys[0])
        finally:
            c.close()
        now = int(time.time() * 1000)
        want = window_end_ms("year", now) - now + 60000
        self.assertTrue(want - 5000 <= ttl <= want + 1000, (ttl, want))

    def test_redis_outage_fail_open_fail_closed_and_recovery(self):
        pol = [{"name": "per-key", "key": ["name"], "requests_per_minute": 3}]
        gc = self.start(pol, store=self.store("closed:", on_error="fail_closed"), name="gw-closed")
        go = self.start(pol, store=self.store("open:", on_error="fail_open"), name="gw-open")
        # healthy: both decide in Redis
        self.assertEqual(call(gc.port, CHAT, chat_body(), key=KEY_A).status, 200)
        st = [call(go.port, CHAT, chat_body(), key=KEY_A).status for _ in range(4)]
        self.assertEqual(st, [200, 200, 200, 429])
        self.assertEqual(len(self.redis.keys("open:*")), 1)
        before = self.upstream_requests()

        # Redis hangs: no request waits longer than timeout_ms (300) for it
        self.redis.hang()
        for i in range(2):
            r = call(gc.port, CHAT, chat_body(), key=KEY_A)
            self.assertEqual(r.status, 503, r)
            if i == 0:  # sent on the live connection: refused when the watchdog fires, not before
                self.assertGreater(r.elapsed, 0.25, "503 before timeout_ms: was Redis really hung?")
            self.assertLess(r.elapsed, 1.3, f"fail_closed took {r.elapsed:.3f}s with timeout_ms 300")
            self.assertEqual(r.headers["retry-after"], "1", r)
            self.assertEqual(r.headers["retry-after-ms"], "1000", r)
            self.assertEqual(r.json()["error"]["code"], "503", r)
            self.assertRegex(r.json()["error"]["message"], "rate-limit store is unavailable")
        # fail_open decides with this replica's own table: fresh, so the limit starts over locally
        r = call(go.port, CHAT, chat_body(), key=KEY_A)
        self.assertEqual(r.status, 200, r)
        self.assertLess(r.elapsed, 1.3, f"fail_open took {r.elapsed:.3f}s with timeout_ms 300")
        self.assertEqual(self.upstream_requests(), before + 1)

        # Redis killed: refused connections fail at once
        self.redis.kill()
        r = call(gc.port, CHAT, chat_body(), key=KEY_A)
        self.assertEqual(r.status, 503, r)
        self.assertLess(r.elapsed, 1.0, r.elapsed)
        rs = [call(go.port, CHAT, chat_body(), key=KEY_A) for _ in range(3)]
        self.assertEqual([x.status for x in rs], [200, 200, 429], rs)  # the local limit still holds
        self.assertTrue(all(x.elapsed < 1.0 for x in rs), [x.elapsed for x in rs])
        self.assertEqual(rs[2].headers.get("x-ratelimit-remaining-requests"), "0", rs[2])
        self.assertEqual(self.upstream_requests(), before + 3)

        # Redis back (empty: no persistence): both recover within the reconnect back-off
        self.redis.start()
        r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(
            call(gc.port, CHAT, chat_body(), key=KEY_A)), timeout=10, what="fail_closed gateway to recover")
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "2", r)
        self.assertEqual(len(self.redis.keys("closed:*")), 1)
        # gw-open: refused by its exhausted local table until it reconnects, then the fresh Redis counter
        r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(
            call(go.port, CHAT, chat_body(), key=KEY_A)), timeout=10, what="fail_open gateway to use Redis again")
        self.assertEqual(self.redis.keys("open:*"), [k for k in self.redis.keys("open:*")
                                                      if re.match(r"^open:per-key:rpm:[0-9a-f]{32}$", k)])
        self.assertEqual(len(self.redis.keys("open:*")), 1)
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "2", r)
        st = [call(go.port, CHAT, chat_body(), key=KEY_A).status for _ in range(3)]
        self.assertEqual(st, [200, 200, 429])

    def test_password_and_script_flush(self):
        self.redis.close()
        self.redis = RedisServer(self.tmp, password="s3cret-pass%word")
        self.addCleanup(self.redis.close)
        pol = [{"name": "per-key", "key": ["name"], "requests_per_minute": 3}]
        st = dict(self.store("pw:", on_error="fail_closed"),
                  url=f"redis://:s3cret-pass%25word@127.0.0.1:{self.redis.port}")
        gw = self.start(pol, store=st, name="gw")
        r = call(gw.port, CHAT, chat_body(), key=KEY_A)
        self.assertEqual((r.status, r.headers.get("x-ratelimit-remaining-requests")), (200, "2"), r)
        # scripts flushed (failover, SCRIPT FLUSH): EVALSHA answers NOSCRIPT and the gateway resends
        c = self.redis.client()
        try:
            self.assertEqual(c.cmd("SCRIPT", "FLUSH"), "OK")
        finally:
            c.close()
        rs = [call(gw.port, CHAT, chat_body(), key=KEY_A) for _ in range(3)]
        self.assertEqual([(x.status, x.headers.get("x-ratelimit-remaining-requests")) for x in rs],
                         [(200, "1"), (200, "0"), (429, "0")], rs)
        c = self.redis.client()
        try:
            stats = c.cmd("INFO", "commandstats").decode()
        finally:
            c.close()
        self.assertRegex(stats, r"cmdstat_eval:calls=[1-9]", "no EVAL after the scripts were flushed")
        # a wrong password cannot reach the counters: fail_closed answers 503
        bad = dict(st, url=f"redis://:wrong-password@127.0.0.1:{self.redis.port}")
        gw2 = self.start(pol, store=bad, name="gw-bad")
        r = call(gw2.port, CHAT, chat_body(), key=KEY_B)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(len(self.redis.keys("pw:*")), 1)

    def test_redis_down_at_start_then_up(self):
        self.redis.close()
        self.redis = RedisServer(self.tmp, start=False)
        self.addCleanup(self.redis.close)
        pol = [{"name": "per-key", "key": ["name"], "requests_per_minute": 2}]
        gc = self.start(pol, store=self.store("c:", on_error="fail_closed"), name="gw-closed")
        go = self.start(pol, store=self.store("o:", on_error="fail_open"), name="gw-open")
        r = call(gc.port, CHAT, chat_body(), key=KEY_A)
        self.assertEqual(r.status, 503, r)
        self.assertLess(r.elapsed, 1.0)
        self.assertEqual([call(go.port, CHAT, chat_body(), key=KEY_A).status for _ in range(3)], [200, 200, 429])
        self.assertEqual(self.upstream_requests(), 2)
        self.redis.start()
        r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(
            call(gc.port, CHAT, chat_body(), key=KEY_A)), timeout=10, what="fail_closed gateway to connect")
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "1", r)
        self.assertEqual(call(gc.port, CHAT, chat_body(), key=KEY_A).status, 200)
        self.assertEqual(call(gc.port, CHAT, chat_body(), key=KEY_A).status, 429)
        self.assertEqual(len(self.redis.keys("c:*")), 1)

    def test_client_leaves_while_redis_decides(self):
        pol = [{"name": "per-key", "key": ["name"], "requests_per_minute": 3}]
        gw = self.start(pol, store=self.store("p:", on_error="fail_closed", timeout_ms=2000), name="gw")
        self.assertEqual(call(gw.port, CHAT, chat_body(), key=KEY_A).status, 200)
        self.redis.hang()
        payload = json.dumps(chat_body("gone")).encode()
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"api-key: " + KEY_A.encode() + b"\r\nx-request-id: left-early\r\n"
                  b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        wait_until(lambda: self.redis_pending(), timeout=5, what="the reservation to be sent to the hung Redis")
        s.close()
        # the gateway notices at once, not when the Redis watchdog fires (2 s)
        wait_until(lambda: [l for l in gw.access_lines() if l.get("request_id") == "left-early"],
                   timeout=1.5, what="the abandoned request to end")
        self.redis.resume()  # the reservation is made late, then cancelled: the request still counts
        rs = [call(gw.port, CHAT, chat_body(), key=KEY_A) for _ in range(2)]
        self.assertEqual([(x.status, x.headers.get("x-ratelimit-remaining-requests")) for x in rs],
                         [(200, "0"), (429, "0")], rs)
        self.assertEqual(self.upstream_requests(), 2)

    def redis_pending(self):
        """True once the kernel holds unread bytes for the stopped redis-server (a command was sent):
        the receive queue of an established socket on the server's port, from /proc/net/tcp."""
        port = "%04X" % self.redis.port
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local, state, queues = cols[1], cols[3], cols[4]
                if local.endswith(":" + port) and state == "01" and int(queues.split(":")[1], 16) > 0:
                    return True
        return False


if __name__ == "__main__":
    unittest.main()
