#!/usr/bin/env python3
"""Checks the fake Azure OpenAI server (tests/fakes/fake_aoai) end to end over loopback.

usage: test_fake_aoai.py PATH/TO/fake_aoai

Starts the binary with --port 0 --port-file, then drives it with http.client and raw sockets.
Every check compares exact values; the script exits 1 when any check fails."""

import base64
import errno
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

FAILURES = []
CHECKS = 0


def check(cond, what):
    global CHECKS
    CHECKS += 1
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)


def check_eq(got, want, what):
    check(got == want, "%s: got %r, want %r" % (what, got, want))


class Fake:
    """One fake_aoai process on an ephemeral port."""

    def __init__(self, binary, *args):
        self.dir = tempfile.TemporaryDirectory(prefix="fake_aoai_test_")
        port_file = os.path.join(self.dir.name, "port")
        self.proc = subprocess.Popen([binary, "--port", "0", "--port-file", port_file, *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        self.port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("fake_aoai exited early: %s" % self.proc.stderr.read().decode())
            try:
                with open(port_file) as f:
                    text = f.read()
                if text.endswith("\n"):
                    self.port = int(text)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("fake_aoai did not write its port file within 10 s")

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None):
        """Returns (status, headers dict with lower-case names, raw body bytes)."""
        own = conn is None
        c = conn or self.conn()
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        h = {k.lower(): v for k, v in r.getheaders()}
        if own:
            c.close()
        return r.status, h, data

    def post(self, path, body, headers=None, conn=None):
        return self.request("POST", path, body, headers, conn)

    def config(self, cfg):
        return self.request("POST", "/_fake/config", cfg)

    def reset(self):
        self.request("DELETE", "/_fake/config")
        self.request("DELETE", "/_fake/requests")

    def stats(self):
        return json.loads(self.request("GET", "/_fake/stats")[2])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = "timeout"
        else:
            rc = self.proc.returncode
        self.proc.stderr.close()
        self.dir.cleanup()
        return rc


CHAT = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
COMPLETIONS = "/openai/deployments/instruct/completions?api-version=2024-10-21"
EMBED = "/openai/deployments/emb/embeddings?api-version=2024-10-21"
RESPONSES = "/openai/responses?api-version=2025-04-01-preview"


def safe_filter():
    return {"filtered": False, "severity": "safe"}


OUTPUT_FILTER = {"hate": safe_filter(), "self_harm": safe_filter(), "sexual": safe_filter(),
                 "violence": safe_filter()}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    "hate": safe_filter(), "jailbreak": {"filtered": False, "detected": False},
    "self_harm": safe_filter(), "sexual": safe_filter(), "violence": safe_filter()}}]


def sse_events(data):
    """Splits an SSE body into (event-name or None, data string) tuples."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name, payload = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                payload = line[6:]
        out.append((name, payload))
    return out


def dechunk(raw):
    """Decodes as much of an HTTP/1.1 chunked body as is complete; returns (bytes, finished)."""
    out = b""
    while True:
        nl = raw.find(b"\r\n")
        if nl < 0:
            return out, False
        size = int(raw[:nl], 16)
        if size == 0:
            return out, True
        if len(raw) < nl + 2 + size + 2:
            return out, False
        out += raw[nl + 2:nl + 2 + size]
        raw = raw[nl + 2 + size + 2:]


def raw_exchange(port, payload, timeout=5.0, until=None):
    """Sends payload on a fresh socket and reads until EOF, error, timeout or until(data) is true.
    Returns (data, outcome) with outcome one of 'eof', 'reset', 'timeout', 'until'."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(payload)
    data = b""
    outcome = None
    try:
        while True:
            if until and until(data):
                outcome = "until"
                break
            chunk = s.recv(65536)
            if not chunk:
                outcome = "eof"
                break
            data += chunk
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    finally:
        s.close()
    return data, outcome


def http_req(method, path, body, extra=""):
    body_b = body.encode() if isinstance(body, str) else body
    return ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
            "Content-Length: %d\r\n\r\n" % (method, path, extra, len(body_b))).encode() + body_b


# ---------------------------------------------------------------------------------------------

