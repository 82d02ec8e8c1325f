"""Issue 6: the audit trail through the real binary: file/stdout sinks, Azure Monitor delivery to
tests/fakes/fake_monitor (token from the proxy's own client-secret credential at fake_identity),
outages, a crash, dead-letter, on_full=reject, hashed capture, gateway events."""
import glob
import hashlib
import http.client
import json
import math
import os
import re
import signal
import struct
import sys
import threading
import time
import unittest
import uuid
import zlib

from harness import (CHAT, GatewayTestCase, Proc, base_config, chat_body, raw_exchange, request,
                     upstream, wait_until)

FAKE_MONITOR = os.environ.get("AG_FAKE_MONITOR", "build/tests/fakes/fake_monitor")
FAKE_IDENTITY = os.environ.get("AG_FAKE_IDENTITY", "build/tests/fakes/fake_identity")

DCR = "dcr-00112233445566778899aabbccddeeff"
STREAM = "Custom-AoaiGuardAudit"
TENANT = "11111111-2222-4333-8444-555555555555"
CLIENT_ID = "66666666-7777-4888-9999-aaaaaaaaaaaa"
CLIENT_SECRET = "not-a-real-secret-for-tests"
MONITOR_SCOPE = "https://monitor.azure.com//.default"
EMB = "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def report(msg):
    """A measurement worth seeing in the CTest output (-V / --output-on-failure)."""
    sys.stderr.write(f"\n[audit measurement] {msg}\n")
    sys.stderr.flush()


def prompt_tokens(*texts):
    """fake_aoai's usage: ceil(bytes of all message texts / 4), at least 1."""
    return max(1, math.ceil(sum(len(t.encode()) for t in texts) / 4))


def completion_tokens(reply):
    return math.ceil(len(reply.encode()) / 4)


class FakeMonitor(Proc):
    """tests/fakes/fake_monitor: the Logs Ingestion API with a control API under /_fake/."""

    def __init__(self, workdir, token, name="monitor"):
        argv = [FAKE_MONITOR, "--port", "0", "--port-file", "{port_file}", "--token", token,
                "--dcr", DCR, "--stream", STREAM]
        super().__init__(f"fake-{name}", argv, workdir)
        self.port = int(self.wait_ports().split()[-1])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        payload = r.read()
        c.close()
        if r.status >= 300:
            raise AssertionError(f"fake_monitor control {method} {path}: {r.status} {payload!r}")
        return json.loads(payload) if payload else None

    def records(self):
        """The stored records; [] while an outage makes the fake refuse connections."""
        try:
            return self._call("GET", "/_fake/records")
        except ConnectionRefusedError:
            return []

    def reachable(self):
        try:
            self._call("GET", "/_fake/stats")
            return True
        except ConnectionRefusedError:
            return False

    def stats(self):
        return self._call("GET", "/_fake/stats")

    def faults(self, **kw):
        self._call("POST", "/_fake/faults", kw)

    def clear_faults(self):
        self._call("POST", "/_fake/faults", {"clear": True})

    def outage(self, ms):
        self._call("POST", "/_fake/outage", {"ms": ms})

    def set_token(self, token):
        self._call("POST", "/_fake/token", {"token": token})


