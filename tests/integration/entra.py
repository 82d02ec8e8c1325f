"""Entra ID stand-ins for integration tests: fake_entra (OpenID metadata + JWKS, rotation, outages),
fake_identity (the proxy's own token endpoint) and token minting through the mint_token tool.

Binaries come from the environment CTest sets: AG_FAKE_ENTRA, AG_MINT_TOKEN, AG_FAKE_IDENTITY."""
import base64
import http.client
import json
import os
import subprocess
import time

from harness import Proc

FAKE_ENTRA = os.environ.get("AG_FAKE_ENTRA", "build/tests/fakes/fake_entra")
MINT_TOKEN = os.environ.get("AG_MINT_TOKEN", "build/tests/fakes/mint_token")
FAKE_IDENTITY = os.environ.get("AG_FAKE_IDENTITY", "build/tests/fakes/fake_identity")

# Tenants, apps and principals used by the tests (canonical lowercase GUIDs).
TENANT = "11111111-1111-4111-8111-111111111111"
OTHER_TENANT = "22222222-2222-4222-8222-222222222222"
APP_A = "aaaaaaaa-0000-4000-8000-00000000000a"
APP_B = "bbbbbbbb-0000-4000-8000-00000000000b"
OID = "0d0d0d0d-0000-4000-8000-000000000001"
AUDIENCE = "api://aoai-guard"
AUDIENCE_GUID = "cccccccc-0000-4000-8000-0000000000cc"
COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"


def _http(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    payload = r.read()
    c.close()
    if r.status != 200:
        raise AssertionError(f"fake control {method} {path}: {r.status} {payload!r}")
    return json.loads(payload) if payload else None


class FakeEntra(Proc):
    """tests/fakes/fake_entra: metadata + JWKS for TENANT (and any extra tenants)."""

    def __init__(self, workdir, tenants=(TENANT,), keys=1, name="entra"):
        self.keys_dir = os.path.join(workdir, f"{name}-keys")
        argv = [FAKE_ENTRA, "--port", "0", "--port-file", "{port_file}", "--keys-dir", self.keys_dir,
                "--keys", str(keys)]
        for t in tenants:
            argv += ["--tenant", t]
        super().__init__(f"fake-{name}", argv, workdir)
        self.port = int(self.wait_ports().split()[-1])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def v2_issuer(self, tid=TENANT):
        return f"{self.url}/{tid}/v2.0"

    def stats(self):
        return _http(self.port, "GET", "/_fake/stats")

    def rotate(self):
        """Publishes a new key next to the old ones; returns its kid (its PEM files exist by then)."""
        return _http(self.port, "POST", "/_fake/rotate")["kid"]

    def down(self):
        _http(self.port, "POST", "/_fake/down")

    def up(self):
        _http(self.port, "POST", "/_fake/up")

    def kids(self):
        with open(os.path.join(self.keys_dir, "kids")) as f:
            return [k for k in f.read().split("\n") if k]

    def key_path(self, kid):
        return os.path.join(self.keys_dir, f"{kid}.pem")

    def pub_path(self, kid):
        return os.path.join(self.keys_dir, f"{kid}.pub.pem")


class FakeIdentity(Proc):
    """tests/fakes/fake_identity: the client-credentials token endpoint for the proxy's own token.
    Tokens are "fake-token-<n>-<scope>"."""

    CLIENT_ID = "dddddddd-0000-4000-8000-0000000000dd"
    CLIENT_SECRET = "test-only-client-secret"

    def __init__(self, workdir, expires_in=3600, name="identity"):
        argv = [FAKE_IDENTITY, "--port", "0", "--port-file", "{port_file}", "--expires-in", str(expires_in),
                "--client-id", self.CLIENT_ID, "--client-secret", self.CLIENT_SECRET, "--tenant", TENANT]
        super().__init__(f"fake-{name}", argv, workdir)
        self.port = int(self.wait_ports().split()[-1])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stats(self):
        return _http(self.port, "GET", "/_fake/stats")

    def fail(self, status, count, retry_after=None):
        body = {"status": status, "count": count}
        if retry_after is not None:
            body["retry_after"] = retry_after
        return _http(self.port, "POST", "/_fake/fail", body)

    def credential_section(self, refresh_before_s=300):
        return {"type": "client_secret", "tenant_id": TENANT, "client_id": self.CLIENT_ID,
                "client_secret": self.CLIENT_SECRET, "authority_host": self.url + "/",
                "refresh_before_s": refresh_before_s}


def mint(key, kid, claims=None, alg="RS256", header=None, lifetime=None, hmac_secret_file=None,
         raw_payload=None):
    """A compact JWT from the mint_token tool (see tests/fakes/mint_token.c)."""
    argv = [MINT_TOKEN, "--kid", kid, "--alg", alg]
    if key:
        argv += ["--key", key]
    if header is not None:
        argv += ["--header", json.dumps(header)]
    if raw_payload is not None:
        argv += ["--raw-payload", raw_payload]
    else:
        argv += ["--claims", json.dumps(claims)]
    if lifetime is not None:
        argv += ["--lifetime", str(lifetime)]
    if hmac_secret_file:
        argv += ["--hmac-secret-file", hmac_secret_file]
    r = subprocess.run(argv, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"mint_token failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout.decode().strip()


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(claims, kid, alg="RS256"):
    """A token with a well-formed header and payload but a random 256-byte signature: reaches key
    selection (the kid) without any key having signed it."""
    header = {"typ": "JWT", "alg": alg, "kid": kid}
    return ".".join([b64url(json.dumps(header, separators=(",", ":"))),
                     b64url(json.dumps(claims, separators=(",", ":"))), b64url(os.urandom(256))])


def v1_claims(now=None, tid=TENANT, oid=OID, app=APP_A, roles=("AI.User",), aud=AUDIENCE, **extra):
    """An app-only v1.0 access token's claims (iss https://sts.windows.net/{tid}/, appid)."""
    now = int(time.time()) if now is None else now
    c = {"aud": aud, "iss": f"https://sts.windows.net/{tid}/", "iat": now - 5, "nbf": now - 5,
         "exp": now + 3600, "tid": tid, "oid": oid, "sub": oid, "appid": app, "appidacr": "1",
         "idtyp": "app", "ver": "1.0"}
    if roles is not None:
        c["roles"] = list(roles)
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def v2_claims(entra, now=None, tid=TENANT, oid=OID, app=APP_A, roles=("AI.User",), aud=AUDIENCE_GUID,
              **extra):
    """An app-only v2.0 access token's claims (iss {authority}/{tid}/v2.0, azp)."""
    now = int(time.time()) if now is None else now
    c = {"aud": aud, "iss": entra.v2_issuer(tid), "iat": now - 5, "nbf": now - 5, "exp": now + 3600,
         "tid": tid, "oid": oid, "sub": oid, "azp": app, "azpacr": "1", "idtyp": "app", "ver": "2.0"}
    if roles is not None:
        c["roles"] = list(roles)
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def auth_section(entra, rules=None, **kw):
    """An `auth` section in entra mode against fake_entra."""
    a = {"mode": "entra", "authority_host": entra.url, "tenants": [TENANT],
         "audiences": [AUDIENCE, AUDIENCE_GUID], "clock_skew_s": 60}
    if rules is not None:
        a["rules"] = rules
    a.update(kw)
    return a