def test_chat_json(f):
    f.reset()
    st, h, body = f.post(CHAT, {"messages": [{"role": "system", "content": "be nice"},
                                             {"role": "user", "content": "hello world"}]},
                         headers={"x-request-id": "req-123"})
    check_eq(st, 200, "chat status")
    check_eq(h.get("content-type"), "application/json", "chat content-type")
    check_eq(h.get("x-request-id"), "req-123", "x-request-id echoed")
    check_eq(len(h.get("apim-request-id", "")), 36, "apim-request-id is a UUID")
    check_eq(h.get("x-ms-region"), "East US", "x-ms-region")
    check(h.get("x-ratelimit-remaining-requests", "").isdigit(), "x-ratelimit-remaining-requests numeric")
    check(h.get("x-ratelimit-remaining-tokens", "").isdigit(), "x-ratelimit-remaining-tokens numeric")
    check_eq(h.get("x-fake-name"), "up1", "x-fake-name")
    check_eq(h.get("content-length"), str(len(body)), "content-length matches")
    j = json.loads(body)
    check_eq(sorted(j.keys()), ["choices", "created", "id", "model", "object", "prompt_filter_results",
                                "system_fingerprint", "usage"], "chat top-level keys")
    check(j["id"].startswith("chatcmpl-"), "chat id prefix")
    check_eq(j["object"], "chat.completion", "chat object")
    check_eq(j["model"], "gpt-4o-mini-2024-07-18", "chat model")
    check(isinstance(j["created"], int) and j["created"] > 1600000000, "chat created")
    check_eq(j["choices"], [{"content_filter_results": OUTPUT_FILTER, "finish_reason": "stop", "index": 0,
                             "logprobs": None, "message": {"content": "Echo: hello world",
                                                           "refusal": None, "role": "assistant"}}],
             "chat choices")
    check_eq(j["prompt_filter_results"], PROMPT_FILTER, "chat prompt_filter_results")
    # "be nice" + "hello world" = 18 bytes -> 5 tokens; "Echo: hello world" = 17 bytes -> 5 tokens
    check_eq(j["usage"], {"completion_tokens": 5, "completion_tokens_details": {
        "accepted_prediction_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0,
        "rejected_prediction_tokens": 0}, "prompt_tokens": 5, "prompt_tokens_details": {
        "audio_tokens": 0, "cached_tokens": 0}, "total_tokens": 10}, "chat usage")

    # text parts are concatenated; fixed reply text and fixed created make the body reproducible
    f.config({"reply_text": "fixed answer", "created": 1700000000})
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"},
                                                        {"type": "image_url", "image_url": {"url": "data:x"}},
                                                        {"type": "text", "text": "cd"}]}]}
    st, _, b1 = f.post(CHAT, parts)
    j = json.loads(b1)
    check_eq(j["choices"][0]["message"]["content"], "fixed answer", "reply_text")
    check_eq(j["created"], 1700000000, "fixed created")
    check_eq((j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]), (1, 3), "tokens of parts")
    f.config({"reply_text": None})  # null leaves the value as is
    st, _, b2 = f.post(CHAT, parts)
    check_eq(json.loads(b2)["choices"][0]["message"]["content"], "fixed answer", "null keeps reply_text")
    f.reset()
    st, _, b3 = f.post(CHAT, parts)
    check_eq(json.loads(b3)["choices"][0]["message"]["content"], "Echo: abcd", "echo of text parts")

    # v1 path takes the deployment from "model" and needs no api-version
    st, _, body = f.post("/openai/v1/chat/completions", {"model": "gpt-4o-mini",
                                                          "messages": [{"role": "user", "content": "x"}]})
    check_eq((st, json.loads(body)["choices"][0]["message"]["content"]), (200, "Echo: x"), "v1 chat")
    st, _, body = f.post("/openai/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    check_eq((st, json.loads(body)["error"]["code"]), (400, "missing_required_parameter"), "v1 chat needs model")


def test_errors(f):
    f.reset()
    st, h, body = f.post("/openai/deployments/gpt/chat/completions", {"messages": []})
    check_eq((st, json.loads(body)), (400, {"error": {"code": "MissingApiVersionParameter", "message":
             "The api-version query parameter (?api-version=) is required for all requests."}}),
             "missing api-version")
    st, _, body = f.post("/openai/deployments/gpt/chat/completions?api-version=banana",
                         {"messages": [{"role": "user", "content": "x"}]})
    check_eq((st, json.loads(body)["error"]["code"]), (400, "BadRequest"), "bad api-version")
    st, _, body = f.post("/openai/deployments/gpt/chat/nope?api-version=2024-10-21", {})
    check_eq((st, json.loads(body)), (404, {"error": {"code": "404", "message": "Resource not found"}}),
             "unknown path")
    st, _, body = f.post(CHAT, "{not json")
    j = json.loads(body)
    check_eq((st, j["error"]["code"], j["error"]["type"]), (400, "invalid_json", "invalid_request_error"), "bad JSON")
    st, _, body = f.post(CHAT, '{"messages":[{"role":"user","content":"a"}],"messages":[]}')
    check_eq((st, json.loads(body)["error"]["code"]), (400, "invalid_json"), "duplicate key is bad JSON")
    st, _, body = f.post(CHAT, {"temperature": 1})
    check_eq((st, json.loads(body)["error"]), (400, {"code": "missing_required_parameter", "message":
             "Missing required parameter: 'messages'.", "param": "messages", "type": "invalid_request_error"}),
             "missing messages")
    st, _, body = f.post(CHAT, {"messages": [{"role": "wizard", "content": "x"}]})
    check_eq((st, json.loads(body)["error"]["param"]), (400, "messages[0].role"), "bad role")
    st, _, body = f.post(CHAT, {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}})
    check_eq((st, json.loads(body)["error"]["param"]), (400, "stream_options"), "stream_options without stream")
    st, _, body = f.request("GET", CHAT)
    check_eq(st, 405, "GET on chat")
    st, _, body = f.post(COMPLETIONS, {"max_tokens": 5})
    check_eq((st, json.loads(body)["error"]["param"]), (400, "prompt"), "completions needs prompt")
    st, _, body = f.post(RESPONSES, {"input": "x"})
    check_eq((st, json.loads(body)["error"]["param"]), (400, "model"), "responses needs model")