class FakeIdentity(Proc):
    """tests/fakes/fake_identity: the Entra token endpoint for the proxy's client-secret credential."""

    def __init__(self, workdir):
        argv = [FAKE_IDENTITY, "--port", "0", "--port-file", "{port_file}", "--client-id", CLIENT_ID,
                "--client-secret", CLIENT_SECRET, "--tenant", TENANT]
        super().__init__("fake-identity", argv, workdir)
        self.port = int(self.wait_ports().split()[-1])

    def stats(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/_fake/stats")
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return body

    def next_token(self, scope=MONITOR_SCOPE):
        """The token the next fetch will get ("fake-token-<n>-<scope>", n counting all issues)."""
        return f"fake-token-{self.stats()['issued'] + 1}-{scope}"


def read_jsonl(path):
    """The complete rows of a JSON-lines file; a last row without its newline is still being written
    (the file is read while the gateway runs) and is left for the next read."""
    rows = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return rows
    for line in data[:data.rfind(b"\n") + 1].split(b"\n"):
        if line.strip():
            rows.append(json.loads(line))
    return rows


def read_spool(sink_dir, pending_only=False):
    """Every intact record of every segment in a spool directory (spool.h: "AGS1" | u32 len LE |
    u32 crc32(len bytes + payload) LE | payload), decoded as JSON rows; torn records are skipped.
    pending_only: only the records at or after the checkpoint ("AGCKPT1 <segment> <offset> <crc>"),
    i.e. the ones not acknowledged yet."""
    ck = (0, 0)
    if pending_only:
        try:
            with open(os.path.join(sink_dir, "checkpoint")) as f:
                parts = f.read().split()
            if parts and parts[0] == "AGCKPT1":
                ck = (int(parts[1]), int(parts[2]))
        except FileNotFoundError:
            pass
    rows = []
    for seg in sorted(glob.glob(os.path.join(sink_dir, "*.seg"))):
        seg_id = int(os.path.basename(seg).split(".")[0])
        with open(seg, "rb") as f:
            data = f.read()
        i = 0
        while True:
            j = data.find(b"AGS1", i)
            if j < 0 or j + 12 > len(data):
                break
            (n,) = struct.unpack_from("<I", data, j + 4)
            (crc,) = struct.unpack_from("<I", data, j + 8)
            payload = data[j + 12:j + 12 + n]
            if len(payload) == n and zlib.crc32(data[j + 4:j + 8] + payload) & 0xffffffff == crc:
                if (seg_id, j) >= ck:
                    rows.append(json.loads(payload))
                i = j + 12 + n
            else:
                i = j + 1
    return rows


def request_rows(rows):
    return [r for r in rows if r.get("RecordType") == "request"]


def by_request_id(rows):
    """{RequestId: [part-1 request rows]}."""
    out = {}
    for r in request_rows(rows):
        if r.get("Part", 1) == 1:
            out.setdefault(r["RequestId"], []).append(r)
    return out


def event_rows(rows, kind=None):
    return [r for r in rows if r.get("RecordType") == "gateway_event" and (kind is None or r.get("EventType") == kind)]


class AuditTestCase(GatewayTestCase):
    def setUp(self):
        super().setUp()
        self.spool_dir = os.path.join(self.tmp, "spool")
        self.audit_file = os.path.join(self.tmp, "audit.jsonl")

    def file_sink(self, **kw):
        s = {"type": "file", "path": self.audit_file}
        s.update(kw)
        return s

    def monitor_sink(self, mon, **kw):
        s = {"type": "azure_monitor", "endpoint": mon.url, "dcr_immutable_id": DCR, "stream": STREAM,
             "retry_initial_ms": 50, "retry_max_ms": 400, "timeout_ms": 3000}
        s.update(kw)
        return s

    def start_monitor(self):
        """fake_identity + fake_monitor expecting the first token the gateway will fetch."""
        self.idp = self.track(FakeIdentity(self.tmp))
        self.mon = self.track(FakeMonitor(self.tmp, self.idp.next_token()))
        return self.mon

    def config(self, up, sinks, workers=1, **audit_kw):
        audit = {"sinks": sinks, "spool_dir": self.spool_dir, "capture": "full"}
        audit.update(audit_kw)
        cfg = base_config([upstream(up)], workers=workers, audit=audit,
                          shutdown={"drain_timeout_ms": 5000})
        if any(s["type"] == "azure_monitor" for s in sinks):
            cfg["credential"] = {"type": "client_secret", "tenant_id": TENANT, "client_id": CLIENT_ID,
                                 "client_secret": CLIENT_SECRET,
                                 "authority_host": f"http://127.0.0.1:{self.idp.port}"}
        return cfg

    def chat(self, gw, text, rid=None, stream=False, **kw):
        h = {"x-request-id": rid} if rid else {}
        body = chat_body(text, stream=stream, **kw)
        st, hdrs, b = request(gw.port, "POST", CHAT, body, h)
        return st, hdrs, b

    def wait_rows(self, source, ids, what, timeout=20.0):
        """Waits until source() holds a part-1 request row for every id; returns {id: [rows]}."""
        ids = set(ids)

        def ready():
            got = by_request_id(source())
            return got if ids <= set(got) else None
        try:
            return wait_until(ready, timeout, interval=0.05, what=what)
        except AssertionError:
            got = set(by_request_id(source()))
            raise AssertionError(f"{what}: missing {sorted(ids - got)[:20]} of {len(ids)}")

    def check_chat_row(self, row, rid, text, status=200, upstream_name="aoai", stream=False, reply=None):
        reply = "Echo: " + text if reply is None else reply
        self.assertEqual(row["RecordType"], "request")
        self.assertEqual(row["RequestId"], rid)
        self.assertRegex(row["RecordId"], GUID)
        self.assertRegex(row["TimeGenerated"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(row.get("Part"), 1)
        self.assertEqual(row.get("PartCount"), 1)
        self.assertEqual(row["CallerKind"], "anonymous")
        self.assertEqual(row["ClientAddress"], "127.0.0.1")
        self.assertEqual(row["Deployment"], "gpt-4o-mini")
        self.assertEqual(row["Operation"], "chat/completions")
        self.assertEqual(row["ApiVersion"], "2024-10-21")
        self.assertIs(row["Stream"], stream)
        self.assertEqual(row["Status"], status)
        self.assertEqual(row["Upstream"], upstream_name)
        self.assertIsInstance(row["LatencyMs"], int)
        self.assertGreaterEqual(row["LatencyMs"], 0)
        self.assertIsInstance(row["TimeToFirstByteMs"], int)
        self.assertGreaterEqual(row["TimeToFirstByteMs"], 0)
        self.assertLessEqual(row["TimeToFirstByteMs"], row["LatencyMs"])
        self.assertEqual(row["PromptTokens"], prompt_tokens(text))
        self.assertEqual(row["CompletionTokens"], completion_tokens(reply))
        self.assertEqual(row["TotalTokens"], prompt_tokens(text) + completion_tokens(reply))
        self.assertEqual(row["CompletionReason"], "complete")
        self.assertEqual(row["CaptureMode"], "full")
        self.assertIn(text, row["PromptText"])
        self.assertEqual(row["PromptSha256"], hashlib.sha256(row["PromptText"].encode()).hexdigest())
        self.assertEqual(row["PromptBytes"], len(row["PromptText"].encode()))
        self.assertIn(reply, row["ResponseText"])
        if stream:
            self.assertEqual(row["ResponseText"], reply)
        self.assertEqual(row["ResponseSha256"], hashlib.sha256(row["ResponseText"].encode()).hexdigest())
        self.assertIs(row.get("TextTruncated", False), False)


class FileSink(AuditTestCase):
    def test_every_request_has_one_record_with_its_fields(self):
        up = self.fake()
        gw = self.gateway(self.config(up, [self.file_sink()]))
        sent = {}
        st, h, _ = self.chat(gw, "What is the capital of France?")
        self.assertEqual(st, 200)
        sent[h["x-request-id"]] = ("chat", "What is the capital of France?")
        st, h, _ = self.chat(gw, "second question, with a client id", rid="client-rid-0001")
        self.assertEqual((st, h["x-request-id"]), (200, "client-rid-0001"))
        sent["client-rid-0001"] = ("chat", "second question, with a client id")
        st, h, b = request(gw.port, "POST", EMB, {"input": ["alpha", "beta"]})
        self.assertEqual(st, 200, b)
        sent[h["x-request-id"]] = ("emb", None)
        st, h, _ = request(gw.port, "GET", "/openai/deployments")
        self.assertEqual(st, 404)
        sent[h["x-request-id"]] = ("404", None)
        st, h, _ = request(gw.port, "POST", CHAT, b'{"messages": [}')
        self.assertEqual(st, 400)
        sent[h["x-request-id"]] = ("400", None)
        up.configure(faults=[{"status": 429, "retry_after": "1", "count": 1}])
        st, h, _ = self.chat(gw, "this one is throttled upstream")
        self.assertEqual(st, 429)
        sent[h["x-request-id"]] = ("429", None)
        self.assertEqual(len(sent), 6)

        rows = self.wait_rows(lambda: read_jsonl(self.audit_file), sent, "file sink rows")
        # Exactly one record per request, and none for requests that were not made.
        self.assertEqual({k: len(v) for k, v in rows.items()}, {k: 1 for k in sent})
        self.assertEqual(len(request_rows(read_jsonl(self.audit_file))), 6)
        for rid, (kind, text) in sent.items():
            row = rows[rid][0]
            if kind == "chat":
                self.check_chat_row(row, rid, text)
            elif kind == "emb":
                self.assertEqual((row["Status"], row["Operation"], row["Deployment"], row["Upstream"]),
                                 (200, "embeddings", "text-embedding-3-small", "aoai"))
                self.assertEqual(row["PromptTokens"], prompt_tokens("alpha", "beta"))
                self.assertEqual(row["CompletionReason"], "complete")
                self.assertIn("alpha", row["PromptText"])
            elif kind == "404":
                self.assertEqual(row["Status"], 404)
                self.assertEqual(row["CompletionReason"], "rejected")
                self.assertNotIn("Upstream", row)
                self.assertNotIn("TimeToFirstByteMs", row)
                self.assertNotIn("PromptTokens", row)
            elif kind == "400":
                self.assertEqual((row["Status"], row["Deployment"]), (400, "gpt-4o-mini"))
                self.assertEqual(row["CompletionReason"], "rejected")
                self.assertNotIn("Upstream", row)
            elif kind == "429":
                self.assertEqual((row["Status"], row["Upstream"]), (429, "aoai"))
                self.assertIn("this one is throttled upstream", row["PromptText"])
            self.assertEqual(row["ClientAddress"], "127.0.0.1")
            self.assertIn("LatencyMs", row)
        # Record ids are unique.
        ids = [r["RecordId"] for r in read_jsonl(self.audit_file)]
        self.assertEqual(len(ids), len(set(ids)))

    def test_identity_of_api_key_callers_and_refused_callers(self):
        up = self.fake()
        cfg = self.config(up, [self.file_sink()])
        cfg["auth"] = {"mode": "api_key", "api_keys": [
            {"name": "team-alpha", "key": "alpha-key-0123456789abcdef", "deployments": ["gpt-4o-mini"]}]}
        gw = self.gateway(cfg)
        st, h, _ = request(gw.port, "POST", CHAT, chat_body("who am i"), {"api-key": "alpha-key-0123456789abcdef"})
        self.assertEqual(st, 200)
        ok = h["x-request-id"]
        st, h, _ = request(gw.port, "POST", CHAT, chat_body("wrong key"), {"api-key": "wrong-key-0123456789abcdef"})
        self.assertEqual(st, 401)
        bad = h["x-request-id"]
        st, h, _ = request(gw.port, "POST", "/openai/deployments/other/chat/completions?api-version=2024-10-21",
                           chat_body("not granted"), {"api-key": "alpha-key-0123456789abcdef"})
        self.assertEqual(st, 403)
        denied = h["x-request-id"]
        rows = self.wait_rows(lambda: read_jsonl(self.audit_file), [ok, bad, denied], "auth rows")
        r = rows[ok][0]
        self.assertEqual((r["CallerKind"], r["CallerName"], r["Status"]), ("api_key", "team-alpha", 200))
        self.assertNotIn("alpha-key-0123456789abcdef", json.dumps(read_jsonl(self.audit_file)))
        r = rows[bad][0]
        self.assertEqual((r["Status"], r["CompletionReason"]), (401, "rejected"))
        self.assertNotIn("CallerName", r)
        self.assertNotIn("Upstream", r)
        r = rows[denied][0]
        self.assertEqual((r["Status"], r["CompletionReason"], r["CallerName"], r["Deployment"]),
                         (403, "rejected", "team-alpha", "other"))
        self.assertEqual(up.stats()["requests"], 1)

    def test_stream_text_is_assembled_from_the_deltas(self):
        up = self.fake()
        gw = self.gateway(self.config(up, [self.file_sink()]))
        reply = "Grüße aus Köln: 世界 \U0001F600 naïve café, done."
        up.configure(reply_text=reply)
        text = "please stream"
        st, h, body = self.chat(gw, text, stream=True, stream_options={"include_usage": True})
        self.assertEqual(st, 200)
        self.assertIn(b"[DONE]", body)
        rid = h["x-request-id"]
        # The bytes the caller got, assembled: the audit row must say the same.
        got = ""
        for line in body.decode().split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                ev = json.loads(line[6:])
                for c in ev.get("choices", []):
                    got += c.get("delta", {}).get("content") or ""
        self.assertEqual(got, reply)
        row = self.wait_rows(lambda: read_jsonl(self.audit_file), [rid], "stream row")[rid][0]
        self.check_chat_row(row, rid, text, stream=True, reply=reply)
        self.assertEqual(row["ResponseBytes"], len(reply.encode()))

        # A stream cut by the upstream: the row has what was delivered and says why it ended.
        up.reset()
        up.configure(faults=[{"reset_after_chunks": 2, "count": 1}])
        p = json.dumps(chat_body("a b c d e f g h", stream=True)).encode()
        data = raw_exchange(gw.port, b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/json\r\nx-request-id: cut-stream-1\r\n"
                            b"Content-Length: " + str(len(p)).encode() + b"\r\n\r\n" + p, timeout=8)
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertFalse(data.endswith(b"0\r\n\r\n"))
        rid2 = "cut-stream-1"
        row = self.wait_rows(lambda: read_jsonl(self.audit_file), [rid2], "reset row")[rid2][0]
        self.assertEqual(row["Status"], 200)
        self.assertEqual(row["CompletionReason"], "upstream_reset")
        self.assertTrue(row.get("ResponseText"), row)
        full = "Echo: a b c d e f g h"
        self.assertTrue(full.startswith(row["ResponseText"]) and row["ResponseText"] != full, row["ResponseText"])

    def test_gateway_events_start_reload_stop(self):
        up = self.fake()
        cfg = self.config(up, [self.file_sink()])
        gw = self.gateway(cfg)
        start = wait_until(lambda: event_rows(read_jsonl(self.audit_file), "start"), what="start event")
        self.assertEqual(len(start), 1)
        self.assertEqual(start[0]["EventDetails"].get("version"),
                         gw_version())
        # A reload changing the limits section is recorded with the changed section named.
        cfg2 = json.loads(json.dumps(cfg))
        cfg2["limits"] = {"max_body_bytes": 100000}
        gw.reload(cfg2)
        ev = wait_until(lambda: event_rows(read_jsonl(self.audit_file), "config_reload"), what="reload event")
        self.assertEqual(len(ev), 1)
        d = ev[0]["EventDetails"]
        self.assertIn("limits", d["changed"].split(","))
        self.assertNotIn("upstreams", d["changed"].split(","))
        self.assertNotEqual(d["old_hash"], d["new_hash"])
        # A rejected reload (broken file) is not a configuration change.
        gw.reload('{"workers": 1, "upstreamz": []}')
        wait_until(lambda: any("reload rejected" in l.get("msg", "") for l in gw.log_lines()), what="rejection")
        # The audit section itself changes only with a restart: such a reload is refused, not recorded.
        cfg3 = json.loads(json.dumps(cfg2))
        cfg3["audit"]["capture"] = "hashed"
        gw.reload(cfg3)
        wait_until(lambda: any("reload rejected" in l.get("msg", "") and "audit" in l.get("msg", "")
                               for l in gw.log_lines()), what="audit change refused")
        st, h, _ = self.chat(gw, "after reloads")
        self.assertEqual(st, 200)
        self.assertEqual(gw.stop(), 0)
        rows = read_jsonl(self.audit_file)
        self.assertEqual(len(event_rows(rows, "config_reload")), 1)
        self.assertEqual(rows[-2]["CaptureMode"], "full")  # the running capture mode stayed
        stop = event_rows(rows, "stop")
        self.assertEqual(len(stop), 1)
        # In order: start, reload, the request, stop.
        order = [r.get("EventType") or r["RequestId"] for r in rows]
        self.assertEqual(order, ["start", "config_reload", h["x-request-id"], "stop"])
        for r in event_rows(rows):
            self.assertRegex(r["RecordId"], GUID)
            self.assertIn("GatewayVersion", r)


class SecurityEvents(AuditTestCase):
    """Gateway events for the security team: sustained authentication failures from one client
    address (20 within 60 s, reported once per window) and JWKS rotations."""

    def test_auth_failure_burst_is_recorded_once(self):
        up = self.fake()
        cfg = self.config(up, [self.file_sink()])
        cfg["auth"] = {"mode": "api_key", "api_keys": [{"name": "app", "key": "right-key-0123456789", "deployments": ["*"]}]}
        gw = self.gateway(cfg)
        for i in range(25):
            st, _, _ = request(gw.port, "POST", CHAT, chat_body("x"), {"api-key": "wrong-key-0123456789"})
            self.assertEqual(st, 401)
        ev = wait_until(lambda: event_rows(read_jsonl(self.audit_file), "auth_failure_burst"), what="burst event")
        self.assertEqual(len(ev), 1)
        d = ev[0]["EventDetails"]
        self.assertEqual(d["client_address"], "127.0.0.1")
        self.assertEqual(d["failures"], "20")
        self.assertEqual(d["window_s"], "60")
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(len(event_rows(read_jsonl(self.audit_file), "auth_failure_burst")), 1)


def gw_version():
    import subprocess
    from harness import BIN
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1]


class MonitorDelivery(AuditTestCase):
    def test_records_arrive_with_their_fields(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon), self.file_sink()]))
        sent = {}
        for i in range(5):
            text = f"monitor question {i}"
            st, h, _ = self.chat(gw, text, stream=(i == 4),
                                 **({"stream_options": {"include_usage": True}} if i == 4 else {}))
            self.assertEqual(st, 200)
            sent[h["x-request-id"]] = (text, i == 4)
        rows = self.wait_rows(mon.records, sent, "rows at fake_monitor")
        for rid, (text, stream) in sent.items():
            self.assertEqual(len(rows[rid]), 1)
            self.check_chat_row(rows[rid][0], rid, text, stream=stream)
        # The file sink and Azure Monitor got the same rows (same RecordIds).
        file_rows = self.wait_rows(lambda: read_jsonl(self.audit_file), sent, "file rows")
        for rid in sent:
            self.assertEqual(file_rows[rid][0], rows[rid][0])
        st = mon.stats()
        self.assertEqual(st["auth_failures"], 0, st)
        self.assertEqual(st["oversize_fields"], 0, st)
        self.assertEqual(st["gzip_calls"], st["calls"], st)
        self.assertEqual(set(st["status"]), {"204"}, st)
        self.assertEqual(len(event_rows(mon.records(), "start")), 1)
        idp = self.idp.stats()
        self.assertEqual(idp["last_scope"], MONITOR_SCOPE)
        self.assertEqual(idp["requests"]["client_secret"], 1)
        self.assertEqual(gw.stop(), 0)
        # SIGTERM flushed the stop event.
        self.assertEqual(len(event_rows(mon.records(), "stop")), 1)
        # Nothing is left pending in the spool after a clean stop.
        self.assertEqual(read_spool(os.path.join(self.spool_dir, "azure_monitor"), pending_only=True), [])

    def test_long_text_is_split_into_parts_under_the_field_limit(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon)]))
        text = 'long "quoted" text\twith escapes, ünïcödé and more; ' * 2500  # ~140 KB, more escaped
        body = json.dumps(chat_body(text), ensure_ascii=False).encode()
        st, h, _ = request(gw.port, "POST", CHAT, body)
        self.assertEqual(st, 200)
        rid = h["x-request-id"]

        def parts():
            ps = sorted((r for r in request_rows(mon.records()) if r["RequestId"] == rid), key=lambda r: r["Part"])
            return ps if ps and len(ps) == ps[0]["PartCount"] else None
        ps = wait_until(parts, what="every part of the long record")
        self.assertGreaterEqual(len(ps), 3)
        self.assertEqual([p["Part"] for p in ps], list(range(1, len(ps) + 1)))
        self.assertEqual(len({p["RecordId"] for p in ps}), len(ps))
        prompt = "".join(p.get("PromptText", "") for p in ps)
        response = "".join(p.get("ResponseText", "") for p in ps)
        self.assertEqual(prompt, body.decode())
        self.assertEqual(response, "Echo: " + text)
        self.assertEqual(ps[0]["PromptSha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(ps[0]["PromptBytes"], len(body))
        for p in ps:
            for k in ("PromptText", "ResponseText"):
                if k in p:
                    self.assertLessEqual(len(json.dumps(p[k], ensure_ascii=False).encode()) - 2, 64000)
            if p["Part"] > 1:
                self.assertNotIn("Status", p)
                self.assertEqual(p["CaptureMode"], "full")
        st = mon.stats()
        self.assertEqual(st["oversize_fields"], 0, st)
        self.assertLessEqual(st["max_uncompressed"], 1000000, st)

    def test_outage_then_recovery_loses_nothing(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon)], workers=2))
        done, errors = [], []
        lock = threading.Lock()

        def client(k, n):
            for i in range(n):
                try:
                    st, h, _ = self.chat(gw, f"outage load {k}-{i}", rid=f"outage-{k}-{i:03d}")
                    with lock:
                        (done if st == 200 else errors).append(h.get("x-request-id") or st)
                except Exception as e:  # noqa: BLE001 - any failure is reported
                    errors.append(repr(e))

        # Warm up, then the ingestion endpoint disappears for 3 s while traffic continues.
        client("warm", 5)
        self.wait_rows(mon.records, done, "warm-up rows")
        mon.outage(3000)
        threads = [threading.Thread(target=client, args=(k, 25)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(mon.reachable, what="fake_monitor back from its outage")
        # Then throttling and server errors, with and without Retry-After.
        mon.faults(status=429, count=3, retry_after="1")
        client("throttled", 5)
        wait_until(lambda: mon.stats()["status"].get("429", 0) >= 3, what="429s served")
        mon.faults(status=503, count=2)
        client("unavailable", 5)
        self.assertEqual(errors, [])
        self.assertEqual(len(done), 5 + 100 + 5 + 5)
        self.wait_rows(mon.records, done, "every request's row after recovery", timeout=60)
        recs = request_rows(mon.records())
        ids = [r["RecordId"] for r in recs]
        unique = set(ids)
        dup = len(ids) - len(unique)
        report(f"outage: {len(done)} requests, {len(unique)} unique request rows, {dup} duplicates, "
               f"monitor stats {mon.stats()}")
        self.assertEqual(len(unique), len(done))
        self.assertEqual({r["RequestId"] for r in recs}, set(done))
        # Duplicates (at-least-once) carry the same RecordId and content.
        first = {}
        for r in recs:
            self.assertEqual(first.setdefault(r["RecordId"], r), r)
        st = mon.stats()
        self.assertGreaterEqual(st["status"].get("503", 0), 2)
        self.assertEqual(gw.stop(), 0)

    def test_poisoned_record_goes_to_dead_letter_and_the_rest_arrive(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon)]))
        mon.faults(poison_field="RequestId", poison_value="poison-0001")
        # Hold deliveries for a moment so the poisoned row shares a batch with good ones.
        mon.outage(1000)
        sent = []
        for rid in ("good-0001", "good-0002", "poison-0001", "good-0003", "good-0004"):
            st, h, _ = self.chat(gw, f"text of {rid}", rid=rid)
            self.assertEqual(st, 200)
            sent.append(rid)
        good = [r for r in sent if r.startswith("good")]
        wait_until(mon.reachable, what="fake_monitor back from its outage")
        self.wait_rows(mon.records, good, "good rows", timeout=30)
        dl_path = os.path.join(self.spool_dir, "azure_monitor", "dead-letter.jsonl")
        dl = wait_until(lambda: read_jsonl(dl_path), what="dead-letter line")
        self.assertEqual(len(dl), 1, dl)
        self.assertEqual(dl[0]["Status"], 400)
        self.assertEqual(dl[0]["Record"]["RequestId"], "poison-0001")
        self.assertIn("poison", dl[0]["Reason"])
        self.assertEqual(dl[0]["Stream"], STREAM)
        self.assertIn("TimeDeadLettered", dl[0])
        self.assertIn("text of poison-0001", dl[0]["Record"]["PromptText"])
        got = by_request_id(mon.records())
        self.assertNotIn("poison-0001", got)
        for rid in good:
            self.assertEqual(len({r["RecordId"] for r in got[rid]}), 1)
        # Later records still flow.
        st, h, _ = self.chat(gw, "after the poison", rid="good-0005")
        self.wait_rows(mon.records, ["good-0005"], "row after the poison")
        self.assertEqual(len(read_jsonl(dl_path)), 1)
        self.assertEqual(gw.stop(), 0)

    def test_on_full_reject_returns_503_until_the_spool_drains(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon)], spool_max_bytes=65536,
                                      spool_segment_bytes=16384, on_full="reject"))
        wait_until(lambda: event_rows(mon.records(), "start"), what="start event delivered")
        mon.faults(status=503, count=-1)
        start_bytes = audit_gauges(gw)["aoai_guard_audit_spool_bytes"]
        big = "x" * 6000
        statuses, served, spool_after = [], [], []
        for i in range(40):
            st, h, b = self.chat(gw, f"{i} {big}", rid=f"full-{i:03d}")
            statuses.append(st)
            if st == 200:
                served.append(f"full-{i:03d}")
                # The trail notices a full spool when it has written the record: let it catch up
                # (it refuses admissions from then on, not retroactively).
                prev = spool_after[-1] if spool_after else start_bytes
                g = wait_until(lambda: (lambda g: g if g["aoai_guard_audit_spool_bytes"] > prev else None)(
                    audit_gauges(gw)), what="the row in the spool")
                spool_after.append(g["aoai_guard_audit_spool_bytes"])
            else:
                self.assertEqual(st, 503, b)
                err = json.loads(b)["error"]
                self.assertTrue(err["code"] and err["message"], err)
                self.assertIn("retry-after", h)
                self.assertGreater(int(h["retry-after"]), 0)
                break
        report(f"on_full=reject: statuses before refusal {statuses}")
        self.assertEqual(statuses[-1], 503, statuses)
        # Refused exactly from the moment the spool passed its cap, not before.
        report(f"on_full=reject: spool bytes after each served request {spool_after}")
        self.assertTrue(all(b < 65536 for b in spool_after[:-1]), spool_after)
        self.assertGreaterEqual(spool_after[-1], 65536)
        # Nothing that was refused reached Azure OpenAI; refusals continue while the spool is full.
        self.assertEqual(up.stats()["requests"], len(served))
        for _ in range(3):
            self.assertEqual(self.chat(gw, "still full")[0], 503)
        self.assertEqual(up.stats()["requests"], len(served))
        self.assertEqual(request(gw.admin_port, "GET", "/readyz")[0], 503)
        # The ingestion endpoint recovers: the spool drains and requests are served again.
        mon.clear_faults()
        wait_until(lambda: self.chat(gw, "served again", rid="after-full")[0] == 200, timeout=30,
                   interval=0.2, what="a 200 after the spool drained")
        self.wait_rows(mon.records, served + ["after-full"], "every served request's row", timeout=30)
        self.assertEqual(gw.stop(), 0)

    def test_sigterm_flushes_and_the_next_start_uploads_the_rest(self):
        mon = self.start_monitor()
        up = self.fake()
        cfg = self.config(up, [self.monitor_sink(mon)])
        gw = self.gateway(cfg)
        wait_until(lambda: event_rows(mon.records(), "start"), what="start event delivered")
        mon.faults(status=503, count=-1)
        sent = []
        for i in range(5):
            st, h, _ = self.chat(gw, f"before stop {i}", rid=f"term-{i}")
            self.assertEqual(st, 200)
            sent.append(f"term-{i}")
        self.assertEqual(gw.stop(), 0)
        # Nothing was delivered, everything is in the spool on disk.
        self.assertEqual(set(by_request_id(mon.records())) & set(sent), set())
        spooled = read_spool(os.path.join(self.spool_dir, "azure_monitor"))
        self.assertTrue(set(sent) <= set(by_request_id(spooled)), spooled)
        self.assertEqual(len(event_rows(spooled, "stop")), 1)
        mon.clear_faults()
        mon.set_token(self.idp.next_token())
        gw2 = self.gateway(cfg, name="gw2")
        self.wait_rows(mon.records, sent, "rows uploaded by the next start")
        wait_until(lambda: len(event_rows(mon.records(), "start")) == 2 and event_rows(mon.records(), "stop"),
                   what="second start and the first stop")
        self.assertEqual(gw2.stop(), 0)
        recs = mon.records()
        self.assertEqual(len(event_rows(recs, "stop")), 2)
        self.assertEqual(len({r["RecordId"] for r in request_rows(recs)}), len(sent))

    def test_kill9_under_load_loses_nothing_that_was_spooled(self):
        mon = self.start_monitor()
        up = self.fake()
        cfg = self.config(up, [self.monitor_sink(mon)], workers=2)
        gw = self.gateway(cfg)
        gw.expect_fail = True
        mon.faults(delay_ms=150)  # keeps a batch in flight most of the time
        stop = threading.Event()
        completed, lock = [], threading.Lock()

        def client(k):
            i = 0
            while not stop.is_set():
                rid = f"kill-{k}-{i:05d}"
                i += 1
                try:
                    st, _, _ = self.chat(gw, f"load {rid}", rid=rid)
                except Exception:  # noqa: BLE001 - the gateway dies under us
                    continue
                if st == 200:
                    with lock:
                        completed.append(rid)

        # Daemon threads, stopped in finally: a failed wait must fail the test, not leave the load
        # running and the test process alive.
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(completed) >= 200 and by_request_id(mon.records()), timeout=60,
                       what="load and some deliveries")
            kill_wall = time.time()
            gw.p.kill()
            gw.p.wait(10)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        completed_set = set(completed)
        delivered_before = set(by_request_id(mon.records()))
        sink_dir = os.path.join(self.spool_dir, "azure_monitor")
        spool_rows = read_spool(sink_dir)
        spooled = set(by_request_id(spool_rows))
        pending_ids = {r["RecordId"] for r in read_spool(sink_dir, pending_only=True)}
        acked_at_kill = {r["RecordId"] for r in spool_rows} - pending_ids
        durable = (delivered_before | spooled) & completed_set
        mon.faults(delay_ms=0)
        mon.set_token(self.idp.next_token())
        gw2 = self.gateway(cfg, name="gw2")
        self.wait_rows(mon.records, durable, "every spooled row after the restart", timeout=60)
        recs = request_rows(mon.records())
        received = {r["RequestId"] for r in recs}
        lost = completed_set - received
        dups = len(recs) - len({r["RecordId"] for r in recs})
        seen, dup_ids = set(), set()
        for r in recs:
            (dup_ids if r["RecordId"] in seen else seen).add(r["RecordId"])
        # Only rows after the checkpoint (the batch in flight) may be sent twice.
        self.assertEqual(dup_ids & acked_at_kill, set())
        report(f"kill -9: {len(completed_set)} requests answered, {len(delivered_before)} delivered before the "
               f"kill, {len(spooled)} rows in the spool at the kill, {len(lost)} answered requests never "
               f"recorded (in the in-memory queue at kill time), {dups} duplicate rows after the restart "
               f"({len(pending_ids)} rows were after the checkpoint at the kill)")
        self.assertTrue(durable <= received)
        # What was lost can only be the newest requests of each client (still in the in-memory queue
        # when the process died), never a request older than one that was recorded: per client the
        # records enter the queue, and leave it for the spool, in order.
        for k in range(4):
            mine = sorted(r for r in completed_set if r.startswith(f"kill-{k}-"))
            got_idx = [i for i, r in enumerate(mine) if r in received]
            lost_idx = [i for i, r in enumerate(mine) if r in lost]
            if got_idx and lost_idx:
                self.assertLess(max(got_idx), min(lost_idx), f"client {k}: an older record was lost")
        # How long a window that was, from the access log (written by the worker as it answers).
        times = {l["request_id"]: l["time"] for l in gw.access_lines()}
        if lost:
            import datetime
            first = min(datetime.datetime.fromisoformat(times[r].replace("Z", "+00:00")).timestamp()
                        for r in lost if r in times)
            report(f"kill -9: the lost records were answered in the last {1000 * (kill_wall - first):.0f} ms "
                   f"before the kill")
        self.assertEqual(gw2.stop(), 0)


