"""Shared fixtures for integration tests: start the real aoai-guard binary and the stand-ins on
127.0.0.1, wait on conditions with deadlines, talk raw HTTP when the bytes matter.

Binaries come from the environment CTest sets: AG_BIN (aoai-guard), AG_FAKE_AOAI, AG_FAKE_ENTRA,
AG_MINT_TOKEN, AG_FAKE_IDENTITY, AG_FAKE_MONITOR."""
import http.client
import json
import os
import signal
SIGTERM = signal.SIGTERM
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

BIN = os.environ.get("AG_BIN", "build/aoai-guard")
FAKE_AOAI = os.environ.get("AG_FAKE_AOAI", "build/tests/fakes/fake_aoai")

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ThreadSanitizer:", "==ERROR")


def rss_kib(pid):
    """The process's resident set size (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid):
    """Open descriptors of the process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a truthy value or the deadline passes (then fails)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    """A child process with its output in files and a port file it writes once listening."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.workdir = workdir
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        self.port_file = os.path.join(workdir, f"{name}.ports")
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        argv = [a.replace("{port_file}", self.port_file) for a in argv]
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.out = open(self.out_path, "ab")
        self.err = open(self.err_path, "ab")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=self.err, env=full_env,
                                  stdin=subprocess.DEVNULL)

    def wait_ports(self, timeout=20.0):
        def ready():
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.stderr()[-3000:]}\n{self.stdout()[-3000:]}")
            try:
                with open(self.port_file) as f:
                    text = f.read()
                return text if text.endswith("\n") else None
            except FileNotFoundError:
                return None
        return wait_until(ready, timeout, what=f"{self.name} to listen")

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        self.p.send_signal(sig)

    def stop(self, sig=SIGTERM, timeout=30.0):
        """Stops the process and returns its exit status."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        self.err.close()
        return self.p.returncode

    def sanitizer_report(self):
        text = self.stderr()
        for m in SANITIZER_MARKERS:
            if m in text:
                return text
        return None


class FakeAOAI(Proc):
    """tests/fakes/fake_aoai: a stand-in Azure OpenAI resource with a control API under /_fake/."""

    def __init__(self, workdir, name="aoai", api_key="upstream-key-123", extra=()):
        argv = [FAKE_AOAI, "--port", "0", "--port-file", "{port_file}", "--name", name]
        if api_key:
            argv += ["--api-key", api_key]
        argv += list(extra)
        super().__init__(f"fake-{name}", argv, workdir)
        self.fake_name = name
        self.api_key = api_key
        text = self.wait_ports()
        self.port = int(text.split()[-1])

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
            raise AssertionError(f"fake control {method} {path}: {r.status} {payload!r}")
        return json.loads(payload) if payload else None

    def requests(self):
        return self._call("GET", "/_fake/requests")

    def clear(self):
        self._call("DELETE", "/_fake/requests")

    def configure(self, **cfg):
        self._call("POST", "/_fake/config", cfg)

    def reset(self):
        self._call("DELETE", "/_fake/config")

    def stats(self):
        return self._call("GET", "/_fake/stats")


def base_config(upstreams, **overrides):
    """A minimal valid gateway configuration on ephemeral ports."""
    cfg = {
        "workers": 1,
        "listeners": [{"address": "127.0.0.1", "port": 0}],
        "admin": {"address": "127.0.0.1", "port": 0},
        "upstreams": upstreams,
        "log": {"level": "info", "access_log": True},
    }
    cfg.update(overrides)
    return cfg


def upstream(fake, name=None, **kw):
    u = {"name": name or fake.fake_name, "url": fake.url,
         "auth": {"type": "api_key", "api_key": fake.api_key}}
    u.update(kw)
    return u


