"""Issue 9: soak — mixed valid and hostile traffic from several threads against the real binary for
a bounded time, on 127.0.0.1 only, while the gateway's memory is sampled every second.

    AG_SOAK_SECONDS=60   (default; CI)          traffic time, after a 5 s warm-up
    AG_SOAK_SECONDS=1800 python3 -m unittest -v test_soak    a long run (docs/security.md)

What it asserts:
  * memory is flat after warm-up: with the samples split in thirds, the largest RSS of the last
    third is at most the largest of the first third x 1.1 + 2 MiB. A leak is proportional to the
    requests served, which are spread evenly over the run, so it shows as growth from the first
    third to the last; steady-state memory (allocator arenas, connection pools, libevent and
    OpenSSL caches, the ASan quarantine capped at 8 MiB below) reaches its plateau during the
    warm-up and the first third. The 10 % + 2 MiB absorbs allocator slack and sampling noise (a
    sample can land on a 3 MiB request body in flight); over 60 s at the rates below (~100+
    requests/s) it still catches a leak of a few hundred bytes per request;
  * every answer is the one its request deserves (200 for valid traffic, the exact 4xx for each
    kind of hostile request) and no client thread saw an unexpected error;
  * once the clients are gone, the gateway's open descriptors return to the baseline measured
    before the traffic (pooled upstream connections expire after pool_idle_timeout_ms = 1 s);
  * the gateway exits cleanly on SIGTERM with no sanitizer report (tearDown)."""
import json
import os
import random
import socket
import threading
import time
import unittest

from harness import (CHAT, GatewayTestCase, base_config, chat_body, fd_count, request, rss_kib, upstream,
                     wait_until)

SOAK_SECONDS = float(os.environ.get("AG_SOAK_SECONDS", "60"))
WARMUP_SECONDS = 5.0
THREADS = 6


def post(body, extra=b"", framing=None):
    if framing is None:
        framing = b"Content-Length: %d\r\n" % len(body)
    return (b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            + extra + framing + b"\r\n" + body)