def audit_gauges(gw):
    """The unlabelled aoai_guard_audit_* samples of /metrics."""
    import promparse
    st, _, body = request(gw.admin_port, "GET", "/metrics")
    if st != 200:
        raise AssertionError(f"/metrics: {st}")
    fams = promparse.parse(body)
    return {n: f.get() for n, f in fams.items() if n.startswith("aoai_guard_audit_")}


def read_spool_request_ids(spool_dir, pending_only=False):
    return set(by_request_id(read_spool(os.path.join(spool_dir, "azure_monitor"), pending_only)))


class StdoutSink(AuditTestCase):
    def test_stdout_lines_stay_whole_on_a_pipe(self):
        """In a container stdout is a pipe shared by the log and the stdout sink: a long audit row
        must not be cut by a log line written by another thread at the same time."""
        import subprocess
        from harness import BIN
        up = self.fake()
        cfg = self.config(up, [{"type": "stdout"}], workers=2)
        cfg_path = os.path.join(self.tmp, "pipe-gw.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        port_file = os.path.join(self.tmp, "pipe-gw.ports")
        p = subprocess.Popen([BIN, "--config", cfg_path, "--port-file", port_file], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(p.stdout))
        reader.start()
        try:
            text = wait_until(lambda: (lambda t: t if t.endswith("\n") else None)(
                open(port_file).read() if os.path.exists(port_file) else ""), what="gateway listening")
            port = int(text.split("\n")[0].split()[2])
            big = "y" * 100000
            sent, lock = [], threading.Lock()

            def client(k):
                for i in range(20):
                    st, h, _ = request(port, "POST", CHAT, chat_body(big if k % 2 == 0 else f"small {k} {i}"))
                    with lock:
                        sent.append((st, h["x-request-id"]))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(30), 0)
            reader.join(10)
        self.assertEqual({st for st, _ in sent}, {200})
        bad = []
        rows = []
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except ValueError:
                bad.append(i)
                continue
            if "RecordType" in obj:
                rows.append(obj)
        if bad:
            first = lines[bad[0]].decode("utf-8", "replace")
            cut = first.find('{"time"', 1)
            self.fail(f"{len(bad)} of {len(lines)} stdout lines are not JSON; the first one ({len(first)} bytes) "
                      f"has another line spliced in at byte {cut}: {first[max(0, cut - 20):cut + 60]!r}")
        self.assertEqual(set(by_request_id(rows)), {rid for _, rid in sent})