class Gateway(Proc):
    """The real aoai-guard binary with a configuration written to the test's directory."""

    def __init__(self, workdir, config, name="gw", env=None, expect_start=True):
        self.config_path = os.path.join(workdir, f"{name}.json")
        self.write_config(config)
        super().__init__(name, [BIN, "--config", self.config_path, "--port-file", "{port_file}"],
                         workdir, env=env)
        self.ports = {}
        if expect_start:
            self.refresh_ports()

    def write_config(self, config):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            if isinstance(config, str):
                f.write(config)
            else:
                json.dump(config, f, indent=1)
        os.replace(tmp, self.config_path)

    def refresh_ports(self):
        text = self.wait_ports()
        for line in text.splitlines():
            parts = line.split()
            if parts[0] == "listener":
                self.ports[int(parts[1])] = int(parts[2])
            elif parts[0] == "admin":
                self.ports["admin"] = int(parts[1])

    @property
    def port(self):
        return self.ports[0]

    @property
    def admin_port(self):
        return self.ports["admin"]

    def log_lines(self):
        """The gateway's JSON log lines so far. A last line without its newline is still being
        written (the file is read while the gateway runs): it is left for the next read."""
        text = self.stdout()
        complete = text[:text.rfind("\n") + 1]
        out = []
        for line in complete.splitlines():
            line = line.strip()
            if line:
                out.append(json.loads(line))
        return out

    def access_lines(self):
        return [l for l in self.log_lines() if l.get("type") == "access"]

    def reload(self, config):
        self.write_config(config)
        self.p.send_signal(signal.SIGHUP)


def request(port, method, path, body=None, headers=None, timeout=15, tls_context=None):
    """One HTTP request on a fresh connection; returns (status, headers dict lower-cased, body bytes)."""
    if tls_context:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls_context)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    payload = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, payload


CHAT = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"


def chat_body(text="Hello", stream=False, **kw):
    b = {"messages": [{"role": "user", "content": text}]}
    if stream:
        b["stream"] = True
    b.update(kw)
    return b


def raw_exchange(port, data, timeout=5.0, read_until_close=True, max_bytes=1 << 20):
    """Sends raw bytes and returns everything read until the peer closes (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline and total < max_bytes:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if not read_until_close:
                break
        return b"".join(chunks)
    finally:
        s.close()


def parse_responses(data):
    """Splits raw HTTP/1.1 response bytes into [(status, headers, body)], understanding
    Content-Length and chunked framing. Raises on malformed input."""
    out = []
    i = 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            raise AssertionError(f"incomplete response head: {data[i:i+200]!r}")
        head = data[i:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        hdrs = {}
        for line in head[1:]:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        i = end + 4
        if status < 200:
            out.append((status, hdrs, b""))
            continue
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            body = data[i:i + n]
            i += n
        elif hdrs.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                le = data.index(b"\r\n", i)
                size = int(data[i:le], 16)
                i = le + 2
                body += data[i:i + size]
                i += size + 2
                if size == 0:
                    break
        else:
            body = data[i:]
            i = len(data)
        out.append((status, hdrs, body))
    return out


class GatewayTestCase(unittest.TestCase):
    """Base class: a temp directory per test, processes stopped (and checked for sanitizer
    reports) at the end."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="aoai-guard-test-")
        self.tmp = self._tmp.name
        self._procs = []

    def track(self, proc):
        self._procs.append(proc)
        return proc

    def fake(self, name="aoai", **kw):
        return self.track(FakeAOAI(self.tmp, name=name, **kw))

    def gateway(self, config, name="gw", **kw):
        return self.track(Gateway(self.tmp, config, name=name, **kw))

    def tearDown(self):
        problems = []
        for p in reversed(self._procs):
            rc = p.stop()
            rep = p.sanitizer_report()
            if rep:
                problems.append(f"{p.name}: sanitizer report:\n{rep[-4000:]}")
            if isinstance(p, Gateway) and rc not in (0, None) and not getattr(p, "expect_fail", False):
                problems.append(f"{p.name}: exit status {rc}\n{p.stderr()[-2000:]}")
        self._tmp.cleanup()
        if problems:
            self.fail("\n".join(problems))
