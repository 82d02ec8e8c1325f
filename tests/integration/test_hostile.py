"""Issue 9: the bad-input suite against the real binary, row by row from HOSTILE-INPUT.md
(A1 framing and parsing, A2 resource exhaustion, A5 JSON attacks on the parse stage, A6 and the last
A1 row for upstream misbehaviour). Each test names its row in the docstring and asserts the exact
outcome: the status, whether the connection is closed or kept, that nothing reached the upstream
when the request was refused, and (tearDown) that the gateway still serves afterwards.

Where the data path does something other than the row asks, the test asserts the row's behaviour
and is marked @unittest.expectedFailure with "BUG:" in its docstring; each of those is reported with
its reproduction (docs/security.md lists them under "Known gaps")."""
import json
import os
import resource
import select
import socket
import sys
import tempfile
import threading
import time
import unittest

from harness import (CHAT, FakeAOAI, Gateway, SANITIZER_MARKERS, base_config, chat_body, fd_count, rss_kib,
                     parse_responses, request, upstream, wait_until)

CH = CHAT.encode()
BODY = json.dumps(chat_body("Hello")).encode()

# The gateway needs more than 1000 descriptors for the idle-connection test; children inherit this.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < 4096:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, _hard) if _hard != resource.RLIM_INFINITY else 4096, _hard))


def post(body=BODY, extra=b"", framing=None, version=b"HTTP/1.1", target=CH):
    if framing is None:
        framing = b"Content-Length: %d\r\n" % len(body)
    return (b"POST " + target + b" " + version + b"\r\nHost: gw.example\r\nContent-Type: application/json\r\n"
            + extra + framing + b"\r\n" + body)


TE = b"Transfer-Encoding: chunked\r\n"