def exchange(port, raw, timeout=10.0):
    """Sends raw bytes, reads until the gateway closes; returns the first status (0 if none)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(raw)
        data = b""
        while True:
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            data += b
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
    finally:
        s.close()


class Soak(GatewayTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.fake(extra=("--no-record",))
        cfg = base_config([upstream(self.up, pool_idle_timeout_ms=1000)], workers=2, limits={
            "max_header_bytes": 8192, "max_headers": 50, "max_body_bytes": 1048576,
            "header_timeout_ms": 2000, "body_timeout_ms": 2000, "idle_timeout_ms": 2000},
            log={"level": "warn", "access_log": True})  # read back on failure: the slowest requests
        env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"}
        self.gw = self.gateway(cfg, env=env)

    # Each action returns None when the answer was right, else a description of what went wrong.
    def act_chat(self, rnd):
        st, _, b = request(self.gw.port, "POST", CHAT, chat_body("soak " * rnd.randint(1, 50)))
        return None if st == 200 and json.loads(b)["choices"] else f"chat {st}"

    def act_stream(self, rnd):
        st, h, b = request(self.gw.port, "POST", CHAT, chat_body("a b c d e f", stream=True,
                                                                 stream_options={"include_usage": True}))
        return None if st == 200 and b.rstrip().endswith(b"data: [DONE]") else f"stream {st}"

    def act_embeddings(self, rnd):
        st, _, _ = request(self.gw.port, "POST",
                           "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
                           {"input": ["x" * rnd.randint(1, 200) for _ in range(rnd.randint(1, 8))]})
        return None if st == 200 else f"embeddings {st}"

    def act_big_body(self, rnd):
        st, _, _ = request(self.gw.port, "POST", CHAT, chat_body("z" * rnd.randint(100000, 900000)))
        return None if st == 200 else f"big body {st}"

    def act_pipelined(self, rnd):
        n = rnd.randint(2, 6)
        raw = b"".join(post(json.dumps(chat_body(f"p{i}")).encode()) for i in range(n - 1))
        raw += post(json.dumps(chat_body("last")).encode(), extra=b"Connection: close\r\n")
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
        try:
            s.sendall(raw)
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        return None if data.count(b"HTTP/1.1 200 OK\r\n") == n else f"pipelined {data.count(b'HTTP/1.1 200')}/{n}"

    HOSTILE = [
        (post(b"0\r\n\r\n", framing=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400),
        (post(b"{}", framing=b"Content-Length: 2\r\nContent-Length: 3\r\n"), 400),
        (post(b"{}", framing=b"Content-Length: +2\r\n"), 400),
        (post(b"0x2\r\n{}\r\n0\r\n\r\n", framing=b"Transfer-Encoding: chunked\r\n"), 400),
        (post(b"{}", extra=b"X-Folded: a\r\n b\r\n"), 400),
        (b"GET /openai/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(60)) + b"\r\n", 431),
        (post(b"", framing=b"Content-Length: 2000000\r\n"), 413),
        (post(b'{"messages":[],"messages":[]}', extra=b"Connection: close\r\n"), 400),
        (post(b"[" * 5000 + b"]" * 5000, extra=b"Connection: close\r\n"), 400),
        (post(b'{"messages":[{"role":"user","content":"\xc3\x28"}]}', extra=b"Connection: close\r\n"), 400),
        (post(b"2;" + b"e" * 2000 + b"\r\n{}\r\n0\r\n\r\n", framing=b"Transfer-Encoding: chunked\r\n"), 400),
    ]

    def act_hostile(self, rnd):
        raw, want = rnd.choice(self.HOSTILE)
        st = exchange(self.gw.port, raw)
        return None if st == want else f"hostile {raw[:40]!r}: {st} != {want}"

    def act_abandon(self, rnd):
        """A client that goes away mid-head, mid-body or mid-stream."""
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
        try:
            kind = rnd.randint(0, 2)
            body = json.dumps(chat_body("bye " * 20, stream=kind == 2)).encode()
            if kind == 0:
                s.sendall(post(body)[:30])
            elif kind == 1:
                s.sendall(post(body)[:-10])
            else:
                s.sendall(post(body))
                s.recv(200)  # the stream has started
        finally:
            s.close()
        return None

    def test_soak(self):
        """Mixed traffic for AG_SOAK_SECONDS: flat RSS after warm-up, exact answers, descriptors
        back to the baseline afterwards."""
        pid = self.gw.p.pid
        fd_base = fd_count(pid)
        actions = ([self.act_chat] * 6 + [self.act_stream] * 3 + [self.act_embeddings] * 2 + [self.act_big_body]
                   + [self.act_pipelined] * 2 + [self.act_hostile] * 6 + [self.act_abandon] * 2)
        t_start = time.monotonic()
        t_end = t_start + WARMUP_SECONDS + SOAK_SECONDS
        errors, counts = [], [0] * THREADS
        lock = threading.Lock()

        def client(i):
            rnd = random.Random(i)
            while time.monotonic() < t_end:
                act = rnd.choice(actions)
                try:
                    err = act(rnd)
                except Exception as e:  # noqa: BLE001 - any failure counts
                    err = f"{act.__name__}: {e!r}"
                counts[i] += 1
                if err:
                    with lock:
                        errors.append(err)

        samples = []  # (seconds since start, RSS KiB)

        def sampler():
            while time.monotonic() < t_end:
                samples.append((time.monotonic() - t_start, rss_kib(pid)))
                time.sleep(1.0)  # the sampling period itself, not a wait for a condition

        threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        for t in threads:
            t.join(WARMUP_SECONDS + SOAK_SECONDS + 60)
        total = sum(counts)
        if errors:
            # Diagnostics for a failure that does not reproduce easily: the slowest requests the
            # gateway logged and its last warnings.
            lines = self.gw.log_lines()
            slow = sorted((l for l in lines if l.get("type") == "access"), key=lambda l: -l.get("latency_ms", 0))[:5]
            notes = [l for l in lines if l.get("type") != "access" and l.get("level") in ("warn", "error")][-10:]
            errors.append(f"slowest requests: {slow}")
            errors.append(f"last warnings: {notes}")
        self.assertEqual(errors[:20], [], f"{len(errors)} unexpected answers out of {total}")
        self.assertGreater(total, SOAK_SECONDS * 10, "too little traffic to say anything")

        steady = [kib for t, kib in samples if t >= WARMUP_SECONDS]
        self.assertGreaterEqual(len(steady), 6, samples)
        third = len(steady) // 3
        first, last = max(steady[:third]), max(steady[-third:])
        report = (f"{total} exchanges in {WARMUP_SECONDS + SOAK_SECONDS:.0f} s; RSS KiB first third max {first}, "
                  f"last third max {last}; samples {steady}")
        print(report)
        self.assertLessEqual(last, first * 1.1 + 2048, report)

        # Clients gone: descriptors back to the pre-traffic baseline (pooled upstream connections
        # expire after 1 s; connections the gateway closes are freed at once).
        wait_until(lambda: fd_count(pid) <= fd_base, timeout=15, what=f"gateway fds back to {fd_base}")
        st, _, _ = request(self.gw.port, "POST", CHAT, chat_body("after the soak"))
        self.assertEqual(st, 200)


if __name__ == "__main__":
    unittest.main()
