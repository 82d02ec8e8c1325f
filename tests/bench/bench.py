#!/usr/bin/env python3
"""The aoai-guard benchmark driver (tests/bench/README.md): aoai-guard against nginx (and HAProxy) on
loopback, same upstream (tests/fakes/fake_aoai --no-record), same client (wrk + wrk_post.lua), same
number of workers, alternating rounds, medians.

    bench.py --build-dir DIR [--rounds 3] [--duration 8] [--scenarios plain,full,...] [--results FILE]
    bench.py --smoke --ag-bin BIN --fake-aoai BIN [--sse-client BIN] [--duration 10]

Every aoai-guard scenario is a config generator function (SCENARIOS below). A scenario whose config
the binary refuses (a stage this build does not have) is reported as "not available in this build"
with the binary's own message instead of failing the run. Python 3 standard library only."""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LUA = os.path.join(HERE, "wrk_post.lua")
IDLE_CONNS = os.path.join(HERE, "idle_conns.py")
CHAT = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
API_KEY = "bench-upstream-key-0123456789"
TENANT = "11111111-1111-4111-8111-111111111111"
AUDIENCE = "api://aoai-guard"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_CHUNKS = 200

CHAT_BODY = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": "Summarise the quarterly report in three bullet points."}],
             "max_tokens": 400}
STREAM_BODY = dict(CHAT_BODY, stream=True, stream_options={"include_usage": True})
REGEX_RULES = os.path.join(HERE, "policy-regex-50.json")

# Prompt text for the full scenario: ordinary business prose (no digits, addresses or secrets), so the
# policy inspects all of it and forwards the request.
PROSE = ("The regional team reviewed the quarterly plan and agreed on three priorities for the next release. "
         "Customers asked for clearer onboarding, faster support answers and better reporting across accounts. "
         "Finance wants a simple summary of spending by department, with notes on what changed since spring. "
         "Please keep the tone friendly, avoid jargon, and suggest one concrete next step for each priority. ")