def parse_chat_stream(data):
    events = sse_events(data)
    check(len(events) >= 1 and events[-1] == (None, "[DONE]"), "stream ends with data: [DONE]")
    return [json.loads(p) for _, p in events[:-1]]


def test_chat_stream(f):
    f.reset()
    req = {"stream": True, "stream_options": {"include_usage": True},
           "messages": [{"role": "user", "content": "hello big world"}]}
    st, h, data = f.post(CHAT, req)
    check_eq(st, 200, "stream status")
    check_eq(h.get("content-type"), "text/event-stream", "stream content-type")
    check_eq(h.get("transfer-encoding"), "chunked", "stream is chunked")
    check("content-length" not in h, "stream has no content-length")
    check(data.startswith(b"data: {") and b"\r" not in data, "events are 'data: <json>' with LF")
    ev = parse_chat_stream(data)
    # prompt filter, 4 word deltas ("Echo: ", "hello ", "big ", "world"), finish, usage
    check_eq(len(ev), 7, "stream event count")
    check_eq(ev[0], {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": PROMPT_FILTER, "usage": None}, "prompt filter event")
    deltas = ev[1:5]
    check_eq([d["choices"][0]["delta"].get("content") for d in deltas], ["Echo: ", "hello ", "big ", "world"],
             "word deltas")
    check_eq(deltas[0]["choices"][0]["delta"].get("role"), "assistant", "first delta has role")
    check(all("role" not in d["choices"][0]["delta"] for d in deltas[1:]), "later deltas have no role")
    check(all(d["choices"][0]["content_filter_results"] == OUTPUT_FILTER for d in deltas),
          "content_filter_results on every delta")
    check(all(d["choices"][0]["finish_reason"] is None for d in deltas), "deltas not finished")
    ids = {e["id"] for e in ev[1:]}
    check(len(ids) == 1 and ids.pop().startswith("chatcmpl-"), "one chatcmpl id across chunks")
    check(all(e["object"] == "chat.completion.chunk" for e in ev[1:]), "chunk object")
    check_eq(ev[5]["choices"], [{"content_filter_results": {}, "delta": {}, "finish_reason": "stop",
                                 "index": 0, "logprobs": None}], "final chunk")
    check(all(e.get("usage", "absent") is None for e in ev[:6]), "usage null on every earlier chunk")
    check_eq(ev[6]["choices"], [], "usage chunk has no choices")
    # prompt "hello big world" 15 bytes -> 4; completion "Echo: hello big world" 21 bytes -> 6
    check_eq((ev[6]["usage"]["prompt_tokens"], ev[6]["usage"]["completion_tokens"],
              ev[6]["usage"]["total_tokens"]), (4, 6, 10), "stream usage")

    # without include_usage: no usage chunk and no usage keys
    st, _, data = f.post(CHAT, {"stream": True, "messages": [{"role": "user", "content": "hi"}]})
    ev = parse_chat_stream(data)
    check_eq(len(ev), 4, "no-usage stream: filter, 2 deltas, finish")
    check(all("usage" not in e for e in ev), "no usage keys without include_usage")

    # exactly N chunks, never splitting UTF-8
    f.config({"chunks": 5, "reply_text": "h\u00e9llo w\u00f6rld \u2603"})
    st, _, data = f.post(CHAT, {"stream": True, "messages": [{"role": "user", "content": "x"}]})
    ev = parse_chat_stream(data)
    deltas = [e["choices"][0]["delta"]["content"] for e in ev[1:-1]]
    check_eq(len(deltas), 5, "exactly 5 chunks")
    check_eq("".join(deltas), "h\u00e9llo w\u00f6rld \u2603", "chunks join to the reply")

    # legacy completions stream
    f.reset()
    st, _, data = f.post(COMPLETIONS, {"prompt": "say hi", "stream": True})
    ev = parse_chat_stream(data)
    check_eq(ev[0]["choices"], [], "completions stream prompt filter first")
    check_eq("".join(e["choices"][0]["text"] for e in ev[1:]), "Echo: say hi", "completions stream text")
    check(all(e["object"] == "text_completion" for e in ev[1:]), "completions chunk object")
    check_eq(ev[-1]["choices"][0]["finish_reason"], "stop", "completions stream finish")
    st, _, body = f.post(COMPLETIONS, {"prompt": "say hi"})
    j = json.loads(body)
    check_eq((j["object"], j["choices"][0]["text"], j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]),
             ("text_completion", "Echo: say hi", 2, 3), "completions JSON")


def test_embeddings(f):
    f.reset()
    st, h, body = f.post(EMBED, {"input": ["first text", "second"]})
    check_eq(st, 200, "embeddings status")
    j = json.loads(body)
    check_eq((j["object"], j["model"]), ("list", "text-embedding-3-small"), "embeddings object/model")
    check_eq([(d["object"], d["index"], len(d["embedding"])) for d in j["data"]],
             [("embedding", 0, 8), ("embedding", 1, 8)], "embeddings data")
    check(all(-1 <= x <= 1 for d in j["data"] for x in d["embedding"]), "embedding values in [-1,1]")
    check(j["data"][0]["embedding"] != j["data"][1]["embedding"], "different texts, different vectors")
    # 16 bytes -> 4 tokens
    check_eq(j["usage"], {"prompt_tokens": 4, "total_tokens": 4}, "embeddings usage")
    st, _, body2 = f.post("/openai/v1/embeddings", {"model": "emb", "input": "first text"})
    j2 = json.loads(body2)
    check_eq(j2["data"][0]["embedding"], j["data"][0]["embedding"], "embedding is deterministic")
    st, _, body3 = f.post(EMBED, {"input": "first text", "encoding_format": "base64"})
    raw = base64.b64decode(json.loads(body3)["data"][0]["embedding"])
    floats = struct.unpack("<8f", raw)
    check(all(abs(a - b) < 1e-6 for a, b in zip(floats, j["data"][0]["embedding"])), "base64 embedding")
    st, _, body = f.post(EMBED, {"input": [[1, 2, 3], [4, 5]]})
    check_eq((st, json.loads(body)["usage"]["prompt_tokens"], len(json.loads(body)["data"])), (200, 5, 2),
             "token-array input")
    for bad, what in (([], "empty list"), ("", "empty string"), (["a", 1], "mixed"),
                      (["x"] * 2049, "2049 items"), ({"a": 1}, "object")):
        st, _, body = f.post(EMBED, {"input": bad})
        check_eq((st, json.loads(body)["error"]["param"]), (400, "input"), "embeddings rejects " + what)
    st, _, body = f.post(EMBED, {"input": ["x"] * 2048})
    check_eq((st, len(json.loads(body)["data"])), (200, 2048), "embeddings accepts 2048 items")


RESP_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
               "response.output_text.delta", "response.output_text.done", "response.content_part.done",
               "response.output_item.done", "response.completed"]


