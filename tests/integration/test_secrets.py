"""Issue 9: no token, api-key or client secret ever appears in logs, metrics, audit records or
error responses. One gateway runs with every kind of secret configured (inbound API keys, the
upstream api-key, a client secret for the proxy's own credential and the token it obtains, an
Azure Monitor token); traffic covers success, every rejection and upstream failures; then every
output is searched for every secret."""
import glob
import json
import os
import unittest

from harness import (CHAT, GatewayTestCase, base_config, chat_body, raw_exchange, request, upstream,
                     wait_until)
from test_audit import CLIENT_ID, CLIENT_SECRET, DCR, STREAM, TENANT, FakeIdentity, FakeMonitor

INBOUND_KEY = "inbound-key-S3CR3T-0123456789"
WRONG_KEY = "wrong-key-S3CR3T-9876543210"
UPSTREAM_KEY = "upstream-key-S3CR3T-abcdef"


class NoSecretsInOutputs(GatewayTestCase):
    def test_no_secret_anywhere(self):
        idp = self.track(FakeIdentity(self.tmp))
        monitor_token = idp.next_token()
        mon = self.track(FakeMonitor(self.tmp, monitor_token))
        up = self.fake(api_key=UPSTREAM_KEY)
        trail = os.path.join(self.tmp, "audit.jsonl")
        gw = self.gateway(base_config(
            [upstream(up)],
            auth={"mode": "api_key", "api_keys": [{"name": "app", "key": INBOUND_KEY, "deployments": ["*"]}]},
            credential={"type": "client_secret", "tenant_id": TENANT, "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET, "authority_host": f"http://127.0.0.1:{idp.port}"},
            audit={"sinks": [{"type": "file", "path": trail}, {"type": "stdout"},
                             {"type": "azure_monitor", "endpoint": mon.url, "dcr_immutable_id": DCR,
                              "stream": STREAM}],
                   "spool_dir": os.path.join(self.tmp, "spool")},
            log={"level": "debug", "access_log": True}))
        wait_until(lambda: request(gw.admin_port, "GET", "/readyz")[0] == 200, timeout=15, what="ready")
        responses = []
        ok = {"api-key": INBOUND_KEY}
        responses.append(request(gw.port, "POST", CHAT, chat_body("hello"), ok))
        responses.append(request(gw.port, "POST", CHAT, chat_body("stream", stream=True), ok))
        responses.append(request(gw.port, "POST", CHAT, chat_body("x"), {"api-key": WRONG_KEY}))
        responses.append(request(gw.port, "POST", CHAT, chat_body("x"),
                                 {"Authorization": f"Bearer {INBOUND_KEY}"}))
        responses.append(request(gw.port, "POST", CHAT, "{bad json", ok))
        responses.append(request(gw.port, "GET", "/nope", None, ok))
        up.configure(faults=[{"status": 500, "count": 3}])
        responses.append(request(gw.port, "POST", CHAT, chat_body("upstream fails"), ok))
        raw = raw_exchange(gw.port, b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\napi-key: "
                           + WRONG_KEY.encode() + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        metrics = request(gw.admin_port, "GET", "/metrics")[2].decode()
        wait_until(lambda: mon.stats()["records"] >= 8, timeout=15, what="records delivered")
        self.assertEqual(gw.stop(), 0)

        outputs = {"gateway stdout": gw.stdout(), "gateway stderr": gw.stderr(), "metrics": metrics,
                   "raw framing error": raw.decode("latin-1"),
                   "monitor records": json.dumps(mon.records())}
        for i, (st, h, b) in enumerate(responses):
            outputs[f"response {i}"] = json.dumps(h) + b.decode("latin-1")
        for path in glob.glob(os.path.join(self.tmp, "**", "*"), recursive=True):
            if os.path.isfile(path) and ("spool" in path or path.endswith(".jsonl")):
                with open(path, "rb") as f:
                    outputs[path] = f.read().decode("latin-1")
        secrets = {"inbound api key": INBOUND_KEY, "wrong api key": WRONG_KEY, "upstream api key": UPSTREAM_KEY,
                   "client secret": CLIENT_SECRET, "monitor token": monitor_token, "token prefix": "fake-token-"}
        self.assertGreater(len(outputs["gateway stdout"]), 1000)  # the search has something to search
        for where, text in outputs.items():
            for what, secret in secrets.items():
                self.assertNotIn(secret, text, f"{what} found in {where}")


if __name__ == "__main__":
    unittest.main()