def prompt_body(size):
    """A chat body whose user message is `size` bytes of prose (1 KB and 16 KB in the full scenario)."""
    text = (PROSE * (size // len(PROSE) + 1))[:size]
    return {"messages": [{"role": "system", "content": "You are a helpful assistant for a product team."},
                         {"role": "user", "content": text}], "max_tokens": 400}

T0 = time.monotonic()


def log(msg):
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def wait_until(pred, timeout, what, interval=0.02):
    """Polls pred() until it returns a truthy value; raises BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_call(port, method, path, body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    try:
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ------------------------------------------------------------------------------------------ processes

def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_ticks(pids):
    """utime + stime of each process (all its threads, live and exited), summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        except (OSError, IndexError, ValueError):
            pass
    return total


def quiesce(pids, timeout=5.0):
    """Waits until these processes spend no CPU for 100 ms (the previous run's in-flight work, audit
    flushes and the like are over), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    prev = cpu_ticks(pids)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        cur = cpu_ticks(pids)
        if cur == prev:
            return True
        prev = cur
    return False


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def fd_count(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


class Proc:
    """A child process with stdout/stderr in files of the run directory."""
    live = []

    def __init__(self, ctx, name, argv, env=None):
        self.name = name
        self.out_path = os.path.join(ctx.tmp, f"{name}.out")
        self.err_path = os.path.join(ctx.tmp, f"{name}.err")
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env)
        Proc.live.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stderr(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout}s: killing it")
                self.p.kill()
                self.p.wait()
        if self in Proc.live:
            Proc.live.remove(self)
        return self.p.returncode

    @classmethod
    def stop_all(cls):
        for p in list(reversed(cls.live)):
            p.stop(timeout=10)


def read_port_file(path, proc, timeout=20):
    def ready():
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with status {proc.p.returncode}: {proc.stderr()[-2000:]}")
        try:
            with open(path) as f:
                text = f.read()
            return text if text.endswith("\n") else None
        except FileNotFoundError:
            return None
    return wait_until(ready, timeout, f"{proc.name} to listen")


class Upstream:
    """tests/fakes/fake_aoai --no-record: the fast stand-in upstream shared by every proxy."""

    def __init__(self, ctx):
        pf = os.path.join(ctx.tmp, "upstream.port")
        self.proc = Proc(ctx, "fake_aoai", [ctx.fake_aoai, "--port", "0", "--port-file", pf, "--name", "bench",
                                            "--api-key", API_KEY, "--no-record"])
        self.port = int(read_port_file(pf, self.proc).split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"

    def configure(self, **cfg):
        st, body = http_call(self.port, "POST", "/_fake/config", cfg)
        if st != 200:
            raise BenchError(f"fake_aoai config {cfg}: {st} {body[:200]!r}")

    def reset(self):
        http_call(self.port, "DELETE", "/_fake/config")

    def stop(self):
        self.proc.stop()


class FakeEntra:
    """tests/fakes/fake_entra: OpenID metadata + JWKS for TENANT, keys written to a directory."""

    def __init__(self, ctx):
        pf = os.path.join(ctx.tmp, "entra.port")
        self.keys_dir = os.path.join(ctx.tmp, "entra-keys")
        self.proc = Proc(ctx, "fake_entra", [ctx.fake_entra, "--port", "0", "--port-file", pf,
                                             "--keys-dir", self.keys_dir, "--tenant", TENANT])
        self.port = int(read_port_file(pf, self.proc).split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"
        with open(os.path.join(self.keys_dir, "kids")) as f:
            self.kid = [k for k in f.read().split("\n") if k][-1]
        self.key_path = os.path.join(self.keys_dir, f"{self.kid}.pem")
        self.issuer = f"{self.url}/{TENANT}/v2.0"

    def stop(self):
        self.proc.stop()


def mint_tokens(ctx, entra, count, path, procs=2):
    """Mints `count` distinct valid tokens into path (split over `procs` processes)."""
    per = (count + procs - 1) // procs
    parts, running = [], []
    for i in range(procs):
        n = min(per, count - i * per)
        if n <= 0:
            break
        part = f"{path}.{i}"
        parts.append(part)
        running.append(subprocess.Popen([ctx.bench_mint, "--key", entra.key_path, "--kid", entra.kid,
                                         "--issuer", entra.issuer, "--tenant", TENANT, "--audience", AUDIENCE,
                                         "--count", str(n), "--first", str(i * per), "--out", part]))
    for p in running:
        if p.wait() != 0:
            raise BenchError("bench_mint failed")
    with open(path, "w") as out:
        for part in parts:
            with open(part) as f:
                out.write(f.read())
            os.unlink(part)
    return path


# ------------------------------------------------------------------------------------------ targets

class Target:
    """A proxy under test: a name, a plain port (and maybe a TLS port), and the pids to measure."""
    name = "?"
    port = None
    tls_port = None
    extra_headers = ()

    def pids(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def check(self, body=None, headers=None):
        """One request through the target: (status, body)."""
        h = dict(self.extra_headers)
        h.update(headers or {})
        return http_call(self.port, "POST", CHAT, body or CHAT_BODY, h)


class Direct(Target):
    """The upstream itself (streaming latency baseline): needs its api-key."""
    name = "direct"

    def __init__(self, upstream):
        self.up = upstream
        self.port = upstream.port
        self.extra_headers = (("api-key", API_KEY),)

    def pids(self):
        return [self.up.proc.pid]

    def stop(self):
        pass


class AoaiGuard(Target):
    name = "aoai-guard"

    def __init__(self, ctx, config, label="gw"):
        self.ctx = ctx
        self.config_path = os.path.join(ctx.tmp, f"{label}.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=1)
        pf = os.path.join(ctx.tmp, f"{label}.ports")
        if os.path.exists(pf):
            os.unlink(pf)
        self.proc = Proc(ctx, label, [ctx.ag_bin, "--config", self.config_path, "--port-file", pf],
                         env=ctx.gw_env)
        text = read_port_file(pf, self.proc)
        ports = {}
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == "listener":
                ports[int(parts[1])] = int(parts[2])
            elif parts and parts[0] == "admin":
                ports["admin"] = int(parts[1])
        self.port = ports[0]
        self.tls_port = ports.get(1)
        self.admin_port = ports.get("admin")
        if self.admin_port:
            def ready():
                if not self.proc.alive():
                    raise BenchError(f"aoai-guard exited: {self.proc.stderr()[-2000:]}")
                try:
                    return http_call(self.admin_port, "GET", "/readyz", timeout=2)[0] == 200
                except OSError:
                    return False
            wait_until(ready, 30, "aoai-guard /readyz")

    @staticmethod
    def check_config(ctx, config, label):
        """Runs --check-config: (True, "") or (False, the binary's message)."""
        path = os.path.join(ctx.tmp, f"{label}.check.json")
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
        r = subprocess.run([ctx.ag_bin, "--check-config", "--config", path], capture_output=True, text=True,
                           timeout=60)
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        return r.returncode == 0, (msg[-1] if msg else f"exit status {r.returncode}")

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        rc = self.proc.stop()
        err = self.proc.stderr()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in err:
                raise BenchError(f"aoai-guard sanitizer report:\n{err[-4000:]}")
        return rc


class ProcTarget(Target):
    """A baseline proxy run as our own child process (self.proc): up when it answers 200."""
    stop_signal = signal.SIGTERM

    def _up(self):
        if not self.proc.alive():
            raise BenchError(f"{self.name} exited: {self.proc.stderr()[-1500:]}")
        try:
            return self.check()[0] == 200
        except OSError:
            return False

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)

    def stop(self):
        return self.proc.stop(self.stop_signal)


class Nginx(ProcTarget):
    """nginx from Debian, own instance: generated config in a temp prefix, daemon off, pid/error log there."""
    name = "nginx"

    def __init__(self, ctx, upstream, workers, tls=None, label="nginx"):
        self.ctx = ctx
        self.prefix = os.path.join(ctx.tmp, label)
        os.makedirs(self.prefix, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        conf = os.path.join(self.prefix, "nginx.conf")
        tls_listen = ""
        if tls:
            tls_listen = (f"    listen 127.0.0.1:{self.tls_port} ssl reuseport;\n"
                          f"    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};\n"
                          "    ssl_protocols TLSv1.2 TLSv1.3;\n")
        p = self.prefix
        with open(conf, "w") as f:
            f.write(f"""# generated by tests/bench/bench.py
worker_processes {workers};
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {p}/client_body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  client_max_body_size 4m;
  client_body_buffer_size 64k;
  keepalive_requests 100000;
  keepalive_timeout 60s;
  upstream aoai {{
    server 127.0.0.1:{upstream.port};
    keepalive 64;
    keepalive_requests 100000;
  }}
  server {{
    listen 127.0.0.1:{self.port} reuseport;
{tls_listen}    location / {{
      proxy_pass http://aoai;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header api-key {API_KEY};
      proxy_buffering off;
    }}
  }}
}}
""")
        self.proc = Proc(ctx, label, [ctx.nginx, "-p", p + "/", "-c", conf, "-e", f"{p}/error.log"])
        wait_until(lambda: self._up(), 20, "nginx to answer")

    stop_signal = signal.SIGQUIT


class HAProxy(ProcTarget):
    """HAProxy from Debian, own instance in the foreground (-db), nbthread = workers."""
    name = "haproxy"

    def __init__(self, ctx, upstream, workers, label="haproxy"):
        d = os.path.join(ctx.tmp, label)
        os.makedirs(d, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(d, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""# generated by tests/bench/bench.py
global
  nbthread {workers}
  maxconn 4096
  pidfile {d}/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 120s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{self.port}
  default_backend be
backend be
  http-request set-header api-key {API_KEY}
  server up 127.0.0.1:{upstream.port}
""")
        self.proc = Proc(ctx, label, [ctx.haproxy, "-db", "-f", conf])
        wait_until(lambda: self._up(), 20, "haproxy to answer")

    stop_signal = signal.SIGUSR1


# ------------------------------------------------------------------------------------------ scenarios
# Each aoai-guard scenario is a config generator: ctx -> the JSON configuration.

def cfg_plain(ctx):
    """Pure proxy: no auth, no limits, no policy, no audit, no access log."""
    return {
        "workers": ctx.workers,
        "listeners": [{"address": "127.0.0.1", "port": 0}],
        "admin": {"address": "127.0.0.1", "port": 0},
        "limits": {"max_connections": 20000, "max_requests_per_connection": 100000000},
        "upstreams": [{"name": "bench", "url": ctx.upstream.url,
                       "auth": {"type": "api_key", "api_key": API_KEY}, "max_idle_connections": 64}],
        "log": {"level": "warn", "access_log": False},
    }


def default_policy():
    """The shipped rule set (conf/policy-enterprise.json: every detector, a regex and a keyword rule)
    plus the 50 regex rules of tests/bench/policy-regex-50.json."""
    with open(os.path.join(ROOT, "conf", "policy-enterprise.json")) as f:
        pol = json.load(f)["policy"]
    with open(REGEX_RULES) as f:
        pol["rules"] = pol["rules"] + json.load(f)["rules"]
    return pol


def cfg_full(ctx):
    """Entra token validation (the cached path with one token), one RPM+TPM policy that never rejects,
    the default policy rule set, audit to the file sink."""
    cfg = cfg_plain(ctx)
    cfg["auth"] = {
        "mode": "entra",
        "authority_host": ctx.entra.url if ctx.entra else "http://127.0.0.1:1",
        "tenants": [TENANT],
        "audiences": [AUDIENCE],
        "rules": [{"roles": ["AI.User"], "deployments": ["*"]}],
    }
    cfg["rate_limits"] = {
        "store": {"type": "memory"},
        "policies": [{"name": "bench-rpm-tpm", "key": ["tid", "oid"],
                      "requests_per_minute": 1000000000, "tokens_per_minute": 1000000000}],
    }
    cfg["policy"] = default_policy()
    cfg["audit"] = {"sinks": [{"type": "file", "path": os.path.join(ctx.tmp, "audit.jsonl")}],
                    "spool_dir": os.path.join(ctx.tmp, "spool")}
    return cfg


def cfg_cold(ctx):
    """As full, but every request carries another token: a pool of distinct tokens is cycled and the
    per-worker cache is far smaller than the pool, so every lookup misses (validation + insertion)."""
    cfg = cfg_full(ctx)
    cfg["auth"]["token_cache_size"] = ctx.cold_cache_size
    return cfg


def cfg_stream(ctx):
    return cfg_plain(ctx)


def cfg_conns(ctx, tls):
    cfg = cfg_plain(ctx)
    if tls:
        cfg["listeners"].append({"address": "127.0.0.1", "port": 0,
                                 "tls": {"cert_file": tls[0], "key_file": tls[1]}})
    return cfg


# ------------------------------------------------------------------------------------------ measurements

def write_body(ctx, name, body):
    path = os.path.join(ctx.tmp, name)
    with open(path, "w") as f:
        json.dump(body, f)
    return path


def run_wrk(ctx, target, duration, body_file, token=None, tokens_file=None, check=False, conns=None,
            threads=None, port=None):
    """One wrk run against target; returns the summary with req/s and the target's CPU time."""
    ctx.wrk_runs += 1
    out = os.path.join(ctx.tmp, f"wrk-{ctx.wrk_runs}.json")
    env = dict(os.environ, AG_BENCH_BODY=body_file, AG_BENCH_PATH=CHAT, AG_BENCH_OUT=out,
               AG_BENCH_CHECK="1" if check else "0", AG_BENCH_TOKEN=token or "", AG_BENCH_TOKENS=tokens_file or "")
    argv = [ctx.wrk, "-t", str(threads or ctx.threads), "-c", str(conns or ctx.connections), "-d", f"{max(1, int(round(duration)))}s",
            "--timeout", "10s", "-s", LUA]
    for k, v in target.extra_headers:
        argv += ["-H", f"{k}: {v}"]
    argv.append(f"http://127.0.0.1:{port or target.port}/")
    pids = target.pids()
    up = ctx.upstream_pids() if not isinstance(target, Direct) else []
    counter = SyscallCounter(ctx, pids) if ctx.perf and not check else None
    quiesce(pids + up)
    c0, u0, t0 = cpu_ticks(pids), cpu_ticks(up), time.monotonic()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    c1, u1 = cpu_ticks(pids), cpu_ticks(up)
    syscalls = counter.stop() if counter else None
    if r.returncode != 0 or not os.path.exists(out):
        raise BenchError(f"wrk failed ({r.returncode}): {r.stderr[-1500:]} {r.stdout[-1500:]}")
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
    res["cpu_s"] = (c1 - c0) / CLK_TCK
    res["wall_s"] = time.monotonic() - t0
    res["cpu_per_10k"] = res["cpu_s"] / res["requests"] * 1e4 if res["requests"] else None
    res["syscalls_per_req"] = syscalls / res["requests"] if syscalls is not None and res["requests"] else None
    res["upstream_busy"] = (u1 - u0) / CLK_TCK / res["wall_s"] if up and res["wall_s"] else None
    res["stderr"] = r.stderr.strip()[-600:]
    return res


class SyscallCounter:
    """Counts the system calls of some processes (all their threads) with `perf stat -e
    raw_syscalls:sys_enter`, from construction to stop(); None when perf cannot count them."""

    def __init__(self, ctx, pids):
        ctx.perf_runs = getattr(ctx, "perf_runs", 0) + 1
        self.out = os.path.join(ctx.tmp, f"perf-stat-{ctx.perf_runs}.txt")
        self.p = subprocess.Popen([ctx.perf, "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-p",
                                   ",".join(str(p) for p in pids), "-o", self.out],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        try:
            with open(self.out) as f:
                for line in f:
                    if "raw_syscalls:sys_enter" in line:
                        v = line.split(",")[0]
                        return int(v) if v.isdigit() else None
        except OSError:
            pass
        return None


def errors_of(res):
    e = res["errors"]
    return e["connect"] + e["read"] + e["write"] + e["status"] + e["timeout"] + res.get("non200", 0)


def median_of(runs, key, sub=None):
    vals = [(r[key][sub] if sub else r[key]) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs):
    return {
        "rounds": len(runs),
        "rps": median_of(runs, "rps"),
        "p50_us": median_of(runs, "latency_us", "p50"),
        "p99_us": median_of(runs, "latency_us", "p99"),
        "p999_us": median_of(runs, "latency_us", "p99.9"),
        "cpu_per_10k": median_of(runs, "cpu_per_10k"),
        "syscalls_per_req": median_of(runs, "syscalls_per_req"),
        "upstream_busy": median_of(runs, "upstream_busy"),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(errors_of(r) for r in runs),
        "rps_all": [round(r["rps"]) for r in runs],
    }


def throughput_rounds(ctx, targets, body_file, token=None, tokens_file=None, label=""):
    """Alternates the targets for ctx.rounds rounds (the order flips every round) after a short warm-up
    of each; returns {target name: summary}."""
    runs = {t.name: [] for t in targets}
    for t in targets:
        run_wrk(ctx, t, ctx.warmup, body_file, token=token, tokens_file=tokens_file)
    for rnd in range(ctx.rounds):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for t in order:
            res = run_wrk(ctx, t, ctx.duration, body_file, token=token, tokens_file=tokens_file)
            bad = errors_of(res)
            log(f"{label} round {rnd + 1}/{ctx.rounds} {t.name}: {res['rps']:.0f} req/s, p99 "
                f"{res['latency_us']['p99'] / 1000:.2f} ms, {res['cpu_per_10k']:.3f} CPU s/10k"
                + (f", {bad} ERRORS" if bad else ""))
            runs[t.name].append(res)
    return {name: summarise(r) for name, r in runs.items()}


def sse_latency(ctx, target, body_file, count, json_mode=False):
    argv = [ctx.sse_client, "--port", str(target.port), "--body-file", body_file, "--count", str(count),
            "--warmup", "20"]
    argv += ["--json"] if json_mode else ["--expect-chunks", str(STREAM_CHUNKS)]
    for k, v in target.extra_headers:
        argv += ["--header", f"{k}: {v}"]
    quiesce(target.pids() + ctx.upstream_pids())
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise BenchError(f"bench_sse against {target.name} failed: {r.stderr[-1500:]} {r.stdout[-500:]}")
    return json.loads(r.stdout)


def make_cert(ctx):
    crt, key = os.path.join(ctx.tmp, "tls.crt"), os.path.join(ctx.tmp, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    return crt, key


def idle_connections(ctx, target, port, tls, n):
    """Opens n keep-alive connections, one complete request on each, and measures the target's RSS
    growth while they sit idle. Returns a dict of measurements."""
    # warm-up on a few connections so pools and caches exist before the baseline
    for _ in range(20):
        st, _b = target.check()
        if st != 200:
            raise BenchError(f"{target.name}: warm-up request answered {st}")
    time.sleep(0)  # nothing to wait for: the baseline is read right away
    pids = target.pids()
    base_rss, base_fds = rss_kib(pids), fd_count(pids)
    argv = [sys.executable, IDLE_CONNS, "--port", str(port), "--count", str(n), "--path", CHAT,
            "--body", json.dumps(CHAT_BODY)]
    for k, v in target.extra_headers:
        argv += ["--header", f"{k}: {v}"]
    if tls:
        argv.append("--tls")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("ready"):
            raise BenchError(f"idle_conns against {target.name}: {line!r} {p.stderr.read()[-1500:]}")
        info = json.loads(line.split(" ", 1)[1])
        if info["ok"] != n:
            raise BenchError(f"idle_conns against {target.name}: only {info['ok']} of {n} requests answered 200")
        # RSS settles once every connection is idle; read it until two reads 200 ms apart agree within 1%
        prev = rss_kib(pids)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.2)
            cur = rss_kib(pids)
            if abs(cur - prev) <= prev * 0.01:
                break
            prev = cur
        rss, fds = rss_kib(pids), fd_count(pids)
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return {"connections": n, "base_rss_kib": base_rss, "rss_kib": rss, "fds_added": fds - base_fds,
            "kib_per_conn": (rss - base_rss) / n, "mib_per_10k": (rss - base_rss) / n * 10000 / 1024,
            "client_s": info.get("seconds")}


# ------------------------------------------------------------------------------------------ the run

class Ctx:
    upstream = None

    def upstream_pids(self):
        return [self.upstream.proc.pid] if self.upstream else []


def tool_version(argv, pattern):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        m = re.search(pattern, r.stdout + r.stderr)
        return m.group(1) if m else "?"
    except OSError:
        return "not installed"


def machine_info(ctx):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = ctx.build_label or "?"
    try:
        if ctx.build_label:
            raise OSError("label given")
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() or "?"
        r = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
        if r.stdout.strip():
            commit += " + uncommitted changes"
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "nginx": tool_version([ctx.nginx or "nginx", "-v"], r"nginx/(\S+)"),
        "haproxy": tool_version([ctx.haproxy or "haproxy", "-v"], r"version (\S+)"),
        "wrk": tool_version([ctx.wrk or "wrk", "-v"], r"wrk (\S+)"),
        "commit": commit,
        "load_at_start": load,
    }


def scenario_throughput(ctx, name, gen, token=None, tokens_file=None, body=None, baselines=("nginx",)):
    """Runs one wrk scenario: aoai-guard with gen(ctx) against the baselines; returns the result dict
    or {"unavailable": reason}."""
    cfg = gen(ctx)
    ok, msg = AoaiGuard.check_config(ctx, cfg, name)
    if not ok:
        log(f"{name}: not available in this build: {msg}")
        return {"unavailable": msg}
    gw = None
    targets = []
    try:
        gw = AoaiGuard(ctx, cfg, label=f"gw-{name}")
        hdrs = {"Authorization": f"Bearer {token}"} if token else None
        st, b = gw.check(body=body, headers=hdrs)
        if st != 200:
            log(f"{name}: aoai-guard answers {st}: {b[:300]!r}")
            return {"unavailable": f"aoai-guard answered {st} to the first request: {b[:200].decode('utf-8', 'replace')}"}
        targets.append(gw)
        for b_name in baselines:
            if b_name == "nginx" and ctx.nginx:
                targets.append(Nginx(ctx, ctx.upstream, ctx.workers, label=f"nginx-{name}"))
            elif b_name == "haproxy" and ctx.haproxy:
                targets.append(HAProxy(ctx, ctx.upstream, ctx.workers, label=f"haproxy-{name}"))
        body_file = write_body(ctx, f"body-{name}.json", body or CHAT_BODY)
        return throughput_rounds(ctx, targets, body_file, token=token, tokens_file=tokens_file, label=name)
    finally:
        for t in targets[1:]:
            t.stop()
        if gw:
            gw.stop()


def run_bench(ctx):
    results = {"machine": machine_info(ctx), "config": {
        "workers": ctx.workers, "rounds": ctx.rounds, "duration_s": ctx.duration, "warmup_s": ctx.warmup,
        "wrk_threads": ctx.threads, "wrk_connections": ctx.connections, "stream_chunks": STREAM_CHUNKS,
        "idle_connections": ctx.idle_conns, "cold_tokens": ctx.cold_tokens, "cold_cache_size": ctx.cold_cache_size,
        "sse_requests": ctx.sse_count}, "scenarios": {}, "notes": []}
    sc = results["scenarios"]
    ctx.upstream = Upstream(ctx)
    ctx.entra = None
    want = ctx.scenarios

    if "plain" in want:
        log("scenario plain: aoai-guard vs nginx vs haproxy")
        sc["plain"] = scenario_throughput(ctx, "plain", cfg_plain, baselines=("nginx", "haproxy"))

    if "full" in want or "cold" in want:
        try:
            ctx.entra = FakeEntra(ctx)
        except BenchError as e:
            results["notes"].append(f"fake_entra did not start: {e}")
    if "full" in want:
        log("scenario full: auth (cached token) + limits + policy + audit")
        if ctx.entra:
            tok = mint_tokens(ctx, ctx.entra, 1, os.path.join(ctx.tmp, "token-cached.txt"), procs=1)
            with open(tok) as f:
                token = f.read().strip()
            sc["full"] = scenario_throughput(ctx, "full", cfg_full, token=token, body=prompt_body(1024))
            sc["full16k"] = scenario_throughput(ctx, "full16k", cfg_full, token=token, body=prompt_body(16384))
            # The same pipeline with the answer streamed back: the audit keeps the streamed text and
            # the response policy reads (and holds back) every chunk.
            ctx.upstream.configure(chunks=STREAM_CHUNKS)
            try:
                sc["fullstream"] = scenario_throughput(ctx, "fullstream", cfg_full, token=token,
                                                       body=dict(prompt_body(1024), stream=True,
                                                                 stream_options={"include_usage": True}))
            finally:
                ctx.upstream.reset()
            sc["full_latency"] = full_latency(ctx, token)
        else:
            sc["full"] = {"unavailable": "fake_entra did not start"}
    if "cold" in want:
        log(f"scenario cold: minting {ctx.cold_tokens} tokens")
        if ctx.entra:
            ok, msg = AoaiGuard.check_config(ctx, cfg_cold(ctx), "cold")
            if not ok:
                sc["cold"] = {"unavailable": msg}
                log(f"cold: not available in this build: {msg}")
            else:
                tokens = mint_tokens(ctx, ctx.entra, ctx.cold_tokens, os.path.join(ctx.tmp, "tokens-cold.txt"))
                with open(tokens) as f:
                    first = f.readline().strip()
                sc["cold"] = scenario_throughput(ctx, "cold", cfg_cold, token=first, tokens_file=tokens)
        else:
            sc["cold"] = {"unavailable": "fake_entra did not start"}

    if "stream" in want:
        log(f"scenario stream: {STREAM_CHUNKS}-chunk SSE responses")
        ctx.upstream.configure(chunks=STREAM_CHUNKS)
        try:
            sc["stream"] = scenario_throughput(ctx, "stream", cfg_stream, body=STREAM_BODY)
            sc["stream_latency"] = stream_latency(ctx)
        finally:
            ctx.upstream.reset()

    if "conns" in want:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft - 500 < ctx.idle_conns:
            results["notes"].append(f"RLIMIT_NOFILE is {soft}: the connection scenario opened {soft - 500} "
                                    f"connections instead of {ctx.idle_conns} (MiB per 10k extrapolated)")
            ctx.idle_conns = max(100, soft - 500)
            results["config"]["idle_connections"] = ctx.idle_conns
        sc["conns"] = connections_scenario(ctx)

    if "stages" in want:
        log("micro-benchmarks of the stages")
        out = os.path.join(ctx.tmp, "stages.json")
        r = subprocess.run([ctx.bench_stages, "--ms", str(ctx.stage_ms), "--json", out], capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            results["notes"].append(f"bench_stages failed: {r.stderr[-800:]}")
        if os.path.exists(out):
            with open(out) as f:
                sc["stages"] = json.load(f)
            if "policy_4k" not in [c["name"] for c in sc["stages"]["cases"]]:
                results["notes"].append("policy_4k not measured: include/aoai_guard/policy.h absent at configure time")
    return results


def one_at_a_time(ctx, gw, label, body_file, json_mode):
    """bench_sse rounds, one request at a time, alternating direct / gw / nginx (order flipping every
    round); returns {target name: [bench_sse result per round]}. Stops gw (and nginx) at the end."""
    targets = [Direct(ctx.upstream), gw]
    ngx = None
    try:
        if ctx.nginx:
            ngx = Nginx(ctx, ctx.upstream, ctx.workers, label=f"nginx-{label}")
            targets.append(ngx)
        runs = {t.name: [] for t in targets}
        for rnd in range(ctx.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                runs[t.name].append(sse_latency(ctx, t, body_file, ctx.sse_count, json_mode=json_mode))
        return runs
    finally:
        if ngx:
            ngx.stop()
        gw.stop()


def median_of_rounds(rs, key, pct):
    return statistics.median(r[key][pct] for r in rs)


def stream_latency(ctx):
    body_file = write_body(ctx, "body-stream-latency.json", STREAM_BODY)
    runs = one_at_a_time(ctx, AoaiGuard(ctx, cfg_stream(ctx), label="gw-sse"), "sse", body_file, False)
    out = {}
    for name, rs in runs.items():
        out[name] = {"ttfb_p50_us": median_of_rounds(rs, "ttfb_us", "p50"),
                     "ttfb_p99_us": median_of_rounds(rs, "ttfb_us", "p99"),
                     "ttlb_p50_us": median_of_rounds(rs, "ttlb_us", "p50"),
                     "ttlb_p99_us": median_of_rounds(rs, "ttlb_us", "p99"),
                     "requests": sum(r["count"] for r in rs), "errors": sum(r["errors"] for r in rs)}
        log(f"stream latency {name}: TTFB p50 {out[name]['ttfb_p50_us']:.0f} us, "
            f"TTLB p50 {out[name]['ttlb_p50_us']:.0f} us")
    return out


def full_latency(ctx, token):
    """Added latency of the full scenario (1 KB prompt) over going to the upstream directly: one request
    at a time (no queueing), direct / aoai-guard full / nginx alternating, bench_sse --json."""
    if not ctx.sse_client:
        return None
    body_file = write_body(ctx, "body-full-latency.json", prompt_body(1024))
    gw = AoaiGuard(ctx, cfg_full(ctx), label="gw-full-latency")
    gw.extra_headers = (("Authorization", f"Bearer {token}"),)
    runs = one_at_a_time(ctx, gw, "full-latency", body_file, True)
    out = {}
    for name, rs in runs.items():
        out[name] = {"p50_us": median_of_rounds(rs, "ttlb_us", "p50"),
                     "p90_us": median_of_rounds(rs, "ttlb_us", "p90"),
                     "p99_us": median_of_rounds(rs, "ttlb_us", "p99"),
                     "requests": sum(r["count"] for r in rs), "errors": sum(r["errors"] for r in rs)}
        log(f"full latency {name}: p50 {out[name]['p50_us']:.0f} us, p99 {out[name]['p99_us']:.0f} us")
    return out


def connections_scenario(ctx):
    log(f"scenario conns: RSS per {ctx.idle_conns} idle keep-alive connections")
    crt, key = make_cert(ctx)
    out = {}
    combos = [("aoai-guard", False), ("aoai-guard", True)]
    if ctx.nginx:
        combos += [("nginx", False), ("nginx", True)]
    for name, tls in combos:
        label = f"{name}-{'tls' if tls else 'plain'}"
        if name == "aoai-guard":
            cfg = cfg_conns(ctx, (crt, key) if tls else None)
            ok, msg = AoaiGuard.check_config(ctx, cfg, f"conns-{label}")
            if not ok:
                out[label] = {"unavailable": msg}
                continue
            t = AoaiGuard(ctx, cfg, label=f"gw-{label}")
        else:
            t = Nginx(ctx, ctx.upstream, ctx.workers, tls=(crt, key) if tls else None, label=f"nginx-{label}")
        try:
            port = t.tls_port if tls else t.port
            out[label] = idle_connections(ctx, t, port, tls, ctx.idle_conns)
            log(f"conns {label}: {out[label]['kib_per_conn']:.1f} KiB per connection "
                f"({out[label]['fds_added']} descriptors added)")
        except BenchError as e:
            out[label] = {"unavailable": str(e)}
            log(f"conns {label}: {e}")
        finally:
            t.stop()
    return out


# ------------------------------------------------------------------------------------------ report

def fmt(v, spec=".0f", unit=""):
    return "—" if v is None else f"{format(v, spec)}{unit}"


def ratio(a, b):
    return None if a is None or not b else a / b


def write_results(ctx, res, path):
    m, cfg, sc = res["machine"], res["config"], res["scenarios"]
    L = []
    L.append("# aoai-guard benchmark results")
    L.append("")
    L.append(f"Generated by `scripts/bench.sh` on {m['date']} from commit {m['commit']} "
             f"(Release build). Do not edit by hand: run the bench again.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| CPUs (nproc) | {m['nproc']} |")
    L.append(f"| CPU model | {m['cpu']} |")
    L.append(f"| kernel | {m['kernel']} |")
    L.append(f"| nginx | {m['nginx']} (Debian) |")
    L.append(f"| HAProxy | {m['haproxy']} (Debian) |")
    L.append(f"| wrk | {m['wrk']} (Debian) |")
    L.append(f"| load average at start | {m['load_at_start']} (the machine is shared: see *Caveats*) |")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(f"Everything runs on this machine over loopback: the upstream is `tests/fakes/fake_aoai --no-record` "
             f"(one thread), the client is `wrk -t{cfg['wrk_threads']} -c{cfg['wrk_connections']}` with "
             f"`tests/bench/wrk_post.lua` (POST of a 190-byte chat body; 1 KB and 16 KB prompts in the full scenarios), and every proxy runs "
             f"{cfg['workers']} workers (aoai-guard `workers`, nginx `worker_processes`, HAProxy `nbthread`). "
             f"nginx is a plain keep-alive `proxy_pass` (upstream `keepalive 64`, HTTP/1.1, `Connection \"\"`, "
             f"`proxy_buffering off`, no access log); HAProxy is `http-reuse always`; aoai-guard has no access log. "
             f"Each scenario runs {cfg['rounds']} rounds of {cfg['duration_s']} s per proxy after a "
             f"{cfg['warmup_s']} s warm-up, alternating the proxies (the order flips every round); the tables "
             f"show the median of the rounds. CPU is utime+stime of the proxy's processes (all threads; nginx "
             f"master + workers) from `/proc/<pid>/stat`, before and after each run. Latency percentiles come "
             f"from wrk's histogram (p99.9 from the Lua `done()` hook). *Syscalls per req* counts every system "
             f"call of the proxy's threads (`perf stat -e raw_syscalls:sys_enter`, client and upstream sides "
             f"together) over the requests; "
             f"*upstream busy* is the one-threaded fake upstream's CPU time over the run's wall time (near "
             f"100%: the upstream, not the proxy, bounds req/s). Ratios are aoai-guard / nginx: above "
             f"1 is better for req/s, below 1 is better for latency and CPU.")
    L.append("")
    L.append("## Throughput, latency and CPU")
    L.append("")
    L.append("| scenario | proxy | req/s | p50 ms | p99 ms | p99.9 ms | CPU s per 10k req | syscalls per req | upstream busy | errors |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = [("plain", "1. plain (pure proxy)"), ("full", "2. full, 1 KB prompt (auth cached + limits + policy + audit)"),
             ("full16k", "2b. full, 16 KB prompt"),
             ("fullstream", f"2c. full, 1 KB prompt, answer streamed ({STREAM_CHUNKS} chunks)"),
             ("cold", "3. cold tokens (a new token per request)"), ("stream", f"4. streaming ({STREAM_CHUNKS}-chunk SSE)")]
    ratios = []
    for key, title in names:
        s = sc.get(key)
        if s is None:
            continue
        if "unavailable" in s:
            L.append(f"| {title} | aoai-guard | not available in this build: {s['unavailable']} | | | | | | | |")
            continue
        for proxy in ("aoai-guard", "nginx", "haproxy"):
            r = s.get(proxy)
            if not r:
                continue
            busy = r.get("upstream_busy")
            L.append(f"| {title} | {proxy} | {fmt(r['rps'])} | {fmt(r['p50_us'] / 1000, '.2f')} | "
                     f"{fmt(r['p99_us'] / 1000, '.2f')} | {fmt(r['p999_us'] / 1000, '.2f')} | "
                     f"{fmt(r['cpu_per_10k'], '.3f')} | {fmt(r.get('syscalls_per_req'), '.1f')} | "
                     f"{fmt(busy * 100 if busy is not None else None, '.0f', '%')} | {r['errors']} |")
        g, n = s.get("aoai-guard"), s.get("nginx")
        if g and n:
            ratios.append((title, ratio(g["rps"], n["rps"]), ratio(g["p99_us"], n["p99_us"]),
                           ratio(g["p999_us"], n["p999_us"]), ratio(g["cpu_per_10k"], n["cpu_per_10k"])))
    L.append("")
    if ratios:
        L.append("Ratios aoai-guard / nginx (in `full` and `cold` nginx still does none of that work: the "
                 "ratio is the price of the guard over a plain proxy):")
        L.append("")
        L.append("| scenario | req/s | p99 | p99.9 | CPU per request |")
        L.append("|---|---:|---:|---:|---:|")
        for title, a, b, c, d in ratios:
            L.append(f"| {title} | {fmt(a, '.2f')}× | {fmt(b, '.2f')}× | {fmt(c, '.2f')}× | {fmt(d, '.2f')}× |")
        L.append("")
    p = sc.get("plain", {})
    if p.get("aoai-guard") and p.get("haproxy"):
        L.append(f"HAProxy as a second baseline (plain): aoai-guard / HAProxy req/s "
                 f"{fmt(ratio(p['aoai-guard']['rps'], p['haproxy']['rps']), '.2f')}×, CPU per request "
                 f"{fmt(ratio(p['aoai-guard']['cpu_per_10k'], p['haproxy']['cpu_per_10k']), '.2f')}×.")
        L.append("")
    for key in ("plain", "full", "full16k", "fullstream", "cold", "stream"):
        s = sc.get(key)
        if s and "aoai-guard" in s:
            L.append(f"- {key}: req/s per round — " + "; ".join(
                f"{proxy} {s[proxy]['rps_all']}" for proxy in ("aoai-guard", "nginx", "haproxy") if proxy in s))
    cold = sc.get("cold", {})
    if "aoai-guard" in cold:
        L.append("")
        L.append(f"Cold tokens: {cfg['cold_tokens']} distinct valid tokens (same identity, distinct `uti`) are "
                 f"cycled by every wrk thread and `auth.token_cache_size` is {cfg['cold_cache_size']} per worker, "
                 f"so a token comes back only after far more distinct tokens than the cache holds: every request "
                 f"pays the full validation (strict JSON, claims, RS256) plus a cache insertion."
                 )
    L.append("")
    lat = sc.get("stream_latency")
    if lat:
        d = lat.get("direct")
        L.append(f"## Streaming: added time to first and last byte ({STREAM_CHUNKS}-chunk SSE)")
        L.append("")
        L.append(f"`tests/bench/bench_sse`: one request at a time on one keep-alive connection, "
                 f"{cfg['sse_requests']} requests per round after 20 warm-up requests, {cfg['rounds']} rounds "
                 f"alternating direct / aoai-guard / nginx; medians over rounds of the per-round percentiles. "
                 f"TTFB is from writing the request to the first response byte, TTLB to the last byte of the "
                 f"terminating chunk.")
        L.append("")
        L.append("| path | TTFB p50 µs | TTFB p99 µs | TTLB p50 µs | TTLB p99 µs | added TTFB p50 µs | added TTLB p50 µs |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for name in ("direct", "aoai-guard", "nginx"):
            r = lat.get(name)
            if not r:
                continue
            add_f = r["ttfb_p50_us"] - d["ttfb_p50_us"] if d and name != "direct" else None
            add_l = r["ttlb_p50_us"] - d["ttlb_p50_us"] if d and name != "direct" else None
            L.append(f"| {name} | {fmt(r['ttfb_p50_us'])} | {fmt(r['ttfb_p99_us'])} | {fmt(r['ttlb_p50_us'])} | "
                     f"{fmt(r['ttlb_p99_us'])} | {fmt(add_f)} | {fmt(add_l)} |")
        L.append("")
    flat = sc.get("full_latency")
    if flat and flat.get("direct"):
        d = flat["direct"]
        L.append("## Full scenario: added latency over the upstream alone (1 KB prompt)")
        L.append("")
        L.append(f"`tests/bench/bench_sse --json`: one request at a time on one keep-alive connection (no "
                 f"queueing), {cfg['sse_requests']} requests per round after 20 warm-up requests, {cfg['rounds']} "
                 f"rounds alternating direct / aoai-guard (full: Entra token, limits, the 68-rule policy, audit "
                 f"to a file) / nginx (plain proxy); time from writing the request to the last byte of the "
                 f"response, medians over rounds of the per-round percentiles.")
        L.append("")
        L.append("| path | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for name in ("direct", "aoai-guard", "nginx"):
            r = flat.get(name)
            if not r:
                continue
            a50 = r["p50_us"] - d["p50_us"] if name != "direct" else None
            a99 = r["p99_us"] - d["p99_us"] if name != "direct" else None
            L.append(f"| {name} | {fmt(r['p50_us'])} | {fmt(r['p90_us'])} | {fmt(r['p99_us'])} | {fmt(a50)} | "
                     f"{fmt(a99)} |")
        L.append("")
    conns = sc.get("conns")
    if conns:
        L.append(f"## Memory per idle keep-alive connection ({cfg['idle_connections']} connections)")
        L.append("")
        L.append("`tests/bench/idle_conns.py` opens the connections (TLS: ECDSA P-256 certificate made with "
                 "openssl at bench time, full handshakes), completes one chat request on each, and keeps them "
                 "idle; VmRSS of the proxy (nginx: master + workers) is read before and after.")
        L.append("")
        L.append("| proxy | listener | RSS before KiB | RSS with connections KiB | KiB per connection | MiB per 10k | descriptors added |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for label, r in conns.items():
            proxy, lst = label.rsplit("-", 1)
            if "unavailable" in r:
                L.append(f"| {proxy} | {lst} | not available: {r['unavailable'][:200]} | | | | |")
                continue
            L.append(f"| {proxy} | {lst} | {r['base_rss_kib']} | {r['rss_kib']} | {fmt(r['kib_per_conn'], '.1f')} | "
                     f"{fmt(r['mib_per_10k'], '.1f')} | {r['fds_added']} |")
        L.append("")
    st = sc.get("stages")
    if st:
        L.append("## Stage micro-benchmarks (`tests/bench/bench_stages.c`)")
        L.append("")
        L.append(f"Thread CPU time, batches for {st['budget_ms']:.0f} ms of CPU per case; median and best batch.")
        L.append("")
        L.append("| stage | median ns/op | best ns/op | what |")
        L.append("|---|---:|---:|---|")
        for c in st["cases"]:
            L.append(f"| {c['name']} | {fmt(c['median_ns'])} | {fmt(c['best_ns'])} | {c['what']} |")
        L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    pg, pn = p.get("aoai-guard"), p.get("nginx")
    if pg and pn:
        r1 = ratio(pg["rps"], pn["rps"])
        L.append(f"| plain throughput ≥ 1.0× nginx | {fmt(r1, '.2f')}× | {'yes' if r1 and r1 >= 1.0 else 'no'} |")
        L.append(f"| plain p99 ≤ nginx p99 | {fmt(pg['p99_us'] / 1000, '.2f')} ms vs {fmt(pn['p99_us'] / 1000, '.2f')} ms | "
                 f"{'yes' if pg['p99_us'] <= pn['p99_us'] else 'no'} |")
    fg, fn = sc.get("full", {}).get("aoai-guard"), sc.get("full", {}).get("nginx")
    if fg and fn:
        r2 = ratio(fg["rps"], fn["rps"])
        L.append(f"| full (1 KB prompt) throughput ≥ 0.8× nginx plain | {fmt(r2, '.2f')}× | "
                 f"{'yes' if r2 and r2 >= 0.8 else 'no'} |")
    if flat and flat.get("direct") and flat.get("aoai-guard"):
        a99 = flat["aoai-guard"]["p99_us"] - flat["direct"]["p99_us"]
        L.append(f"| full (1 KB prompt) p99 added latency over direct ≤ 1 ms | {a99:.0f} µs | "
                 f"{'yes' if a99 <= 1000 else 'no'} |")
    if lat and lat.get("direct") and lat.get("aoai-guard"):
        add = lat["aoai-guard"]["ttfb_p50_us"] - lat["direct"]["ttfb_p50_us"]
        L.append(f"| streaming added first-byte latency ≤ 200 µs median | {add:.0f} µs | {'yes' if add <= 200 else 'no'} |")
    if conns and "aoai-guard-plain" in conns and "kib_per_conn" in conns["aoai-guard-plain"]:
        k = conns["aoai-guard-plain"]["kib_per_conn"]
        L.append(f"| ≤ 16 KiB RSS per idle plain keep-alive connection | {k:.1f} KiB | {'yes' if k <= 16 else 'no'} |")
    L.append("")
    L.append("Where aoai-guard's time and memory go, and what to change: [PROFILE.md](PROFILE.md).")
    L.append("")
    L.append("## Caveats")
    L.append("")
    L.append("- Client, upstream and proxy share the same 2 cores, so req/s is what a proxy achieves while "
             "competing with them; CPU seconds per 10k requests is the steadier measure of a proxy's cost.")
    L.append("- The machine is shared with other work (see the load average above); alternating rounds and "
             "medians damp that, the per-round numbers above show how much remains.")
    for n in res["notes"]:
        L.append(f"- {n}")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def print_summary(path):
    """Prints the headline tables of the results file on stdout: the throughput table, the ratios
    and the targets (the rest is in the file)."""
    with open(path) as f:
        lines = f.read().splitlines()
    out, keep = [], False
    for line in lines:
        if line.startswith("## "):
            keep = line.startswith("## Throughput") or line.startswith("## Targets")
            if keep:
                out.append("")
        if keep and (line.startswith("|") or line.startswith("## ") or line.startswith("Ratios")):
            out.append(line)
    print("\n".join(out).strip())
    print(f"\nEverything else (streaming and added latency, memory, stages, method): {path}")


# ------------------------------------------------------------------------------------------ smoke

def python_load(port, duration, threads=8):
    """Fallback client without wrk: keep-alive POSTs from `threads` threads; returns (ok, bad, errors)."""
    body = json.dumps(CHAT_BODY).encode()
    stop = time.monotonic() + duration
    counts = {"ok": 0, "bad": 0, "err": 0}
    lock = threading.Lock()
    first_bad = []

    def worker():
        ok = bad = err = 0
        c = None
        while time.monotonic() < stop:
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("POST", CHAT, body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status == 200:
                    ok += 1
                else:
                    bad += 1
                    if not first_bad:
                        first_bad.append(f"{r.status} {data[:200]!r}")
                if r.getheader("connection", "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, http.client.HTTPException) as e:
                err += 1
                if not first_bad:
                    first_bad.append(repr(e))
                if c:
                    c.close()
                c = None
        if c:
            c.close()
        with lock:
            counts["ok"] += ok
            counts["bad"] += bad
            counts["err"] += err

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts, first_bad


def run_smoke(ctx):
    """bench.smoke: the plain scenario against aoai-guard (and nginx when installed); correctness only."""
    failures = []
    ctx.upstream = Upstream(ctx)
    gw = AoaiGuard(ctx, cfg_plain(ctx), label="gw-smoke")
    try:
        st, b = gw.check()
        if st != 200:
            raise BenchError(f"first request answered {st}: {b[:300]!r}")
        if ctx.wrk:
            res = run_wrk(ctx, gw, ctx.duration, write_body(ctx, "body.json", CHAT_BODY), check=True,
                          conns=16, threads=1)
            log(f"smoke aoai-guard (wrk): {res['requests']} requests, {res['rps']:.0f} req/s, errors "
                f"{res['errors']}, non-200 {res['non200']}")
            if res["requests"] == 0 or errors_of(res):
                failures.append(f"aoai-guard: {res['requests']} requests, errors {res['errors']}, non-200 "
                                f"{res['non200']}: {res['stderr']}")
        else:
            counts, first_bad = python_load(gw.port, ctx.duration)
            log(f"smoke aoai-guard (python client, wrk not installed): {counts}")
            if counts["ok"] == 0 or counts["bad"] or counts["err"]:
                failures.append(f"aoai-guard: {counts} first problem: {first_bad}")
        if ctx.sse_client:
            ctx.upstream.configure(chunks=STREAM_CHUNKS)
            try:
                r = sse_latency(ctx, gw, write_body(ctx, "body-stream.json", STREAM_BODY), 30)
                log(f"smoke aoai-guard streaming: {r['count']} complete {STREAM_CHUNKS}-chunk streams")
                if r["count"] != 30 or r["errors"]:
                    failures.append(f"streaming: {r}")
            except BenchError as e:
                failures.append(str(e))
            finally:
                ctx.upstream.reset()
        if ctx.nginx and ctx.wrk:
            ngx = Nginx(ctx, ctx.upstream, ctx.workers, label="nginx-smoke")
            try:
                res = run_wrk(ctx, ngx, 3, write_body(ctx, "body.json", CHAT_BODY), check=True, conns=16, threads=1)
                log(f"smoke nginx: {res['requests']} requests, errors {res['errors']}, non-200 {res['non200']}")
                if res["requests"] == 0 or errors_of(res):
                    failures.append(f"nginx: {res}")
            finally:
                ngx.stop()
        else:
            log("smoke: nginx part skipped (nginx or wrk not installed)")
    finally:
        rc = gw.stop()
        if rc != 0:
            failures.append(f"aoai-guard exit status {rc}: {gw.proc.stderr()[-1500:]}")
    if failures:
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        print("bench smoke: 0 passed, 1 failed")
        return 1
    print("bench smoke: 1 passed, 0 failed")
    return 0


# ------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", help="a build with aoai-guard, fake_aoai, fake_entra, bench_* (Release)")
    ap.add_argument("--ag-bin")
    ap.add_argument("--fake-aoai")
    ap.add_argument("--sse-client")
    ap.add_argument("--smoke", action="store_true", help="correctness only (CTest bench.smoke)")
    ap.add_argument("--python-client", action="store_true", help="smoke: use the python client even if wrk exists")
    ap.add_argument("--scenarios", default="plain,full,cold,stream,conns,stages")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8, help="seconds per wrk run")
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--cold-tokens", type=int, default=5000)
    ap.add_argument("--cold-cache-size", type=int, default=100)
    ap.add_argument("--sse-count", type=int, default=300)
    ap.add_argument("--stage-ms", type=int, default=300)
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    ap.add_argument("--from-json", help="only re-render --results from the raw JSON of an earlier run")
    ap.add_argument("--no-syscalls", action="store_true", help="do not count system calls with perf stat")
    ap.add_argument("--gw-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for aoai-guard only (experiments: MALLOC_ARENA_MAX=2, LD_PRELOAD=...)")
    ap.add_argument("--build-label", help="what was built, for RESULTS.md (default: git commit of this tree)")
    a = ap.parse_args()

    ctx = Ctx()
    if a.from_json:
        with open(a.from_json) as f:
            write_results(ctx, json.load(f), a.results)
        return 0
    b = a.build_dir
    ctx.ag_bin = a.ag_bin or (b and os.path.join(b, "aoai-guard"))
    ctx.fake_aoai = a.fake_aoai or (b and os.path.join(b, "tests", "fakes", "fake_aoai"))
    ctx.fake_entra = b and os.path.join(b, "tests", "fakes", "fake_entra")
    ctx.bench_mint = b and os.path.join(b, "tests", "bench_mint")
    ctx.bench_stages = b and os.path.join(b, "tests", "bench_stages")
    ctx.sse_client = a.sse_client or (b and os.path.join(b, "tests", "bench_sse"))
    if not ctx.ag_bin or not ctx.fake_aoai:
        ap.error("give --build-dir, or --ag-bin and --fake-aoai")
    ctx.wrk = None if a.python_client else shutil.which("wrk")
    ctx.perf = None if a.no_syscalls else shutil.which("perf")
    ctx.nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx") or None
    ctx.haproxy = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy") or None
    ctx.workers, ctx.rounds, ctx.duration, ctx.warmup = a.workers, a.rounds, a.duration, a.warmup
    ctx.threads, ctx.connections, ctx.idle_conns = a.threads, a.connections, a.idle_conns
    ctx.cold_tokens, ctx.cold_cache_size, ctx.sse_count, ctx.stage_ms = (a.cold_tokens, a.cold_cache_size,
                                                                         a.sse_count, a.stage_ms)
    ctx.scenarios = set(a.scenarios.split(","))
    ctx.build_label = a.build_label
    ctx.gw_env = dict(kv.split("=", 1) for kv in a.gw_env)
    ctx.wrk_runs = 0
    ctx.tmp = tempfile.mkdtemp(prefix="aoai-guard-bench-")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    rc = 1
    try:
        if a.smoke:
            rc = run_smoke(ctx)
        else:
            if not ctx.wrk:
                raise BenchError("wrk is not installed: run scripts/install-deps.sh --bench")
            for p in (ctx.ag_bin, ctx.fake_aoai, ctx.fake_entra, ctx.bench_mint, ctx.bench_stages, ctx.sse_client):
                if not p or not os.path.exists(p):
                    raise BenchError(f"missing binary {p}: build the bench targets first (scripts/bench.sh)")
            res = run_bench(ctx)
            write_results(ctx, res, a.results)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
            log(f"results written to {a.results}")
            print_summary(a.results)
            bad = [k for k, s in res["scenarios"].items() if isinstance(s, dict)
                   and any(isinstance(v, dict) and v.get("errors") for v in s.values())]
            if bad:
                log(f"errors (non-200 or socket errors) in: {', '.join(bad)}")
            rc = 1 if bad else 0
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        rc = 130
    finally:
        Proc.stop_all()
        if a.keep or rc not in (0,):
            log(f"run directory kept: {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
