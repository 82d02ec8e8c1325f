"""Issue 2: the official openai SDK (npm `openai`, AzureOpenAI client) streams a chat completion
through the gateway from the fake upstream. node and npm are test-only tools; the package is
installed into the build tree, never into the repository."""
import json
import os
import shutil
import subprocess
import unittest

from harness import GatewayTestCase, base_config, upstream

SDK_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk")


def sdk_dir():
    """Installs the SDK once per build tree (AG_SDK_DIR) and returns the directory."""
    target = os.environ.get("AG_SDK_DIR") or os.path.join(os.path.dirname(os.environ.get("AG_BIN", "build/x")), "sdk")
    os.makedirs(target, exist_ok=True)
    for name in ("package.json", "stream_chat.mjs"):
        shutil.copy(os.path.join(SDK_SRC, name), os.path.join(target, name))
    if not os.path.isdir(os.path.join(target, "node_modules", "openai")):
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=target,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise AssertionError(f"npm install openai failed:\n{r.stdout}\n{r.stderr}")
    return target


class OpenAISdk(GatewayTestCase):
    def test_azure_openai_client_streams_through_gateway(self):
        if not shutil.which("node") or not shutil.which("npm"):
            self.fail("node and npm are needed for the SDK compatibility test (scripts/install-deps.sh --test)")
        d = sdk_dir()
        up = self.fake()
        gw = self.gateway(base_config([upstream(up)]))
        r = subprocess.run(["node", "stream_chat.mjs"], cwd=d, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "AG_ENDPOINT": f"http://127.0.0.1:{gw.port}"})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(out["ok"])
        # The SDK's key never reached the upstream; the gateway's did.
        for rec in up.requests():
            keys = [h["value"] for h in rec["headers"] if h["name"].lower() == "api-key"]
            self.assertEqual(keys, [up.api_key])


if __name__ == "__main__":
    unittest.main()