def chunked(body):
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def is_asan(pid):
    """A gateway built with a sanitizer whose allocator and shadow memory keep freed memory resident
    (ASan's quarantine, TSan's shadow): RSS bounds then allow for them."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


class Conn:
    """A raw client connection that reads responses one at a time, with deadlines."""

    def __init__(self, port, timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        self.s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            b = self.s.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def read_response(self, timeout=5.0):
        """One response: (status, headers {lower name: value}, body). Raises on timeout/EOF."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError(f"no complete response head (eof={self.eof}): {self.buf[:300]!r}")
        end = self.buf.index(b"\r\n\r\n")
        head = self.buf[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        hdrs = {}
        for line in head[1:]:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        self.buf = self.buf[end + 4:]
        if status < 200:
            return status, hdrs, b""
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            while len(self.buf) < n:
                if not self._fill(deadline):
                    raise AssertionError(f"body cut at {len(self.buf)} of {n} bytes")
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, hdrs, body
        if hdrs.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill(deadline):
                        raise AssertionError("chunked body cut")
                le = self.buf.index(b"\r\n")
                size = int(self.buf[:le], 16)
                while len(self.buf) < le + 2 + size + 2:
                    if not self._fill(deadline):
                        raise AssertionError("chunked body cut")
                body += self.buf[le + 2:le + 2 + size]
                self.buf = self.buf[le + 2 + size + 2:]
                if size == 0:
                    return status, hdrs, body
        while self._fill(deadline):
            pass
        body, self.buf = self.buf, b""
        return status, hdrs, body

    def closed_within(self, timeout=3.0):
        """True when the peer closes (EOF or reset) before the deadline with no further bytes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._fill(deadline):
                return self.eof and self.buf == b""
        return False

    def close(self):
        self.s.close()


class SharedGateway(unittest.TestCase):
    """One fake and one gateway for the whole class, so the gateway's memory can be compared
    before and after every case of the class (tearDownClass)."""
    limits = None
    extra_config = {}
    # RSS growth allowed over the class. The gateway keeps no per-request state once a request
    # has ended; what may legitimately grow is allocator slack (glibc keeps freed chunks in its
    # arenas, and the largest body of the suite is ~3 MiB held transiently in a request buffer
    # and the JSON tree) plus libevent/OpenSSL caches. 8 MiB is ~2.5x the largest single request;
    # a per-request leak of even 1 KiB over the ~300 requests of the suite stays well inside it
    # only if it is small, so the per-test tearDown also checks the open connection count.
    # Under ASan the quarantine is capped at 8 MiB (ASAN_OPTIONS below) and its shadow memory
    # and allocator metadata add their own slack, hence 48 MiB there.
    rss_bound_kib = 8 * 1024
    rss_bound_asan_kib = 48 * 1024

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="aoai-guard-hostile-")
        cls.tmp = cls._tmp.name
        cls.up = FakeAOAI(cls.tmp)
        cfg = base_config([upstream(cls.up)], **cls.extra_config)
        cfg["log"] = {"level": "warn", "access_log": False}
        if cls.limits:
            cfg["limits"] = cls.limits
        env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"}
        cls.gw = Gateway(cls.tmp, cfg, env=env)
        cls.asan = is_asan(cls.gw.p.pid)
        cls._warm_up()
        cls.rss_start = rss_kib(cls.gw.p.pid)

    @classmethod
    def _warm_up(cls):
        for _ in range(30):
            st, _, _ = request(cls.gw.port, "POST", CHAT, chat_body("warm up"))
            assert st == 200, st

    @classmethod
    def tearDownClass(cls):
        problems = []
        try:
            cls._warm_up()
            grown = rss_kib(cls.gw.p.pid) - cls.rss_start
            bound = cls.rss_bound_asan_kib if cls.asan else cls.rss_bound_kib
            print(f"\n{cls.__name__}: gateway RSS {cls.rss_start} -> {cls.rss_start + grown} KiB "
                  f"(+{grown}, bound {bound})", file=sys.stderr)
            if grown > bound:
                problems.append(f"gateway RSS grew {grown} KiB over the class (bound {bound} KiB)")
        finally:
            for p in (cls.gw, cls.up):
                rc = p.stop()
                rep = p.sanitizer_report()
                if rep:
                    problems.append(f"{p.name}: sanitizer report:\n{rep[-4000:]}")
                if p is cls.gw and rc not in (0, None):
                    problems.append(f"gateway exit status {rc}\n{p.stderr()[-2000:]}")
            cls._tmp.cleanup()
        if problems:
            raise AssertionError("\n".join(problems))

    def setUp(self):
        self.n_up = self.up.stats()["requests"]

    def tearDown(self):
        # The process still serves after every case.
        st, _, body = request(self.gw.port, "POST", CHAT, chat_body("still serving"))
        self.assertEqual(st, 200, body)
        self.assertIsNone(self.gw.p.poll(), "the gateway exited")

    def upstream_requests(self):
        return self.up.stats()["requests"] - self.n_up

    def reject(self, raw, status=400, closed=True, reached=0):
        """Sends raw bytes and checks the one answer: status, Azure error shape, Connection: close
        and the close itself (or keep-alive), and that nothing reached the upstream."""
        c = Conn(self.gw.port)
        try:
            c.send(raw)
            st, h, body = c.read_response()
            self.assertEqual(st, status, body)
            err = json.loads(body)["error"]
            self.assertTrue(err["code"] and err["message"], err)
            if closed:
                self.assertEqual(h.get("connection"), "close")
                self.assertTrue(c.closed_within(3), "connection not closed after the error")
            else:
                self.assertNotEqual(h.get("connection"), "close")
            self.assertEqual(self.upstream_requests(), reached)
            return h, err
        finally:
            c.close()

    def last_upstream_headers(self):
        rec = self.up.requests()[-1]
        names = {}
        for h in rec["headers"]:
            names.setdefault(h["name"].lower(), []).append(h["value"])
        return rec, names


class A1Framing(SharedGateway):
    """HOSTILE-INPUT.md A1: HTTP/1.1 framing and parsing. Default limits."""

    def test_cl_and_te(self):
        """A1 "Both CL and TE": 400 and close."""
        self.reject(post(b"0\r\n\r\n", framing=b"Content-Length: 5\r\n" + TE))
        self.reject(post(b"0\r\n\r\n", framing=TE + b"Content-Length: 5\r\n"))

    def test_duplicate_or_list_cl(self):
        """A1 "Duplicate or list-valued CL with different values": 400 and close (any duplicate,
        as nginx)."""
        for framing in (b"Content-Length: 2\r\nContent-Length: 3\r\n", b"Content-Length: 2\r\nContent-Length: 2\r\n",
                        b"Content-Length: 2, 2\r\n", b"Content-Length: 2, 3\r\n"):
            with self.subTest(framing=framing):
                self.reject(post(b"{}", framing=framing))

    def test_cl_variants(self):
        """A1 "CL empty, +5, -1, 0x10, 1_0, or overflowing": 400 and close."""
        for v in (b"", b"+5", b"-1", b"0x10", b"1_0", b"184467440737095516160", b"99999999999999999999",
                  b"5 5", b"5\x0b"):
            with self.subTest(cl=v):
                self.reject(post(b"{}", framing=b"Content-Length: " + v + b"\r\n"))

    def test_te_variants_400(self):
        """A1 "TE chunked, chunked / empty": 400 and close."""
        for v in (b"chunked, chunked", b"chunked,", b"chunked , chunked"):
            with self.subTest(te=v):
                self.reject(post(chunked(b"{}"), framing=b"Transfer-Encoding: " + v + b"\r\n"))

    def test_te_empty_400(self):
        """A1 "TE ... empty: 400" (and close). BUG: an empty Transfer-Encoding is taken as "no
        body": the request is answered as bodiless (400 "must be a JSON object", connection kept)
        and the chunked body bytes are then parsed as the NEXT request on the connection, the
        request-smuggling shape (a valid request hidden in the body would be served)."""
        self.reject(post(chunked(b"{}"), framing=b"Transfer-Encoding: \r\n"))

    def test_te_case_insensitive(self):
        """A1 "Coding names are case-insensitive; trim OWS only": CHUNKED frames the body."""
        c = Conn(self.gw.port)
        c.send(post(chunked(BODY), framing=b"Transfer-Encoding:  CHUNKED \r\n"))
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 200, body)
        rec, names = self.last_upstream_headers()
        self.assertEqual(names["content-length"], [str(len(BODY))])  # our own framing upstream
        self.assertNotIn("transfer-encoding", names)

    def test_te_leading_comma_400(self):
        """A1 "TE ,chunked": 400 and close. BUG: the gateway treats ",chunked" as chunked and
        forwards the request (the upstream answers)."""
        self.reject(post(chunked(BODY), framing=b"Transfer-Encoding: ,chunked\r\n"))

    def test_te_malformed_400(self):
        """A1 "TE \\xa0chunked, chunked;x=1": 400 and close (malformed, not an unknown coding).
        BUG: the gateway answers 501 (rejected and closed, but with the status for an unknown
        coding)."""
        for v in (b"\xa0chunked", b"chunked;x=1"):
            with self.subTest(te=v):
                self.reject(post(chunked(b"{}"), framing=b"Transfer-Encoding: " + v + b"\r\n"))

    def test_te_unknown_coding_501(self):
        """A1 "An unknown coding gets 501": xchunked, gzip alone; closed."""
        for v in (b"xchunked", b"gzip", b"identity"):
            with self.subTest(te=v):
                self.reject(post(chunked(b"{}"), framing=b"Transfer-Encoding: " + v + b"\r\n"), 501)

    def test_te_chunked_not_final_and_http10(self):
        """A1 "chunked not the final coding: 400 and close. TE in HTTP/1.0 gets 400"."""
        self.reject(post(chunked(b"{}"), framing=b"Transfer-Encoding: chunked, gzip\r\n"))
        self.reject(post(chunked(b"{}"), framing=TE, version=b"HTTP/1.0"))
        self.reject(post(chunked(b"{}"), framing=TE + TE))

    def test_te_unknown_coding_before_chunked_501(self):
        """A1 "An unknown coding gets 501": "gzip, chunked" names a coding the gateway does not
        decode. BUG: the gateway de-chunks, ignores the gzip layer and forwards the still-coded
        bytes as the body (here they happen to be JSON, so the upstream gets the request)."""
        self.reject(post(chunked(BODY), framing=b"Transfer-Encoding: gzip, chunked\r\n"), 501)

    def test_bad_chunk_sizes(self):
        """A1 "Bad chunk size: 0x5, +5, 5_, empty, space after size, overflow": 400 and close."""
        for line in (b"0x2", b"+2", b"2_", b"", b"2 ", b" 2", b"-2", b"fffffffffffffffff", b"g"):
            with self.subTest(size=line):
                self.reject(post(line + b"\r\n{}\r\n0\r\n\r\n", framing=TE))

    def test_chunk_size_over_16_hex_digits(self):
        """A1 "Bad chunk size: >16 hex digits": 400 and close, for the first chunk, a later one and
        the last ("0" with leading zeros), whole or split across reads. llhttp alone accepted
        "00000000000000002" (17 digits, leading zeros)."""
        n = len(BODY)
        cases = {
            "first": b"%017x\r\n" % n + BODY + b"\r\n0\r\n\r\n",
            "second": b"1\r\n" + BODY[:1] + b"\r\n%017x\r\n" % (n - 1) + BODY[1:] + b"\r\n0\r\n\r\n",
            "last": b"%x\r\n" % n + BODY + b"\r\n" + b"0" * 17 + b"\r\n\r\n",
            "extension": b"%017x;name=value\r\n" % n + BODY + b"\r\n0\r\n\r\n",
        }
        for name, body in cases.items():
            with self.subTest(case=name):
                self.reject(post(body, framing=TE))
        # The digits arriving a few bytes at a time are counted across reads.
        raw = post(b"%017x\r\n" % n + BODY + b"\r\n0\r\n\r\n", framing=TE)
        head_end = raw.index(b"\r\n\r\n") + 4
        c = Conn(self.gw.port)
        try:
            c.send(raw[:head_end])
            for i in range(head_end, len(raw), 3):
                c.send(raw[i:i + 3])
                time.sleep(0.002)  # separate segments, so the gateway reads the size in pieces
            st, h, body = c.read_response()
            self.assertEqual(st, 400, body)
            self.assertEqual(json.loads(body)["error"]["code"], "InvalidChunk")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered and closed while the rest was still being sent
        finally:
            c.close()
        self.assertEqual(self.upstream_requests(), 0)

    def test_chunk_size_of_16_hex_digits_is_read(self):
        """The boundary: 16 hex digits (leading zeros included) are a valid chunk size, in every
        chunk, and the requests reach the upstream with their bodies."""
        n = len(BODY)
        body = b"%016x\r\n" % 1 + BODY[:1] + b"\r\n%016x\r\n" % (n - 1) + BODY[1:] + b"\r\n" + b"0" * 16 + b"\r\n\r\n"
        c = Conn(self.gw.port)
        try:
            # Twice, pipelined in one write: the scanner stops at the end of the first body.
            c.send(post(body, framing=TE) * 2)
            for _ in range(2):
                st, h, resp = c.read_response()
                self.assertEqual(st, 200, resp)
        finally:
            c.close()
        self.assertEqual(self.upstream_requests(), 2)

    def test_bare_cr_lf_in_chunk_lines(self):
        """A1 "Bare CR or LF in chunk lines; no CRLF after chunk data": 400 and close."""
        for body in (b"2\n{}\r\n0\r\n\r\n", b"2\r{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n",
                     b"2\r\n{}\n0\r\n\r\n", b"2\r\n{}\r\n0\n\r\n"):
            with self.subTest(body=body):
                self.reject(post(body, framing=TE))

    def test_huge_chunk_extensions_or_many_tiny_chunks(self):
        """A1 "Huge chunk extensions, or many tiny chunks": 400/413 and close (extension bytes and
        the chunk-overhead ratio are capped)."""
        self.reject(post(b"2;" + b"e" * 2000 + b"\r\n{}\r\n0\r\n\r\n", framing=TE))
        self.reject(post(b"".join(b"1;a=b\r\n \r\n" for _ in range(300)) + b"0\r\n\r\n", framing=TE))
        self.reject(post(b"1\r\n \r\n" * 2000 + chunked(BODY), framing=TE))

    def test_chunk_extensions_within_bounds(self):
        """A1 "Huge chunk extensions" (the other side): a short extension is allowed and the body
        reaches the upstream with our own Content-Length."""
        c = Conn(self.gw.port)
        c.send(post(b"%x;name=value\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n", framing=TE))
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 200, body)
        rec, names = self.last_upstream_headers()
        self.assertEqual(rec["body"], BODY.decode())
        self.assertEqual(names["content-length"], [str(len(BODY))])

    def test_trailers_never_merged(self):
        """A1 "Trailers naming CL, Host or Authorization": never merged into the headers. The
        request is refused (400, close) or forwarded without the trailer values."""
        c = Conn(self.gw.port)
        c.send(post(b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\nContent-Length: 5\r\nHost: evil.example\r\n"
                    b"Authorization: Bearer trailer-token\r\n\r\n", framing=TE))
        st, h, body = c.read_response()
        c.close()
        if st == 200:
            rec, names = self.last_upstream_headers()
            self.assertEqual(names["host"], [f"127.0.0.1:{self.up.port}"])
            self.assertNotIn("authorization", names)
            self.assertNotIn("trailer-token", json.dumps(rec))
            self.assertEqual(names["content-length"], [str(len(BODY))])
        else:
            self.assertEqual(st, 400, body)
            self.assertEqual(self.upstream_requests(), 0)

    def test_trailer_flood_bounded(self):
        """A1 "Trailers ... count them toward the header limit": 1000 trailer lines of 100 bytes
        (100 KB, more than max_header_bytes) are refused with the header-limit status, 431."""
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
        self.reject(post(b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n" + trailers + b"\r\n", framing=TE),
                    status=431)

    def test_obs_fold(self):
        """A1 "obs-fold: Request: 400"."""
        self.reject(post(extra=b"X-Folded: a\r\n b\r\n"))
        self.reject(post(extra=b"X-Folded: a\r\n\tb\r\n"))

    def test_header_line_syntax(self):
        """A1 "Name : v; whitespace before the first header; CR/LF/NUL in a value; non-token name;
        : x; no colon; bare LF": 400 and close."""
        cases = {
            "space before colon": b"GET /openai/models HTTP/1.1\r\nHost : x\r\n\r\n",
            "ws before first header": b"GET /openai/models HTTP/1.1\r\n Host: x\r\n\r\n",
            "tab before first header": b"GET /openai/models HTTP/1.1\r\n\tHost: x\r\n\r\n",
            "CR in value": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            "NUL in value": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            "DEL in value": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
            "non-token name": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX(A): v\r\n\r\n",
            "8-bit name": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-\xe9: v\r\n\r\n",
            "empty name": b"GET /openai/models HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
            "no colon": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
            "bare LF": b"GET /openai/models HTTP/1.1\nHost: x\n\n",
            "bare LF in header": b"GET /openai/models HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                self.reject(raw)

    def test_underscore_in_header_name(self):
        """A1 "_ in a header name: drop or reject": rejected (400, close), so an origin that maps
        _ to - never sees a second Content-Length or Authorization."""
        self.reject(post(extra=b"Content_Length: 5\r\n"))
        self.reject(post(extra=b"X_Api_Key: k\r\n"))

    def test_request_line_variants(self):
        """A1 "Request line: double SP/HTAB, HTTP/1.32, lowercase version, HTTP/0.9, non-token
        method, #, CTLs": 400 and close; never auto-corrected."""
        cases = {
            "double SP": b"GET  /openai/models HTTP/1.1\r\nHost: x\r\n\r\n",
            "double SP before version": b"GET /openai/models  HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTAB": b"GET\t/openai/models HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.32": b"GET /openai/models HTTP/1.32\r\nHost: x\r\n\r\n",
            "lowercase": b"GET /openai/models http/1.1\r\nHost: x\r\n\r\n",
            "HTTP/0.9": b"GET /openai/models\r\n\r\n",
            "non-token method": b"G(T /openai/models HTTP/1.1\r\nHost: x\r\n\r\n",
            "#": b"GET /openai/models#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "CTL in target": b"GET /openai/\x01models HTTP/1.1\r\nHost: x\r\n\r\n",
            "8-bit in target": b"GET /openai/\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
            "trailing SP": b"GET /openai/models HTTP/1.1 \r\nHost: x\r\n\r\n",
            "leading SP": b" GET /openai/models HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                self.reject(raw)

    def test_unsupported_version_505(self):
        """A1 "505 if well-formed but unsupported"."""
        for v in (b"HTTP/1.2", b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9"):
            with self.subTest(version=v):
                self.reject(b"GET /openai/models " + v + b"\r\nHost: x\r\n\r\n", 505)

    def test_absolute_authority_star_forms(self):
        """A1 "absolute-form whose authority differs from Host; authority-form; * outside OPTIONS":
        rejected (a reverse proxy takes origin-form only), 400 and close."""
        cases = {
            "absolute-form": b"POST http://evil.example" + CH + b" HTTP/1.1\r\nHost: gw.example\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            "absolute-form same host": b"GET http://gw.example/openai/models HTTP/1.1\r\nHost: gw.example\r\n\r\n",
            "authority-form": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            "* with GET": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                self.reject(raw)

    def test_host_variants_and_duplicate_authorization(self):
        """A1 "Host missing (1.1), duplicated, list-valued, with userinfo, NUL or bytes >0x7F;
        duplicate Authorization": 400 and close."""
        cases = {
            "missing": b"GET /openai/models HTTP/1.1\r\n\r\n",
            "empty": b"GET /openai/models HTTP/1.1\r\nHost: \r\n\r\n",
            "duplicated": b"GET /openai/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicated same": b"GET /openai/models HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "list": b"GET /openai/models HTTP/1.1\r\nHost: a, b\r\n\r\n",
            "userinfo": b"GET /openai/models HTTP/1.1\r\nHost: user:pw@a\r\n\r\n",
            "NUL": b"GET /openai/models HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            "8-bit": b"GET /openai/models HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n",
            "duplicate Authorization": b"GET /openai/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
                                       b"Authorization: Bearer b\r\n\r\n",
            "duplicate api-key": b"GET /openai/models HTTP/1.1\r\nHost: x\r\napi-key: a\r\napi-key: b\r\n\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                self.reject(raw)

    def test_connection_close_authorization_and_forwarded_headers(self):
        """A1 "Connection: close, Authorization; client-sent X-Forwarded-* or identity headers":
        hop-by-hop names stripped first, then our headers set; the caller's Authorization never
        reaches the upstream and no forwarding header of the client's survives."""
        c = Conn(self.gw.port)
        c.send(post(extra=b"Connection: close, Authorization\r\nAuthorization: Bearer caller-token\r\n"
                          b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n"
                          b"X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"))
        st, h, body = c.read_response()
        self.assertEqual(st, 200, body)
        self.assertEqual(h.get("connection"), "close")
        self.assertTrue(c.closed_within(3))
        c.close()
        rec, names = self.last_upstream_headers()
        for n in ("authorization", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded",
                  "x-real-ip"):
            self.assertNotIn(n, names)
        self.assertNotIn("caller-token", json.dumps(rec))
        self.assertNotIn("6.6.6.6", json.dumps(rec))
        self.assertEqual(names["api-key"], [self.up.api_key])
        self.assertFalse(any("authorization" in v.lower() for v in names.get("connection", [])))

    UPGRADES = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
                b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n")

    def test_upgrade_stripped(self):
        """A1 "Upgrade: h2c or websocket (unsupported)": Upgrade and HTTP2-Settings are stripped;
        the request is served as plain HTTP/1.1 (no 101, no Upgrade in the answer)."""
        for extra in self.UPGRADES:
            with self.subTest(extra=extra):
                c = Conn(self.gw.port)
                c.send(post(extra=extra))
                st, h, body = c.read_response()
                c.close()
                self.assertEqual(st, 200, body)
                self.assertNotIn("upgrade", h)
                rec, names = self.last_upstream_headers()
                for n in ("upgrade", "http2-settings"):
                    self.assertNotIn(n, names)
                self.assertFalse(any("upgrade" in v.lower() for v in names.get("connection", [])))

    def test_upgrade_request_keeps_connection_usable(self):
        """A1 "Upgrade ... strip" (and RFC 9112 9.3: a response without Connection: close keeps the
        connection). BUG: after a request carrying Upgrade, the answer keeps the connection open
        but the next request on it gets 400 "Malformed request framing" (llhttp stays in its
        upgrade state). Either close after the answer or serve the next request."""
        c = Conn(self.gw.port)
        c.send(post(extra=self.UPGRADES[0]))
        st, h, body = c.read_response()
        self.assertEqual(st, 200, body)
        if h.get("connection") == "close":
            self.assertTrue(c.closed_within(3))
        else:
            c.send(post(extra=b"Connection: close\r\n"))
            st2, _, body2 = c.read_response()
            self.assertEqual(st2, 200, body2)
        c.close()

    def test_pipelined_error_mid_stream(self):
        """A1 "Pipelined requests with an error mid-stream": answered in order; after the error,
        respond and close (the third request is never served)."""
        c = Conn(self.gw.port)
        c.send(post(json.dumps(chat_body("first")).encode())
               + b"GET /openai/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
               + post(json.dumps(chat_body("third")).encode()))
        st1, h1, b1 = c.read_response()
        st2, h2, b2 = c.read_response()
        self.assertEqual((st1, st2), (200, 400))
        self.assertEqual(json.loads(b1)["choices"][0]["message"]["content"], "Echo: first")
        self.assertEqual(h2.get("connection"), "close")
        self.assertTrue(c.closed_within(3))
        c.close()
        self.assertEqual(self.upstream_requests(), 1)

    def test_pipelined_requests_answered_in_order(self):
        """A1 "Pipelined requests": five in one write, five answers in order, connection kept."""
        c = Conn(self.gw.port)
        c.send(b"".join(post(json.dumps(chat_body(f"n{i}")).encode()) for i in range(5)))
        for i in range(5):
            st, h, body = c.read_response()
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], f"Echo: n{i}")
        c.send(post(extra=b"Connection: close\r\n"))
        self.assertEqual(c.read_response()[0], 200)
        c.close()

    def test_head_response_has_no_body(self):
        """RFC 9110 9.3.2 (not a HOSTILE-INPUT row, found while fuzzing conn.c): a response to HEAD
        carries no content. BUG: error answers to HEAD (404/405 from the route stage) write the JSON
        error body after the head, so a client reading the head as a HEAD response finds the body
        bytes where the next response should start."""
        c = Conn(self.gw.port)
        c.send(b"HEAD /openai/models HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 3
        while b"\r\n\r\n" not in c.buf and c._fill(deadline):
            pass
        self.assertIn(b"\r\n\r\n", c.buf)
        c.closed_within(2)
        c.close()
        head, rest = c.buf.split(b"\r\n\r\n", 1)
        self.assertEqual(rest, b"", f"bytes after the head of a HEAD response: {rest[:100]!r}")


class A2LimitsOnSharedGateway(SharedGateway):
    """HOSTILE-INPUT.md A2 (header count and size, body, compressed bodies) and A5 JSON attacks on
    the parse stage, default limits: 16 KiB of head, 100 headers, 4 MiB of body."""

    def test_header_count_flood_431(self):
        """A2 "Header count ... over the limit: 431": 101 headers (limit 100); 5000 headers."""
        for n in (101, 5000):
            with self.subTest(headers=n):
                hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1))
                self.reject(b"GET /openai/models HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n", 431)

    def test_header_size_flood_431(self):
        """A2 "Header ... size: over the limit 431, or 414 for the URI": one 17 KiB header; a
        never-ending header line; a 17 KiB request line gets 414."""
        self.reject(b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431)
        self.reject(b"GET /openai/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000, 431)
        self.reject(b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)

    def test_huge_body_413_before_reading(self):
        """A2 "Body: a CL over the cap gets 413 before reading. Chunked past the cap: 413 and
        close": the 413 arrives although not one body byte was sent."""
        c = Conn(self.gw.port)
        c.send(post(b"", framing=b"Content-Length: 10737418240\r\n"))
        st, h, body = c.read_response(timeout=3)
        self.assertEqual(st, 413)
        self.assertEqual(h.get("connection"), "close")
        self.assertTrue(c.closed_within(3))
        c.close()
        chunk = b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
        self.reject(post(chunk * 5, framing=TE), 413)
        self.assertEqual(self.upstream_requests(), 0)

    def test_compressed_body_415(self):
        """A2/A5 "Content-Encoding: 415 (or inflate within limits)": a gzip body is refused; the
        connection stays usable (the body was read whole, within the limit)."""
        import gzip
        gz = gzip.compress(BODY)
        self.reject(post(gz, extra=b"Content-Encoding: gzip\r\n"), 415, closed=False)
        self.reject(post(BODY, extra=b"Content-Encoding: identity\r\n"), 415, closed=False)

    def test_non_json_content_type_415(self):
        """A5 "Non-JSON Content-Type, UTF-16 charset": 415."""
        for ct in (b"text/plain", b"application/json; charset=utf-16", b"application/x-www-form-urlencoded"):
            with self.subTest(ct=ct):
                raw = post().replace(b"Content-Type: application/json", b"Content-Type: " + ct)
                self.reject(raw, 415, closed=False)

    def json_400(self, body):
        self.reject(post(body), 400, closed=False)

    def test_json_nesting_depth_10000(self):
        """A5 "Deep nesting: 400": 10000 nested arrays, and 10000 nested objects."""
        self.json_400(b"[" * 10000 + b"]" * 10000)
        self.json_400(b'{"messages":' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}")

    def test_json_node_flood(self):
        """A2 "JSON memory: [0,0,...] expands 30-40x. Cap bytes and nodes": 1.5 M nodes in 3 MB."""
        self.json_400(b'{"messages":[{"role":"user","content":"a"}],"x":[' + b"0," * 1500000 + b"0]}")

    def test_json_huge_string_within_limit(self):
        """A5 "Huge strings or bodies": a 3 MB string inside the 4 MiB body limit is accepted and
        reaches the upstream byte for byte (the limit, not the parser, decides)."""
        text = "a" * 3000000
        st, h, body = request(self.gw.port, "POST", CHAT, chat_body(text))
        self.assertEqual(st, 200)
        rec = self.up.requests()[-1]
        self.assertEqual(json.loads(rec["body"])["messages"][0]["content"], text)

    def test_json_invalid_utf8(self):
        """A5 "Invalid UTF-8: validate ourselves": bad continuation, overlong, surrogate, >U+10FFFF."""
        for bad in (b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff"):
            with self.subTest(bytes=bad):
                self.json_400(b'{"messages":[{"role":"user","content":"' + bad + b'"}]}')

    def test_json_duplicate_keys(self):
        """A5 "Duplicate keys ({"messages":...,"messages":...}): 400"."""
        self.json_400(b'{"messages":[{"role":"user","content":"ok"}],"messages":[{"role":"user","content":"evil"}]}')
        self.json_400(b'{"messages":[{"role":"user","content":"ok","content":"evil"}]}')

    def test_json_nul_escape(self):
        """A5 "\\u0000 truncates in cJSON: 400"."""
        self.json_400(b'{"messages":[{"role":"user","content":"ok\\u0000 evil"}]}')

    def test_json_control_bytes_between_tokens(self):
        """A5 parser differential: cJSON takes any byte up to 0x20 for whitespace (NUL, vertical
        tab, form feed, ...); JSON allows space, tab, LF and CR only. Such a body is 400, not
        inspected and forwarded. Found by fuzz.run.body."""
        for c in (b"\x00", b"\x0b", b"\x0c", b"\x1f", b"\x01"):
            with self.subTest(byte=c):
                self.json_400(b'{"messages":' + c + b'[{"role":"user","content":"a"}]}')
        st, h, body = request(self.gw.port, "POST", CHAT, b'{"messages":\t\r\n [{"role":"user","content":"a"}]}')
        self.assertEqual(st, 200, body)

    def test_json_parser_differentials(self):
        """A5 "Trailing bytes, comments, NaN, 1e999: reject"."""
        good = b'{"messages":[{"role":"user","content":"a"}]'
        for body in (good + b"} trailing", good + b"}{}", good + b'/* c */}', good + b',"t":NaN}',
                     good + b',"t":1e999}', good + b',"t":-1e999}', good + b',"t":Infinity}',
                     good + b",}", b"'" + good + b"}'", good + b',"t":0x10}', good + b',"t":.5}',
                     good + b',"t":+1}'):
            with self.subTest(body=body[-20:]):
                self.json_400(body)

    def test_json_number_differentials(self):
        """A5 "Parser differentials ... integers above 2^53: reject, or forward our
        re-serialisation". BUG: 9007199254740993 (2^53+1, which the filter reads as 2^53), a
        number with a leading zero (01) and one with a bare trailing dot (1.) -- neither of the
        last two is JSON; Python and Go parsers refuse them -- are accepted and the original bytes
        forwarded, so the upstream may read a value the policy never saw, or fail differently."""
        good = b'{"messages":[{"role":"user","content":"a"}]'
        for body in (good + b',"seed":9007199254740993}', good + b',"seed":123456789012345678901234567890}',
                     good + b',"max_tokens":01}', good + b',"temperature":1.}'):
            with self.subTest(body=body[-30:]):
                self.json_400(body)

    def test_json_not_an_object_or_empty(self):
        """A5: a body that is JSON but not an object, or empty, is 400."""
        for body in (b"[]", b'"messages"', b"null", b"1"):
            with self.subTest(body=body):
                self.json_400(body)
        self.reject(post(b"", framing=b"Content-Length: 0\r\n"), 400, closed=False)


class OwnGateway(unittest.TestCase):
    """A fresh fake and gateway per test, with the class's limits."""
    limits = {}

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="aoai-guard-hostile-")
        self.tmp = self._tmp.name
        self.up = FakeAOAI(self.tmp)
        self.gw = Gateway(self.tmp, base_config([upstream(self.up)], limits=self.limits,
                                                log={"level": "warn", "access_log": False}))

    def tearDown(self):
        problems = []
        try:
            st, _, body = request(self.gw.port, "POST", CHAT, chat_body("still serving"))
            if st != 200:
                problems.append(f"gateway no longer serves: {st} {body[:200]!r}")
        finally:
            for p in (self.gw, self.up):
                rc = p.stop()
                rep = p.sanitizer_report()
                if rep:
                    problems.append(f"{p.name}: sanitizer report:\n{rep[-4000:]}")
                if p is self.gw and rc not in (0, None):
                    problems.append(f"gateway exit status {rc}")
            self._tmp.cleanup()
        if problems:
            self.fail("\n".join(problems))



class A2SlowClients(OwnGateway):
    """HOSTILE-INPUT.md A2: slowloris, slow body, pipelining flood. Short deadlines so the cases
    run in a few seconds."""
    limits = {"header_timeout_ms": 1000, "body_timeout_ms": 1000, "idle_timeout_ms": 1500,
              "max_requests_per_connection": 50}

    def trickle(self, c, data, interval, stop_after):
        """Sends data one byte per interval until stop_after seconds or the peer answers."""
        t0 = time.monotonic()
        for b in data:
            if time.monotonic() - t0 > stop_after:
                break
            try:
                c.s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            c.s.settimeout(interval)
            try:
                got = c.s.recv(65536)
                if got:
                    c.buf += got
                    break
                c.eof = True
                break
            except socket.timeout:
                pass
        return time.monotonic() - t0

    def test_slowloris_headers_408(self):
        """A2 "Slowloris: a total header deadline, not an idle timer; 408 and close": one byte of
        head every 100 ms keeps the connection busy, yet the 408 comes at the 1 s deadline."""
        c = Conn(self.gw.port)
        head = b"GET /openai/models HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        t0 = time.monotonic()
        self.trickle(c, head, 0.1, 5)
        st, h, body = c.read_response(timeout=3)
        elapsed = time.monotonic() - t0
        self.assertEqual(st, 408)
        self.assertEqual(h.get("connection"), "close")
        self.assertTrue(c.closed_within(3))
        c.close()
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 2.5)

    def test_slow_body_408(self):
        """A2 "Slow body: add a minimum rate or overall deadline": one body byte every 100 ms, 408
        and close at the 1 s body deadline; nothing reaches the upstream."""
        c = Conn(self.gw.port)
        body = json.dumps(chat_body("x" * 200)).encode()
        c.send(post(b"", framing=b"Content-Length: %d\r\n" % len(body)))
        t0 = time.monotonic()
        self.trickle(c, body, 0.1, 5)
        st, h, _ = c.read_response(timeout=3)
        elapsed = time.monotonic() - t0
        self.assertEqual(st, 408)
        self.assertEqual(h.get("connection"), "close")
        self.assertTrue(c.closed_within(3))
        c.close()
        self.assertLess(elapsed, 2.5)
        self.assertEqual(self.up.stats()["requests"], 0)

    def test_pipelining_flood_capped(self):
        """A2 "Keep-alive and pipelining: cap requests per connection ... and queued pipelined
        requests": 300 pipelined requests on one connection with max_requests_per_connection 50:
        exactly 50 answers in order, the 50th with Connection: close, then the close. The client
        keeps writing while reading, so back-pressure cannot deadlock either side."""
        one = post(b"not json")  # answered by the parse stage (400), connection kept
        c = Conn(self.gw.port, timeout=10)
        sender = threading.Thread(target=lambda: self._send_all(c, one * 300))
        sender.start()
        statuses = []
        last = None
        for _ in range(50):
            st, h, body = c.read_response(timeout=10)
            statuses.append(st)
            last = h
        self.assertEqual(statuses, [400] * 50)
        self.assertEqual(last.get("connection"), "close")
        self.assertTrue(c.closed_within(5))
        c.close()
        sender.join(10)
        self.assertEqual(self.up.stats()["requests"], 0)

    @staticmethod
    def _send_all(c, data):
        try:
            c.s.sendall(data)
        except OSError:
            pass  # the gateway closed after its 50th answer

class A2PipeliningAhead(OwnGateway):
    """HOSTILE-INPUT.md A2 "queued pipelined requests": a client that keeps pipelining while its
    first request waits on a slow upstream is read no further than the connection's input
    high-water mark (128 KiB), so the gateway does not hold megabytes it cannot serve yet. Reading
    resumes once the input drains, and every request is answered in order."""
    limits = {"max_requests_per_connection": 100000, "max_body_bytes": 1 << 20}

    def test_reading_stops_at_the_high_water_mark_and_resumes(self):
        n, body = 500, b"x" * 65536  # not JSON: each is answered 400 by the parse stage, after its body
        ahead = post(body) * n
        self.up.configure(first_byte_delay_ms=4000)
        c = Conn(self.gw.port, timeout=10)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        t0 = time.monotonic()
        c.send(post())  # the slow one
        c.s.setblocking(False)
        sent = 0
        while sent < len(ahead):  # until the gateway has taken nothing for half a second
            try:
                sent += c.s.send(ahead[sent:sent + 65536])
            except BlockingIOError:
                if not select.select([], [c.s], [], 0.5)[1]:
                    break
        stalled_after = time.monotonic() - t0
        print(f"pipelining ahead: the gateway took {sent} of {len(ahead)} bytes while the upstream was slow",
              file=sys.stderr)
        self.assertLess(stalled_after, 3.5, "the upstream answered before the client stalled")
        # Without the mark the whole 32 MiB would sit in the gateway's input buffer. What it took is
        # the mark, its 16 KiB read buffer and the kernel's socket buffers on both sides.
        self.assertLess(sent, 8 << 20)
        c.s.setblocking(True)
        sender = threading.Thread(target=lambda: c.s.sendall(ahead[sent:]))
        sender.start()
        st, _h, _b = c.read_response(timeout=15)
        self.assertEqual(st, 200)
        statuses = [c.read_response(timeout=15)[0] for _ in range(n)]
        sender.join(15)
        self.assertEqual(statuses, [400] * n)
        self.assertEqual(self.up.stats()["requests"], 1)
        c.close()
        self.up.configure(first_byte_delay_ms=0)


class A2ManyConnections(OwnGateway):
    """HOSTILE-INPUT.md A2 "Connections": many idle or half-sent connections are closed at the
    header deadline (6 s: opening 1000 connections from Python can take a few seconds on a busy
    machine, and all of them must be open at once) and leave nothing behind."""
    limits = {"header_timeout_ms": 6000}

    def test_idle_connections_released(self):
        """A2 "Connections" / "Slowloris": 1000 connections that send nothing are closed by the
        gateway at the header deadline; afterwards its descriptor count is back to the baseline
        and its memory within 4 MiB of it (per-connection state is ~1 KiB plus a bufferevent, so
        a leak of the connection objects would show as >1 MiB; the rest is allocator slack)."""
        pid = self.gw.p.pid
        for _ in range(5):
            request(self.gw.port, "POST", CHAT, chat_body("warm"))
        fd0 = fd_count(pid)
        rss0 = rss_kib(pid)
        socks = []
        try:
            for _ in range(1000):
                socks.append(socket.create_connection(("127.0.0.1", self.gw.port), timeout=5))
            wait_until(lambda: fd_count(pid) >= fd0 + 990, timeout=5, what="1000 accepted connections")
            # Nobody sends a byte: the gateway closes them all at the 6 s header deadline.
            wait_until(lambda: fd_count(pid) <= fd0 + 2, timeout=15, what="idle connections closed")
            for s in socks[:50]:
                s.settimeout(2)
                self.assertEqual(s.recv(10), b"")
        finally:
            for s in socks:
                s.close()
        self.assertLessEqual(fd_count(pid), fd0 + 2)
        grown = rss_kib(pid) - rss0
        limit = 32 * 1024 if is_asan(pid) else 4 * 1024
        self.assertLess(grown, limit, f"RSS grew {grown} KiB after 1000 idle connections")

    def test_half_sent_requests_do_not_pile_up(self):
        """A2 "Connections": 200 connections each stopping mid-head are all answered 408 and
        closed at the deadline; the descriptor count returns to the baseline."""
        pid = self.gw.p.pid
        fd0 = fd_count(pid)
        socks = []
        try:
            for _ in range(200):
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5)
                s.sendall(b"POST " + CH + b" HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
            wait_until(lambda: fd_count(pid) <= fd0 + 2, timeout=15, what="half-sent connections closed")
            answered = 0
            for s in socks:
                s.settimeout(2)
                data = b""
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    data += b
                if data.startswith(b"HTTP/1.1 408 "):
                    answered += 1
            self.assertEqual(answered, 200)
        finally:
            for s in socks:
                s.close()


class EvilUpstream:
    """A stand-in upstream that answers every request with fixed bytes (HOSTILE-INPUT.md A1 last
    row, A6): reads the request head and Content-Length body, sends `reply`, then closes unless
    hold is set (then it keeps the connection open, silent, until the client goes)."""

    def __init__(self, reply, hold=False):
        self.reply = reply
        self.hold = hold
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.requests = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        self.ls.settimeout(0.2)
        while not self.stop.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        s.settimeout(10)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                b = s.recv(65536)
                if not b:
                    return
                buf += b
            head, rest = buf.split(b"\r\n\r\n", 1)
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, v = line.split(b":", 1)
                if k.strip().lower() == b"content-length":
                    n = int(v)
            while len(rest) < n:
                b = s.recv(65536)
                if not b:
                    return
                rest += b
            self.requests += 1
            if isinstance(self.reply, list):
                # Pieces, each its own segment: the gateway reads them apart (a pause between
                # them paces the writes; nothing waits on it for a result).
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i, piece in enumerate(self.reply):
                    if i:
                        time.sleep(0.05)
                    s.sendall(piece)
            else:
                s.sendall(self.reply)
            if self.hold:
                while not self.stop.is_set():
                    try:
                        if not s.recv(1024):
                            break
                    except socket.timeout:
                        continue
        except OSError:
            pass
        finally:
            s.close()

    def close(self):
        self.stop.set()
        self.ls.close()


class A6UpstreamMisbehaviour(unittest.TestCase):
    """HOSTILE-INPUT.md A1 "Upstream framing bad, or body truncated" and A6 (SSE from upstream):
    502 before anything reached the client; after that, a truncated response that looks truncated
    (no clean end) and the connection closed. The gateway serves afterwards."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="aoai-guard-hostile-")
        self.tmp = self._tmp.name
        self.procs = []
        self.evil = []

    def tearDown(self):
        problems = []
        for e in self.evil:
            e.close()
        for p in reversed(self.procs):
            rc = p.stop()
            rep = p.sanitizer_report()
            if rep:
                problems.append(f"{p.name}: sanitizer report:\n{rep[-4000:]}")
            if isinstance(p, Gateway) and rc not in (0, None):
                problems.append(f"{p.name}: exit status {rc}")
        self._tmp.cleanup()
        if problems:
            self.fail("\n".join(problems))

    def gateway_for(self, url, name="gw", key="k", **up):
        u = {"name": "evil", "url": url, "auth": {"type": "api_key", "api_key": key},
             "circuit_breaker": {"failure_threshold": 1000, "cooldown_ms": 100}}
        u.update(up)
        gw = Gateway(self.tmp, base_config([u], log={"level": "info", "access_log": True}), name=name)
        self.procs.append(gw)
        return gw

    def evil_gateway(self, reply, hold=False, **up):
        e = EvilUpstream(reply, hold)
        self.evil.append(e)
        return e, self.gateway_for(f"http://127.0.0.1:{e.port}", name=f"gw{len(self.evil)}", **up)

    def chat(self, gw, stream=False, timeout=8):
        c = Conn(gw.port, timeout=timeout)
        c.send(post(json.dumps(chat_body("hi", stream=stream)).encode()))
        return c

    def test_malformed_upstream_framing_502(self):
        """A1 "Upstream framing bad": 502 and close upstream. Each reply below is ambiguous or
        malformed in its head."""
        ok_body = b'{"choices":[]}'
        replies = {
            "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + ok_body,
            "duplicate CL": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n"
                            b"Content-Length: 15\r\n\r\n" + ok_body,
            "bad CL": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: +14\r\n\r\n" + ok_body,
            "bad status line": b"HTTP/1.1 2OO OK\r\nContent-Length: 14\r\n\r\n" + ok_body,
            "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 14\n\n" + ok_body,
            "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 14\r\n\r\n" + ok_body,
        }
        for name, reply in replies.items():
            with self.subTest(name):
                e, gw = self.evil_gateway(reply)
                c = self.chat(gw)
                st, h, body = c.read_response()
                c.close()
                self.assertEqual(st, 502, body)
                self.assertIn("error", json.loads(body))
                self.assertGreaterEqual(e.requests, 1)

    def test_upstream_obs_fold_502(self):
        """A1 "obs-fold ... Upstream response: 502". BUG: a folded response header from the upstream
        is accepted and the response forwarded (200)."""
        e, gw = self.evil_gateway(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: a\r\n b\r\n"
                                  b"Content-Length: 14\r\n\r\n{\"choices\":[]}")
        c = self.chat(gw)
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 502, body)

    def test_upstream_obs_fold_across_reads(self):
        """The obs-fold scan carries the line end across reads: a fold whose line feed ends one
        segment and whose space starts the next is a 502; a blank line split the same way ends the
        scan, so a body with a line feed and a space in it is forwarded (200)."""
        e, gw = self.evil_gateway([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: a\r\n",
                                   b" b\r\nContent-Length: 14\r\n\r\n{\"choices\":[]}"])
        c = self.chat(gw)
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 502, body)
        body_ok = b'{"choices":[],\n "x":1}'
        e, gw = self.evil_gateway([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                   % len(body_ok), b"\r\n", body_ok])
        c = self.chat(gw)
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["x"], 1)

    def test_huge_upstream_headers_502(self):
        """A2/A1: an upstream head larger than the gateway accepts (here ~200 KiB of headers) is a
        502, not an unbounded buffer."""
        reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(200))
                 + b"Content-Length: 2\r\n\r\n{}")
        e, gw = self.evil_gateway(reply)
        c = self.chat(gw)
        st, h, body = c.read_response()
        c.close()
        self.assertEqual(st, 502, body)

    def test_truncated_upstream_body(self):
        """A1 "body truncated: never complete a truncated body, close the client instead": the
        upstream promises 1000 bytes, sends 20 and closes; the client gets the head and at most the
        20 bytes, never a complete body, and the connection closes."""
        reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                 + b'{"choices":[],"x":"')
        e, gw = self.evil_gateway(reply)
        c = self.chat(gw)
        deadline = time.monotonic() + 8
        while c._fill(deadline):
            pass
        c.close()
        data = c.buf
        self.assertTrue(c.eof, "the client connection was not closed")
        if data.startswith(b"HTTP/1.1 502"):
            return  # refused before anything was sent: also correct
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertLess(len(body), 1000)

    def test_bad_chunk_mid_stream_truncates(self):
        """A1 "Upstream framing bad" mid-body / A6: a malformed chunk after the stream started is
        not repaired: the client's chunked stream ends without its terminating chunk and closes."""
        reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"1f\r\ndata: {\"choices\":[],\"a\":1}\n\n\r\nzz\r\ngarbage\r\n")
        e, gw = self.evil_gateway(reply, hold=True)
        c = self.chat(gw, stream=True)
        deadline = time.monotonic() + 8
        while c._fill(deadline):
            pass
        c.close()
        self.assertTrue(c.eof, "the client connection was not closed")
        self.assertTrue(c.buf.startswith(b"HTTP/1.1 200"), c.buf[:100])
        self.assertFalse(c.buf.endswith(b"0\r\n\r\n"), "a broken stream must not end cleanly")
        self.assertNotIn(b"garbage", c.buf)

    def test_endless_stream_idle_timeout(self):
        """A6 "Separate streaming idle timeout": an upstream that sends the head and a first event
        and then nothing is cut at its idle_timeout_ms (400 ms); the client sees a truncated stream
        and the access log says upstream_timeout."""
        up = FakeAOAI(self.tmp)
        self.procs.append(up)
        up.configure(faults=[{"stall_after_chunks": 1, "count": 1}])
        gw = self.gateway_for(up.url, key=up.api_key, idle_timeout_ms=400)
        c = self.chat(gw, stream=True)
        t0 = time.monotonic()
        deadline = t0 + 8
        while c._fill(deadline):
            pass
        elapsed = time.monotonic() - t0
        c.close()
        self.assertTrue(c.eof)
        self.assertTrue(c.buf.startswith(b"HTTP/1.1 200"), c.buf[:100])
        self.assertNotIn(b"[DONE]", c.buf)
        self.assertFalse(c.buf.endswith(b"0\r\n\r\n"))
        self.assertLess(elapsed, 4)
        line = wait_until(lambda: [l for l in gw.access_lines() if l.get("stream")], what="access line")[-1]
        self.assertEqual(line["completion"], "upstream_timeout")
        st, _, _ = request(gw.port, "POST", CHAT, chat_body("after"), timeout=10)
        self.assertEqual(st, 200)

    def test_reset_mid_response_truncates(self):
        """A6 "Upstream EOF/RST mid-event: abort the client side ... never synthesise a clean
        end", for a stream and for a JSON body: truncated, closed, upstream_reset in the log."""
        up = FakeAOAI(self.tmp)
        self.procs.append(up)
        gw = self.gateway_for(up.url, key=up.api_key)
        for stream in (True, False):
            with self.subTest(stream=stream):
                up.configure(faults=[{"reset_after_chunks": 2, "count": 1}])
                c = self.chat(gw, stream=stream)
                deadline = time.monotonic() + 8
                while c._fill(deadline):
                    pass
                c.close()
                self.assertTrue(c.eof)
                self.assertTrue(c.buf.startswith(b"HTTP/1.1 200"), c.buf[:200])
                head, body = c.buf.split(b"\r\n\r\n", 1)
                if stream:
                    self.assertNotIn(b"[DONE]", body)
                    self.assertFalse(body.endswith(b"0\r\n\r\n"))
                else:
                    cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                    if cl:
                        self.assertLess(len(body), int(cl[0].split(b":")[1]))
                    else:
                        self.assertFalse(body.endswith(b"0\r\n\r\n"))
                line = wait_until(lambda: [l for l in gw.access_lines() if l.get("completion") == "upstream_reset"],
                                  what="access line")[-1]
                self.assertEqual(line["completion"], "upstream_reset")
        st, _, _ = request(gw.port, "POST", CHAT, chat_body("after"), timeout=10)
        self.assertEqual(st, 200)

    def test_close_before_response_502(self):
        """A1 "Upstream ... body truncated" at the very start: the upstream reads the request and
        closes without a byte: 502 in Azure's shape."""
        up = FakeAOAI(self.tmp)
        self.procs.append(up)
        gw = self.gateway_for(up.url, key=up.api_key)
        up.configure(faults=[{"close_before_response": True, "count": 10}])
        st, h, body = request(gw.port, "POST", CHAT, chat_body())
        self.assertEqual(st, 502, body)
        self.assertEqual(json.loads(body)["error"]["code"], "BadGateway")

    def test_non_sse_error_instead_of_stream(self):
        """A6 "Non-200 or wrong content type: an error response, not a stream": a streamed request
        answered 429 by the upstream reaches the client as the upstream's JSON error (no SSE
        framing), with its retry-after."""
        up = FakeAOAI(self.tmp)
        self.procs.append(up)
        gw = self.gateway_for(up.url, key=up.api_key)
        up.configure(faults=[{"status": 429, "retry_after": "2", "count": 10}])
        st, h, body = request(gw.port, "POST", CHAT, chat_body("x", stream=True))
        self.assertEqual(st, 429)
        self.assertTrue(h["content-type"].startswith("application/json"), h)
        self.assertIn("error", json.loads(body))
        self.assertEqual(h.get("retry-after"), "2")


if __name__ == "__main__":
    unittest.main()