class HashedCapture(AuditTestCase):
    def test_hashed_never_writes_the_prompt_text(self):
        mon = self.start_monitor()
        up = self.fake()
        gw = self.gateway(self.config(up, [self.monitor_sink(mon), self.file_sink(), {"type": "stdout"}],
                                      capture="hashed"))
        wait_until(lambda: event_rows(mon.records(), "start"), what="start event delivered")
        mon.faults(status=503, count=-1)  # rows stay in the spool while we look at it
        secret = "TOPSECRET-" + uuid.uuid4().hex
        texts = [f"my password is {secret}", f"stream {secret} please", f"{secret}"]
        rids = []
        for i, t in enumerate(texts):
            st, h, _ = self.chat(gw, t, stream=(i == 1))
            self.assertEqual(st, 200)
            rids.append(h["x-request-id"])
        # The rows are in the spool (so the spool is really where we look) ...
        sink_dir = os.path.join(self.spool_dir, "azure_monitor")
        wait_until(lambda: set(rids) <= set(by_request_id(read_spool(sink_dir))), what="rows spooled")
        self.assert_secret_absent(secret)
        mon.clear_faults()
        rows = self.wait_rows(mon.records, rids, "hashed rows at the monitor")
        for rid, t in zip(rids, texts):
            row = rows[rid][0]
            self.assertEqual(row["CaptureMode"], "hashed")
            self.assertNotIn("PromptText", row)
            self.assertNotIn("ResponseText", row)
            self.assertRegex(row["PromptSha256"], r"^[0-9a-f]{64}$")
            self.assertRegex(row["ResponseSha256"], r"^[0-9a-f]{64}$")
            self.assertGreaterEqual(row["PromptBytes"], len(t.encode()))
            if t != texts[1]:  # the stream was sent without include_usage: no usage to record
                self.assertEqual(row["PromptTokens"], prompt_tokens(t))
        # The streamed response's hash is the hash of the assembled text.
        self.assertEqual(rows[rids[1]][0]["ResponseSha256"],
                         hashlib.sha256(("Echo: " + texts[1]).encode()).hexdigest())
        stdout_rows = [r for r in gw.log_lines() if "RecordType" in r]
        self.assertTrue(set(rids) <= set(by_request_id(stdout_rows)))
        self.assertEqual(gw.stop(), 0)
        self.assert_secret_absent(secret)
        self.assertNotIn(secret, json.dumps(mon.records()))

    def assert_secret_absent(self, secret):
        needle = secret.encode()
        checked = 0
        for root, _, files in os.walk(self.tmp):
            for name in files:
                if name.startswith("fake-aoai"):
                    continue  # the stand-in upstream's own output, not the gateway's
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    data = f.read()
                checked += 1
                self.assertNotIn(needle, data, f"the prompt text was written to {path}")
        self.assertGreater(checked, 3)


if __name__ == "__main__":
    unittest.main()
