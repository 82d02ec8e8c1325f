"""Issue 7: /metrics on the admin port (parsed strictly by promparse.py), readiness during drain, and
the gateway's JSON log lines, through the real binary."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import (BIN, CHAT, GatewayTestCase, base_config, chat_body, request, upstream, wait_until)
import promparse

STD_FAMILIES = {
    "aoai_guard_requests_total": ("counter", ("deployment", "operation", "code_class")),
    "aoai_guard_request_duration_seconds": ("histogram", ("operation",)),
    "aoai_guard_upstream_ttfb_seconds": ("histogram", ("upstream",)),
    "aoai_guard_tokens_total": ("counter", ("deployment", "kind")),
    "aoai_guard_app_tokens_total": ("counter", ("app", "kind")),
    "aoai_guard_ratelimit_rejections_total": ("counter", ("policy",)),
    "aoai_guard_policy_decisions_total": ("counter", ("rule", "action")),
    "aoai_guard_upstream_up": ("gauge", ("upstream",)),
    "aoai_guard_upstream_circuit_open": ("gauge", ("upstream",)),
    "aoai_guard_upstream_failures_total": ("counter", ("upstream", "reason")),
    "aoai_guard_auth_failures_total": ("counter", ("reason",)),
    "aoai_guard_jwks_age_seconds": ("gauge", ()),
    "aoai_guard_jwks_refresh_failures_total": ("counter", ()),
    "aoai_guard_credential_refresh_failures_total": ("counter", ("scope",)),
    "aoai_guard_audit_queue_depth": ("gauge", ()),
    "aoai_guard_audit_spool_bytes": ("gauge", ()),
    "aoai_guard_audit_records_sent_total": ("counter", ()),
    "aoai_guard_audit_retries_total": ("counter", ()),
    "aoai_guard_audit_dropped_total": ("counter", ()),
    "aoai_guard_open_connections": ("gauge", ()),
    "aoai_guard_process_resident_memory_bytes": ("gauge", ()),
    "aoai_guard_build_info": ("gauge", ("version",)),
}
LATENCY_BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                  math.inf]
DEP = "gpt-4o-mini"
OP = "chat/completions"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def prompt_tokens(text):
    return max(1, math.ceil(len(text.encode()) / 4))


def completion_tokens(reply):
    return math.ceil(len(reply.encode()) / 4)


def version():
    return subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]


def scrape(gw):
    st, h, body = request(gw.admin_port, "GET", "/metrics")
    if st != 200:
        raise AssertionError(f"/metrics answered {st}: {body[:300]!r}")
    if h.get("content-type") != "text/plain; version=0.0.4; charset=utf-8":
        raise AssertionError(f"/metrics Content-Type {h.get('content-type')!r}")
    return promparse.parse(body)


def total(fam, sample_name=None, **match):
    """Sum of the samples whose labels include match."""
    name = sample_name or fam.name
    return sum(s.value for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in match.items()))


def wait_metric(gw, name, value, timeout=5.0):
    """Scrapes until the unlabelled sample `name` equals value; fails naming the last value seen."""
    seen = []

    def ok():
        m = scrape(gw)
        seen.append(m[name].get())
        return m if seen[-1] == value else None
    try:
        return wait_until(ok, timeout, interval=0.05, what=f"{name} == {value}")
    except AssertionError:
        raise AssertionError(f"{name}: expected {value}, last scraped {seen[-1] if seen else None}") from None


class MetricsTestCase(GatewayTestCase):
    def config(self, ups, **kw):
        cfg = base_config(ups, audit={"sinks": [{"type": "file", "path": os.path.join(self.tmp, "audit.jsonl")}],
                                      "spool_dir": os.path.join(self.tmp, "spool")}, **kw)
        return cfg


class KnownTraffic(MetricsTestCase):
    def test_exact_counts_after_known_traffic(self):
        a = self.fake("eastus")
        b = self.fake("westus")
        gw = self.gateway(self.config([upstream(a, priority=1), upstream(b, priority=2)]))
        m0 = scrape(gw)
        # Every standard family is there from the start, typed, with its HELP and label names.
        for name, (typ, labels) in STD_FAMILIES.items():
            self.assertIn(name, m0)
            self.assertEqual(m0[name].type, typ, name)
            self.assertTrue(m0[name].help, name)
            for s in m0[name].samples:
                self.assertEqual(set(s.labels) - {"le"}, set(labels), s)
        self.assertEqual(m0["aoai_guard_requests_total"].samples, [])
        self.assertEqual(m0["aoai_guard_open_connections"].get(), 0)
        self.assertEqual(m0["aoai_guard_build_info"].get(version=version()), 1)
        self.assertEqual(len(m0["aoai_guard_build_info"].samples), 1)
        self.assertGreater(m0["aoai_guard_process_resident_memory_bytes"].get(), 1 << 20)

        texts, usage = [], {"prompt": 0, "completion": 0}

        def chat(text, **kw):
            st, h, body = request(gw.port, "POST", CHAT, chat_body(text, **kw))
            self.assertEqual(st, 200, body)
            texts.append(text)
            usage["prompt"] += prompt_tokens(text)
            usage["completion"] += completion_tokens("Echo: " + text)
            return h, body

        # 5 chat 200s on eastus.
        for i in range(5):
            h, body = chat(f"question number {i} " + "pad " * i)
            self.assertEqual(h["x-fake-name"], "eastus")
            u = json.loads(body)["usage"]
            self.assertEqual(u["prompt_tokens"], prompt_tokens(texts[-1]))
        # 2 404s answered by the gateway.
        self.assertEqual(request(gw.port, "GET", "/openai/deployments")[0], 404)
        self.assertEqual(request(gw.port, "POST", "/not/azure", {"a": 1})[0], 404)
        # 3 upstream 429s, each failed over to westus.
        for i in range(3):
            # Retry-after-ms 1: eastus is blocked for 1 ms only, so every one of these tries it first.
            a.configure(faults=[{"status": 429, "retry_after_ms": "1", "count": 1}])
            time.sleep(0.005)  # not a wait for a condition: lets the previous 1 ms block run out
            h, _ = chat(f"throttled then moved {i}")
            self.assertEqual(h["x-fake-name"], "westus")
        self.assertEqual(a.stats()["faults_pending"], 0)
        # 1 stream with usage.
        h, body = chat("stream me please", stream=True, stream_options={"include_usage": True})
        stream_up = h["x-fake-name"]
        self.assertIn(b"[DONE]", body)
        ups = {"eastus": a.stats()["requests"], "westus": b.stats()["requests"]}
        self.assertEqual(ups, {"eastus": 5 + 3 + (stream_up == "eastus"), "westus": 3 + (stream_up == "westus")})

        m = wait_until(lambda: (lambda x: x if total(x["aoai_guard_requests_total"]) == 11 else None)(scrape(gw)),
                       what="11 requests counted")
        req = m["aoai_guard_requests_total"]
        self.assertEqual(req.get(deployment=DEP, operation=OP, code_class="2xx"), 9)
        self.assertEqual(req.get(deployment="none", operation="none", code_class="4xx"), 2)  # not routed
        self.assertEqual(len(req.samples), 2, req.samples)
        self.assertEqual(total(req, code_class="5xx"), 0)
        self.assertEqual(total(req, deployment=DEP), 9)  # the 429s were not the caller's answer
        # The duration histogram counts every request answered, per operation.
        dur = m["aoai_guard_request_duration_seconds"]
        ops = {s.labels["operation"] for s in req.samples}
        for op in ops:
            h = dur.histogram(operation=op)
            self.assertEqual(h["count"], total(req, operation=op), op)
            self.assertEqual([le for le, _ in h["buckets"]], LATENCY_BOUNDS)
            counts = [c for _, c in h["buckets"]]
            self.assertEqual(counts, sorted(counts))
            self.assertGreater(h["sum"], 0)
            self.assertLess(h["sum"], h["count"] * 10)
        self.assertEqual(total(dur, "aoai_guard_request_duration_seconds_count"), 11)
        # Time to first byte: one observation per forwarded request, for the upstream that answered it
        # (the 429 attempts on eastus are counted as failures, not as eastus answers).
        ttfb = m["aoai_guard_upstream_ttfb_seconds"]
        self.assertEqual(ttfb.histogram(upstream="eastus")["count"], 5 + (stream_up == "eastus"))
        self.assertEqual(ttfb.histogram(upstream="westus")["count"], 3 + (stream_up == "westus"))
        for name in ("eastus", "westus"):
            h = ttfb.histogram(upstream=name)
            self.assertEqual([le for le, _ in h["buckets"]], LATENCY_BOUNDS)
            self.assertLessEqual(h["sum"], total(dur, "aoai_guard_request_duration_seconds_sum"))
        # Tokens: exactly the fake's deterministic usage (the stream reported its usage chunk).
        tok = m["aoai_guard_tokens_total"]
        self.assertEqual(tok.get(deployment=DEP, kind="prompt"), usage["prompt"])
        self.assertEqual(tok.get(deployment=DEP, kind="completion"), usage["completion"])
        self.assertEqual(len(tok.samples), 2)
        # Per application: the same totals (anonymous callers share one label value).
        app = m["aoai_guard_app_tokens_total"]
        self.assertEqual(total(app, kind="prompt"), usage["prompt"])
        self.assertEqual(total(app, kind="completion"), usage["completion"])
        self.assertEqual(len({s.labels["app"] for s in app.samples}), 1)
        # The clients have closed; the gateway sees each close as an event of its own.
        wait_metric(gw, "aoai_guard_open_connections", 0)

    def test_open_connections_gauge(self):
        up = self.fake()
        gw = self.gateway(self.config([upstream(up)], workers=2))
        socks = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
        try:
            wait_until(lambda: scrape(gw)["aoai_guard_open_connections"].get() == 3, what="3 open connections")
            # A keep-alive connection that served a request still counts.
            p = json.dumps(chat_body("keep me")).encode()
            socks[0].sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(p)).encode() + b"\r\n\r\n" + p)
            buf = b""
            while b"Echo: keep me" not in buf:
                chunk = socks[0].recv(65536)
                self.assertTrue(chunk)
                buf += chunk
            self.assertEqual(scrape(gw)["aoai_guard_open_connections"].get(), 3)
            socks.pop().close()
            wait_until(lambda: scrape(gw)["aoai_guard_open_connections"].get() == 2, what="2 open connections")
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: scrape(gw)["aoai_guard_open_connections"].get() == 0, what="0 open connections")

    def test_label_cardinality_is_capped(self):
        up = self.fake()
        gw = self.gateway(self.config([upstream(up)], admin={"address": "127.0.0.1", "port": 0,
                                                               "metrics": {"max_series_per_family": 3}}))
        for i in range(6):
            st, _, _ = request(gw.port, "POST", f"/openai/deployments/dep-{i}/chat/completions?api-version=2024-10-21",
                               chat_body("hi"))
            self.assertEqual(st, 200)
        req = scrape(gw)["aoai_guard_requests_total"]
        self.assertEqual(len(req.samples), 4, req.samples)
        self.assertEqual(req.get(deployment="other", operation="other", code_class="other"), 3)
        self.assertEqual(total(req), 6)

    def test_admin_endpoint_details(self):
        up = self.fake()
        gw = self.gateway(self.config([upstream(up)]))
        st, h, body = request(gw.admin_port, "POST", "/metrics", {})
        self.assertIn(st, (405, 501))  # libevent's evhttp answers a disallowed method with 501
        st, h, body = request(gw.admin_port, "GET", "/metrics?x=1")
        self.assertEqual(st, 200)
        promparse.parse(body)
        st, _, _ = request(gw.admin_port, "GET", "/nothing")
        self.assertEqual(st, 404)
        self.assertEqual(request(gw.admin_port, "GET", "/healthz")[0], 200)
        self.assertEqual(request(gw.admin_port, "GET", "/readyz")[0], 200)


class UpstreamFamilies(MetricsTestCase):
    def test_upstream_failures_circuit_and_up(self):
        a = self.fake("eastus")
        b = self.fake("westus")
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()  # nothing listens there
        gw = self.gateway(self.config([
            {"name": "dead", "url": f"http://127.0.0.1:{dead_port}", "priority": 1,
             "auth": {"type": "api_key", "api_key": "k"},
             "circuit_breaker": {"failure_threshold": 2, "cooldown_ms": 60000}},
            upstream(a, priority=2), upstream(b, priority=3)]))
        for i in range(4):
            st, h, _ = request(gw.port, "POST", CHAT, chat_body(f"q{i}"))
            self.assertEqual((st, h["x-fake-name"]), (200, "eastus"))
        for i in range(3):
            a.configure(faults=[{"status": 429, "retry_after_ms": "1", "count": 1}])
            time.sleep(0.005)  # not a wait for a condition: lets the previous 1 ms block run out
            st, h, _ = request(gw.port, "POST", CHAT, chat_body(f"t{i}"))
            self.assertEqual((st, h["x-fake-name"]), (200, "westus"))
        m = scrape(gw)
        fail = m["aoai_guard_upstream_failures_total"]
        # Two connection failures opened dead's circuit; then eastus answered 429 three times.
        self.assertEqual(total(fail, upstream="dead"), 2, fail.samples)
        self.assertEqual(total(fail, upstream="eastus"), 3, fail.samples)
        self.assertEqual(total(fail, upstream="westus"), 0, fail.samples)
        self.assertEqual(m["aoai_guard_upstream_circuit_open"].get(upstream="dead"), 1)
        self.assertEqual(m["aoai_guard_upstream_circuit_open"].get(upstream="westus"), 0)
        self.assertEqual(m["aoai_guard_upstream_up"].get(upstream="dead"), 0)
        self.assertEqual(m["aoai_guard_upstream_up"].get(upstream="westus"), 1)


class AuditFamilies(MetricsTestCase):
    def test_audit_families_follow_the_trail(self):
        from test_audit import DCR, STREAM, FakeIdentity, FakeMonitor, TENANT, CLIENT_ID, CLIENT_SECRET
        idp = self.track(FakeIdentity(self.tmp))
        mon = self.track(FakeMonitor(self.tmp, idp.next_token()))
        up = self.fake()
        cfg = base_config([upstream(up)], audit={
            "sinks": [{"type": "azure_monitor", "endpoint": mon.url, "dcr_immutable_id": DCR, "stream": STREAM,
                       "retry_initial_ms": 50, "retry_max_ms": 200}],
            "spool_dir": os.path.join(self.tmp, "spool")},
            credential={"type": "client_secret", "tenant_id": TENANT, "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET, "authority_host": f"http://127.0.0.1:{idp.port}"})
        gw = self.gateway(cfg)
        for i in range(5):
            self.assertEqual(request(gw.port, "POST", CHAT, chat_body(f"audited {i}"))[0], 200)
        wait_until(lambda: mon.stats()["records"] == 6, what="5 requests + the start event delivered")
        wait_metric(gw, "aoai_guard_audit_records_sent_total", 6)
        # The gauge follows the checkpoint, which moves just after the rows count as sent.
        m = wait_metric(gw, "aoai_guard_audit_spool_bytes", 0)  # nothing left unacknowledged
        self.assertEqual(m["aoai_guard_audit_queue_depth"].get(), 0)
        self.assertEqual(m["aoai_guard_audit_retries_total"].get(), 0)
        self.assertEqual(m["aoai_guard_audit_dropped_total"].get(), 0)
        # Two 503s: two retries, then the row arrives.
        mon.faults(status=503, count=2)
        self.assertEqual(request(gw.port, "POST", CHAT, chat_body("retried"))[0], 200)
        wait_until(lambda: mon.stats()["records"] == 7, what="the retried row delivered")
        wait_metric(gw, "aoai_guard_audit_records_sent_total", 7)
        m = wait_metric(gw, "aoai_guard_audit_spool_bytes", 0)
        self.assertEqual(m["aoai_guard_audit_retries_total"].get(), 2)


class DrainAndLogs(MetricsTestCase):
    def test_readyz_flips_to_503_during_drain(self):
        up = self.fake()
        gw = self.gateway(self.config([upstream(up)], shutdown={"drain_timeout_ms": 10000}))
        self.assertEqual(request(gw.admin_port, "GET", "/readyz")[0], 200)
        up.configure(first_byte_delay_ms=2000)
        result = {}

        def slow():
            result["r"] = request(gw.port, "POST", CHAT, chat_body("slow one"))

        t = threading.Thread(target=slow)
        t.start()
        wait_until(lambda: up.stats()["requests"] >= 1, what="request at the upstream")
        gw.signal(signal.SIGTERM)
        st, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(request(gw.admin_port, "GET", "/readyz")),
                                 timeout=5, what="readyz 503")
        self.assertEqual(json.loads(body)["status"], "draining")
        # Still alive, still scrapeable, and the request in flight is still in flight.
        self.assertEqual(request(gw.admin_port, "GET", "/healthz")[0], 200)
        self.assertTrue(t.is_alive())
        m = scrape(gw)
        self.assertEqual(m["aoai_guard_open_connections"].get(), 1)
        t.join(15)
        self.assertEqual(result["r"][0], 200)
        self.assertEqual(gw.p.wait(15), 0)

    def test_every_log_line_is_json_with_time_level_msg(self):
        up = self.fake()
        cfg = self.config([upstream(up)])
        gw = self.gateway(cfg)
        request(gw.port, "POST", CHAT, chat_body("one"))
        request(gw.port, "POST", CHAT, chat_body("two", stream=True))
        request(gw.port, "GET", "/openai/deployments")
        request(gw.port, "POST", CHAT, b"{bad json")
        up.configure(faults=[{"status": 500, "count": 1}])
        request(gw.port, "POST", CHAT, chat_body("three"))
        gw.reload(dict(cfg, limits={"max_body_bytes": 100000}))
        wait_until(lambda: any("reloaded" in l.get("msg", "") for l in gw.log_lines()), what="reload line")
        gw.reload("{not json")
        wait_until(lambda: any("rejected" in l.get("msg", "") for l in gw.log_lines()), what="rejection line")
        self.assertEqual(gw.stop(), 0)
        lines = [l for l in gw.stdout().split("\n")]
        self.assertEqual(lines[-1], "", "the log ends with a newline")
        n_access = 0
        for i, line in enumerate(lines[:-1]):
            try:
                obj = json.loads(line)
            except ValueError as e:
                self.fail(f"stdout line {i + 1} is not JSON ({e}): {line!r}")
            self.assertIsInstance(obj, dict, line)
            self.assertRegex(obj.get("time", ""), RFC3339, line)
            if obj.get("type") == "access":
                n_access += 1
                self.assertIn("request_id", obj, line)
                continue
            self.assertIn(obj.get("level"), ("debug", "info", "warn", "error"), line)
            self.assertIsInstance(obj.get("msg"), str, line)
            self.assertTrue(obj["msg"], line)
        self.assertEqual(n_access, 5)
        self.assertEqual(gw.stderr().strip(), "")


if __name__ == "__main__":
    unittest.main()