def test_responses(f):
    f.reset()
    st, h, body = f.post(RESPONSES, {"model": "gpt-4o-mini", "instructions": "be brief",
                                     "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}]})
    check_eq(st, 200, "responses status")
    j = json.loads(body)
    check(j["id"].startswith("resp_"), "responses id")
    check_eq((j["object"], j["status"]), ("response", "completed"), "responses object/status")
    check_eq(len(j["output"]), 1, "one output item")
    out = j["output"][0]
    check_eq((out["type"], out["role"], out["content"][0]["type"], out["content"][0]["text"]),
             ("message", "assistant", "output_text", "Echo: hi there"), "responses output")
    # "be brief" + "hi there" = 16 bytes -> 4; "Echo: hi there" 14 bytes -> 4
    check_eq(j["usage"], {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}, "responses usage")
    st, h, data = f.post("/openai/v1/responses", {"model": "m", "input": "one two", "stream": True})
    check_eq((st, h.get("content-type")), (200, "text/event-stream"), "responses stream status")
    ev = sse_events(data)
    check_eq([name for name, _ in ev], RESP_EVENTS, "responses stream event sequence")
    payloads = [json.loads(p) for _, p in ev]
    check(all(p["type"] == name for (name, _), p in zip(ev, payloads)), "event name matches type")
    check_eq([p["sequence_number"] for p in payloads], list(range(len(payloads))), "sequence numbers")
    check_eq([p["delta"] for p in payloads if p["type"] == "response.output_text.delta"],
             ["Echo: ", "one ", "two"], "responses deltas")
    check_eq(payloads[7]["text"], "Echo: one two", "output_text.done text")
    done = payloads[-1]["response"]
    check_eq((done["status"], done["usage"]["input_tokens"], done["usage"]["output_tokens"]),
             ("completed", 2, 4), "response.completed carries usage")
    check(b"[DONE]" not in data, "responses stream has no [DONE]")


def test_recording(f):
    f.reset()
    binary_body = b'\xff\xfe{"not":"utf8"}'
    f.post(CHAT + "&x=1", {"messages": [{"role": "user", "content": "rec"}]},
           headers={"X-First": "1", "api-key": "secret-key", "X-Last": "z z"})
    f.request("POST", EMBED, binary_body, {"Content-Type": "application/octet-stream"})
    st, _, body = f.request("GET", "/_fake/requests")
    recs = json.loads(body)
    check_eq(len(recs), 2, "two records")
    r0 = recs[0]
    check_eq((r0["method"], r0["path"], r0["http_version"]), ("POST", CHAT + "&x=1", "1.1"), "record line")
    names = [h["name"] for h in r0["headers"]]
    check(names.index("X-First") < names.index("api-key") < names.index("X-Last"), "headers in received order")
    hv = {h["name"]: h["value"] for h in r0["headers"]}
    check_eq((hv["api-key"], hv["X-Last"]), ("secret-key", "z z"), "header values recorded")
    check_eq(json.loads(r0["body"]), {"messages": [{"role": "user", "content": "rec"}]}, "body recorded")
    check_eq((r0["body_base64"], r0["status"], r0["fault"]), (False, 200, None), "record flags")
    check_eq(recs[1]["body_base64"], True, "binary body flagged")
    check_eq(base64.b64decode(recs[1]["body"]), binary_body, "binary body base64")
    check_eq(recs[1]["status"], 400, "binary body answered 400")
    check_eq(recs[1]["seq"], r0["seq"] + 1, "seq increments")
    st, _, body = f.request("DELETE", "/_fake/requests")
    check_eq(json.loads(body), {"cleared": 2}, "DELETE clears")
    check_eq(json.loads(f.request("GET", "/_fake/requests")[2]), [], "empty after clear")
    f.request("GET", "/_fake/stats")
    check_eq(json.loads(f.request("GET", "/_fake/requests")[2]), [], "control calls are not recorded")


def test_config_validation(f):
    f.reset()
    st, _, body = f.config({"chunkz": 3})
    check_eq(st, 400, "unknown config key rejected")
    check("chunkz" in json.loads(body)["error"]["message"], "error names the key")
    st, _, body = f.config({"faults": [{"status": 429, "reset_after_chunks": 1}]})
    check_eq(st, 400, "fault with two kinds rejected")
    st, _, body = f.config({"faults": [{"status": 429, "count": 0}]})
    check("faults[0].count" in json.loads(body)["error"]["message"], "bad count named")
    st, _, body = f.config({"chunks": 2, "faults": [{"status": 99}]})
    check_eq(st, 400, "status out of range")
    cfg = json.loads(f.request("GET", "/_fake/config")[2])
    check_eq((cfg["chunks"], cfg["faults"]), (0, []), "failed POST changed nothing")


def test_status_fault(f):
    f.reset()
    st, _, body = f.config({"faults": [{"status": 429, "retry_after": "2", "retry_after_ms": "1500", "count": 2}]})
    check_eq(st, 200, "fault accepted")
    msg = ("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
           "exceeded token rate limit of your current AIServices S0 pricing tier. Please retry after 2 seconds.")
    for i in range(2):
        st, h, body = f.post(CHAT, {"messages": [{"role": "user", "content": "x"}]})
        check_eq(st, 429, "429 #%d" % i)
        check_eq(json.loads(body), {"error": {"code": "429", "message": msg}}, "429 body #%d" % i)
        check_eq((h.get("retry-after"), h.get("retry-after-ms")), ("2", "1500"), "retry headers #%d" % i)
        check_eq(h.get("content-type"), "application/json", "429 content-type")
    st, h, body = f.post(CHAT, {"messages": [{"role": "user", "content": "x"}]})
    check_eq((st, "retry-after" in h), (200, False), "third request normal")
    f.config({"faults": [{"status": 503}, {"status": 500}]})
    st1, _, b1 = f.post(EMBED, {"input": "x"})
    st2, _, b2 = f.post(EMBED, {"input": "x"})
    check_eq((st1, json.loads(b1)["error"]["code"]), (503, "ServiceUnavailable"), "503 fault")
    check_eq((st2, json.loads(b2)["error"]["code"]), (500, "InternalServerError"), "500 fault in order")
    recs = json.loads(f.request("GET", "/_fake/requests")[2])
    check_eq([(r["status"], r["fault"]) for r in recs[-3:]], [(200, None), (503, "status"), (500, "status")],
             "faults recorded")


def stream_request(path=CHAT, body=None):
    body = body or {"stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "one two three four five"}]}
    return http_req("POST", path, json.dumps(body))


def split_head(data):
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_reset_fault(f):
    f.reset()
    f.config({"faults": [{"reset_after_chunks": 2}]})
    data, outcome = raw_exchange(f.port, stream_request())
    check_eq(outcome, "reset", "reset_after_chunks ends in a TCP reset (ECONNRESET)")
    head, rest = split_head(data)
    check(head.startswith(b"HTTP/1.1 200 OK"), "reset stream started with 200")
    body, finished = dechunk(rest)
    check(not finished, "reset stream never finished")
    ev = sse_events(body)
    check_eq(len(ev), 3, "prompt filter + 2 deltas before the reset")
    check_eq([json.loads(p)["choices"][0]["delta"]["content"] for _, p in ev[1:]], ["Echo: ", "one "],
             "deltas before reset")
    # http.client sees the error too, and the next request is normal again
    c = f.conn()
    f.config({"faults": [{"reset_after_chunks": 1}]})
    c.request("POST", CHAT, body=json.dumps({"stream": True, "messages": [{"role": "user", "content": "a b c"}]}))
    r = c.getresponse()
    try:
        r.read()
        got = "clean"
    except (ConnectionResetError, http.client.IncompleteRead):
        got = "error"
    c.close()
    check_eq(got, "error", "http.client sees the mid-stream reset")
    st, _, _ = f.post(CHAT, {"messages": [{"role": "user", "content": "x"}]})
    check_eq(st, 200, "request after reset is normal")
    # reset after 0 chunks: only the headers arrive
    f.config({"faults": [{"reset_after_chunks": 0}]})
    data, outcome = raw_exchange(f.port, stream_request())
    head, rest = split_head(data)
    check_eq((outcome, head.startswith(b"HTTP/1.1 200"), rest), ("reset", True, b""), "reset after headers")


def test_stall_and_close_faults(f):
    f.reset()
    f.config({"faults": [{"stall_after_chunks": 1}]})
    # The stream must stop after the first delta and stay open: wait for it, then see silence.
    def two_events(d):
        _, rest = split_head(d)
        return len(sse_events(dechunk(rest)[0])) >= 2
    s = socket.create_connection(("127.0.0.1", f.port), timeout=5)
    s.sendall(stream_request())
    data = b""
    deadline = time.monotonic() + 5
    while not two_events(data) and time.monotonic() < deadline:
        data += s.recv(65536)
    check(two_events(data), "stall: first events arrive")
    s.settimeout(0.3)
    try:
        more = s.recv(65536)
        stalled = False if more else "eof"
    except socket.timeout:
        stalled = True
    s.close()
    check_eq(stalled, True, "stall: silence with the connection open")
    _, rest = split_head(data)
    check_eq(len(sse_events(dechunk(rest)[0])), 2, "stall: exactly filter + 1 delta")

    f.config({"faults": [{"close_before_response": True}]})
    data, outcome = raw_exchange(f.port, stream_request())
    check_eq((data, outcome), (b"", "eof"), "close_before_response: closed with no bytes")
    st, _, _ = f.post(CHAT, {"messages": [{"role": "user", "content": "x"}]})
    check_eq(st, 200, "normal after close fault")

    # non-stream response with a reset after 1 "chunk": half the body then RST
    f.config({"faults": [{"reset_after_chunks": 1}]})
    data, outcome = raw_exchange(f.port, http_req("POST", CHAT, json.dumps({"messages": [{"role": "user", "content": "x"}]})))
    head, rest = split_head(data)
    clen = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    check_eq((outcome, len(rest)), ("reset", clen // 2), "JSON body cut in half then reset")


def test_delays(f):
    f.reset()
    f.config({"first_byte_delay_ms": 200})
    t0 = time.monotonic()
    st, _, _ = f.post(EMBED, {"input": "x"})
    check(st == 200 and time.monotonic() - t0 >= 0.2, "first_byte_delay_ms delays the answer")
    f.reset()
    f.config({"chunk_interval_ms": 50, "chunks": 4, "reply_text": "abcdefgh"})
    t0 = time.monotonic()
    st, _, data = f.post(CHAT, {"stream": True, "messages": [{"role": "user", "content": "x"}]})
    elapsed = time.monotonic() - t0
    # 7 events (filter, 4 deltas, finish, [DONE]) -> 6 intervals of 50 ms
    check(st == 200 and elapsed >= 0.3, "chunk_interval_ms spaces the events (%.3f s)" % elapsed)
    check_eq(len(sse_events(data)), 7, "delayed stream complete")


def test_keepalive_and_pipelining(f):
    f.reset()
    s0 = f.stats()
    c = f.conn()
    for i in range(3):
        st, _, body = f.post(CHAT, {"messages": [{"role": "user", "content": "k%d" % i}]}, conn=c)
        check_eq((st, json.loads(body)["choices"][0]["message"]["content"]), (200, "Echo: k%d" % i), "keep-alive #%d" % i)
    st, _, body = f.request("GET", "/_fake/stats", conn=c)
    s1 = json.loads(body)
    c.close()
    check_eq(s1["connections_accepted"] - s0["connections_accepted"], 1, "3 requests on 1 connection")
    check_eq(s1["requests"] - s0["requests"], 3, "stats count the 3 requests")
    check(s1["open_connections"] >= 1, "open_connections counts us")

    # two requests in one write, answered in order, then Connection: close ends it
    payload = (http_req("POST", CHAT, json.dumps({"messages": [{"role": "user", "content": "first"}]})) +
               http_req("POST", CHAT, json.dumps({"stream": True, "messages": [{"role": "user", "content": "second"}]})) +
               http_req("POST", EMBED, json.dumps({"input": "third"}), extra="Connection: close\r\n"))
    data, outcome = raw_exchange(f.port, payload)
    check_eq(outcome, "eof", "pipelined connection closed after Connection: close")
    check_eq(data.count(b"HTTP/1.1 200 OK"), 3, "three pipelined answers")
    p1 = data.find(b"Echo: first")
    p2 = data.find(b'"content":"second"')
    p3 = data.find(b'"object":"list"')
    check(0 < p1 < p2 < p3, "pipelined answers in order")
    check(data.rstrip().endswith(b"}") and b"Connection: close" in data, "last answer closes")


def test_http_framing(f):
    f.reset()
    body = json.dumps({"messages": [{"role": "user", "content": "chunked body"}]}).encode()
    chunked = (b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + b"%x\r\n" % 10 + body[:10] + b"\r\n" +
               b"%x\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n")
    data, outcome = raw_exchange(f.port, chunked)
    check(data.startswith(b"HTTP/1.1 200 OK") and b"Echo: chunked body" in data, "chunked request body")
    check_eq(outcome, "eof", "Connection: close honoured")
    recs = json.loads(f.request("GET", "/_fake/requests")[2])
    check_eq(recs[-1]["body"], body.decode(), "chunked body recorded de-chunked")

    data, _ = raw_exchange(f.port, http_req("POST", CHAT, body.decode(), extra="Expect: 100-continue\r\nConnection: close\r\n"))
    check(data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), "Expect: 100-continue answered")

    req10 = ("POST %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (CHAT, len(body), body.decode())).encode()
    data, outcome = raw_exchange(f.port, req10)
    check(b"Connection: close" in data and outcome == "eof", "HTTP/1.0 without keep-alive closes")
    sbody = json.dumps({"stream": True, "messages": [{"role": "user", "content": "ten"}]})
    req10 = ("POST %s HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n%s" % (CHAT, len(sbody), sbody)).encode()
    data, outcome = raw_exchange(f.port, req10)
    head, rest = split_head(data)
    check(b"chunked" not in head and outcome == "eof", "HTTP/1.0 stream is close-delimited")
    check(rest.endswith(b"data: [DONE]\n\n"), "HTTP/1.0 stream complete")

    for bad in (b"Bad Header: x", b"Name : x", b"X\x01: y", b": novalue"):
        data, outcome = raw_exchange(f.port, b"GET /x HTTP/1.1\r\nHost: a\r\n" + bad + b"\r\n\r\n")
        check(data.startswith(b"HTTP/1.1 400 ") and outcome == "eof", "header line %r gets 400 and close" % bad)
    data, outcome = raw_exchange(f.port, b"HEAD /_fake/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    check(data.startswith(b"HTTP/1.1 405") and data.endswith(b"\r\n\r\n"), "HEAD answered without a body")


def test_auth_and_limits(binary):
    g = Fake(binary, "--name", "up2", "--api-key", "k1", "--bearer", "t1", "--max-records", "3",
             "--max-body-bytes", "4096")
    try:
        msg = {"messages": [{"role": "user", "content": "x"}]}
        st, h, body = g.post(CHAT, msg)
        check_eq((st, json.loads(body)["error"]["code"], h.get("x-fake-name")), (401, "401", "up2"), "no credentials 401")
        st, _, body = g.post(CHAT, msg, headers={"api-key": "wrong"})
        check(st == 401 and "subscription key" in json.loads(body)["error"]["message"], "wrong api-key 401")
        st, _, _ = g.post(CHAT, msg, headers={"api-key": "k1"})
        check_eq(st, 200, "api-key accepted")
        st, _, _ = g.post(CHAT, msg, headers={"Authorization": "Bearer t1"})
        check_eq(st, 200, "bearer accepted")
        st, _, _ = g.post(CHAT, msg, headers={"Authorization": "Bearer t2"})
        check_eq(st, 401, "wrong bearer 401")
        recs = json.loads(g.request("GET", "/_fake/requests")[2])
        check_eq([r["seq"] for r in recs], [3, 4, 5], "--max-records keeps the newest")
        check_eq([r["status"] for r in recs], [200, 200, 401], "statuses recorded")
        data, outcome = raw_exchange(g.port, http_req("POST", CHAT, "x" * 5000, extra="api-key: k1\r\n"))
        check(data.startswith(b"HTTP/1.1 413 "), "body over --max-body-bytes gets 413")
        check_eq(outcome, "eof", "413 closes the connection")
        data, outcome = raw_exchange(g.port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        check(data.startswith(b"HTTP/1.1 400 "), "CL + TE rejected with 400")
        big = b"GET /_fake/stats HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
        data, outcome = raw_exchange(g.port, big)
        check(data.startswith(b"HTTP/1.1 431 "), "oversize headers get 431")
    finally:
        check_eq(g.stop(), 0, "second instance exits 0 on SIGTERM")

    h = Fake(binary, "--no-record")
    try:
        h.post(CHAT, {"messages": [{"role": "user", "content": "x"}]})
        check_eq(json.loads(h.request("GET", "/_fake/requests")[2]), [], "--no-record records nothing")
        check_eq(h.stats()["requests"], 1, "--no-record still counts")
    finally:
        check_eq(h.stop(), 0, "third instance exits 0")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    f = Fake(binary, "--name", "up1")
    tests = [test_chat_json, test_errors, test_chat_stream, test_embeddings, test_responses, test_recording,
             test_config_validation, test_status_fault, test_reset_fault, test_stall_and_close_faults,
             test_delays, test_keepalive_and_pipelining, test_http_framing]
    try:
        for t in tests:
            before = len(FAILURES)
            try:
                t(f)
            except Exception as e:  # a crash in one test is a failure, the others still run
                FAILURES.append("%s raised %r" % (t.__name__, e))
                print("FAIL: %s raised %r" % (t.__name__, e), file=sys.stderr)
            print("%-32s %s" % (t.__name__, "ok" if len(FAILURES) == before else "FAILED"))
        try:
            test_auth_and_limits(binary)
            print("%-32s ok" % "test_auth_and_limits")
        except Exception as e:
            FAILURES.append("test_auth_and_limits raised %r" % e)
    finally:
        rc = f.stop()
    check_eq(rc, 0, "fake_aoai exits 0 on SIGTERM")
    print("%d checks, %d failed" % (CHECKS, len(FAILURES)))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
