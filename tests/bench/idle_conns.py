#!/usr/bin/env python3
"""Holds N idle keep-alive connections to 127.0.0.1:PORT, each after one complete request, so a
benchmark can read the server's memory per connection (tests/bench/bench.py, scenario conns).

    idle_conns.py --port P --count N --path TARGET --body JSON [--header "Name: value"]... [--tls]
                  [--window 256]

Connections are opened with at most --window requests in flight (so the proxy's upstream pool stays
small), every response must be a complete 200 (Content-Length or chunked), and the connection is
kept open afterwards. Prints `ready {"ok": n, "failed": m, "seconds": s}` once every connection is
idle, then waits until its standard input closes and exits (closing them all). Python stdlib only."""
import argparse
import json
import selectors
import socket
import ssl
import sys
import time


class Conn:
    __slots__ = ("sock", "state", "out", "inbuf", "tls")

    def __init__(self, sock, tls):
        self.sock = sock
        self.tls = tls
        self.state = "connecting"
        self.out = b""
        self.inbuf = b""


def response_complete(buf):
    """(complete, status) for the bytes of one response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False, None
    head = buf[:end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ")[1])
    except (IndexError, ValueError):
        return True, -1
    body = buf[end + 4:]
    clen, chunked = None, False
    for line in head[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            clen = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if clen is not None:
        return len(body) >= clen, status
    if chunked:
        return body.endswith(b"0\r\n\r\n"), status
    return False, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    body = a.body.encode()
    req = (f"POST {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n" + "".join(h + "\r\n" for h in a.header) + "\r\n").encode() + body
    tls_ctx = None
    if a.tls:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls_ctx.check_hostname = False
        tls_ctx.verify_mode = ssl.CERT_NONE

    sel = selectors.DefaultSelector()
    idle, failed = [], 0
    started = 0
    in_flight = 0
    t0 = time.monotonic()
    deadline = t0 + a.timeout

    def start_one():
        nonlocal started, in_flight
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex(("127.0.0.1", a.port))
        c = Conn(s, False)
        sel.register(s, selectors.EVENT_WRITE, c)
        started += 1
        in_flight += 1

    def finish(c, ok):
        nonlocal in_flight, failed
        in_flight -= 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        if ok:
            idle.append(c)
        else:
            failed += 1
            if failed <= 3:
                print(f"idle_conns: a connection failed in state {c.state}: {c.inbuf[:200]!r}", file=sys.stderr)
            c.sock.close()

    def want(c, events):
        sel.modify(c.sock, events, c)

    while (started < a.count or in_flight) and time.monotonic() < deadline:
        while started < a.count and in_flight < a.window:
            start_one()
        for key, _ev in sel.select(timeout=1.0):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        c.inbuf = f"connect error {err}".encode()
                        finish(c, False)
                        continue
                    if tls_ctx:
                        c.sock = tls_ctx.wrap_socket(c.sock, do_handshake_on_connect=False, server_side=False)
                        sel.unregister(key.fileobj)
                        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
                        c.state = "handshake"
                    else:
                        c.state = "sending"
                        c.out = req
                if c.state == "handshake":
                    try:
                        c.sock.do_handshake()
                        c.state = "sending"
                        c.out = req
                        want(c, selectors.EVENT_WRITE)
                    except ssl.SSLWantReadError:
                        want(c, selectors.EVENT_READ)
                        continue
                    except ssl.SSLWantWriteError:
                        want(c, selectors.EVENT_WRITE)
                        continue
                if c.state == "sending":
                    try:
                        n = c.sock.send(c.out)
                    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        continue
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = "reading"
                        want(c, selectors.EVENT_READ)
                    continue
                if c.state == "reading":
                    try:
                        data = c.sock.recv(65536)
                    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                    if not data:
                        finish(c, False)
                        continue
                    c.inbuf += data
                    done, status = response_complete(c.inbuf)
                    if done:
                        c.state = "idle"
                        finish(c, status == 200)
            except OSError as e:
                c.inbuf = repr(e).encode()
                finish(c, False)
    seconds = time.monotonic() - t0
    print("ready " + json.dumps({"ok": len(idle), "failed": failed + (a.count - started) + in_flight,
                                 "seconds": round(seconds, 2)}), flush=True)
    sys.stdin.read()
    for c in idle:
        c.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
