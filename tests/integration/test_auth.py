"""Issue 3: Entra ID authentication and authorization through the real binary, against fake_entra
(metadata, JWKS, rotation, outages), fake_identity (the proxy's own token) and fake_aoai."""
import http.client
import json
import os
import subprocess
import threading
import time
import uuid

from entra import (APP_A, APP_B, AUDIENCE, AUDIENCE_GUID, COGNITIVE_SCOPE, OID, OTHER_TENANT, TENANT,
                   FakeEntra, FakeIdentity, auth_section, b64url, forged, mint, v1_claims, v2_claims)
from harness import (CHAT, GatewayTestCase, base_config, chat_body, parse_responses, raw_exchange, request,
                     upstream, wait_until)

CHAT_4O = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
V1_CHAT = "/openai/v1/chat/completions"

# What the module lets the caller see (auth.c); the specific reason only goes to the log.
PUBLIC_MALFORMED = "The access token is malformed or uses an unsupported format"
PUBLIC_TIME = "The access token is expired or not yet valid"
PUBLIC_INVALID = "The access token is invalid or was not issued for this service"
PUBLIC_FORBIDDEN = "The caller is not permitted to use this deployment"
PUBLIC_NO_KEYS = "Token validation is temporarily unavailable, retry later"
PUBLIC_MISSING = "Access token is missing"
PUBLIC_SCHEME = "Use Authorization: Bearer with an access token"
PUBLIC_BAD_API_KEY = "Access denied due to an invalid API key"

RULES = [
    {"roles": ["AI.User"], "deployments": ["*"]},
    {"roles": ["analytics"], "deployments": ["gpt-4o-mini"]},
    {"roles": ["Apps.Call"], "apps": [APP_A], "deployments": ["gpt-4o-mini"]},
    {"scopes": ["user_impersonation"], "identity_type": "user", "deployments": ["gpt-4o-mini"]},
]


def invalid_token_header(public):
    return f'Bearer error="invalid_token", error_description="{public}"'


def error_body(code, message):
    return {"error": {"code": code, "message": message}}


def bearer(token, rid=None):
    h = {"Authorization": f"Bearer {token}"}
    if rid:
        h["x-request-id"] = rid
    return h


def new_rid():
    return "t-" + uuid.uuid4().hex


def readyz(gw):
    try:
        st, _, body = request(gw.admin_port, "GET", "/readyz", timeout=5)
    except OSError as e:
        return None, repr(e)
    return st, body


def header_values(rec, name):
    return [h["value"] for h in rec["headers"] if h["name"].lower() == name]


class AuthTestCase(GatewayTestCase):
    """Helpers shared by the auth tests."""

    def start_entra(self, **kw):
        return self.track(FakeEntra(self.tmp, **kw))

    def initial_round(self, entra):
        """Waits for the start-up round (one key document per source: v1 and v2 of one tenant) and
        returns the number of key fetches it took."""
        return wait_until(lambda: entra.stats()["jwks_fetches"] >= 2 and entra.stats()["jwks_fetches"],
                          what="initial key fetches")

    def wait_ready(self, gw, timeout=20):
        wait_until(lambda: readyz(gw)[0] == 200, timeout, what="/readyz 200")

    def access_line(self, gw, rid):
        return wait_until(lambda: next((l for l in gw.access_lines() if l.get("request_id") == rid), None),
                          what=f"access line for {rid}")

    def assert_reason_logged(self, gw, rid, reason):
        """A non-access log line of this request names the specific reason (ag_auth_code_str)."""
        def found():
            return [l for l in gw.log_lines() if l.get("type") != "access" and l.get("request_id") == rid
                    and reason in l.get("msg", "")]
        wait_until(found, what=f"a log line with request_id {rid} naming {reason!r} "
                               f"(log lines of it: {[l for l in gw.log_lines() if l.get('request_id') == rid]})")

    def assert_rejected(self, gw, up, headers, status, www, body, reason, path=CHAT, payload=None,
                        close=True):
        """Sends one request and checks the exact rejection; the upstream must see nothing."""
        before = len(up.requests())
        rid = headers.get("x-request-id") or new_rid()
        headers = dict(headers, **{"x-request-id": rid})
        st, h, b = request(gw.port, "POST", path, payload if payload is not None else chat_body(), headers)
        self.assertEqual(st, status, b)
        if www is None:
            self.assertNotIn("www-authenticate", h)
        else:
            self.assertEqual(h.get("www-authenticate"), www)
        self.assertEqual(json.loads(b), body)
        self.assertEqual(h["content-type"].split(";")[0].strip(), "application/json")
        if close:
            self.assertEqual(h.get("connection", "").lower(), "close", h)
        # The caller learns nothing beyond the public text: the reason code is not in the answer
        # (unless the public text happens to contain that word).
        if reason not in body["error"]["message"]:
            self.assertNotIn(reason.encode(), b)
            self.assertNotIn(reason, h.get("www-authenticate", ""))
        self.assertEqual(len(up.requests()), before, "a rejected request reached the upstream")
        line = self.access_line(gw, rid)
        self.assertEqual(line["status"], status)
        self.assertTrue(isinstance(line.get("error_code"), str) and line["error_code"], line)
        self.assert_reason_logged(gw, rid, reason)
        return line


class EntraValidation(AuthTestCase):
    """One gateway in entra mode with rules; tokens from the fake's key and from elsewhere."""

    def setUp(self):
        super().setUp()
        self.entra = self.start_entra()
        self.kid = self.entra.kids()[0]
        self.key = self.entra.key_path(self.kid)
        self.up = self.fake()
        self.gw = self.gateway(base_config([upstream(self.up)], auth=auth_section(self.entra, rules=RULES)))
        self.wait_ready(self.gw)

    def send(self, token, path=CHAT, payload=None):
        rid = new_rid()
        st, h, b = request(self.gw.port, "POST", path, payload if payload is not None else chat_body(),
                           bearer(token, rid))
        return st, h, b, rid

    def test_valid_v1_and_v2_tokens_pass_with_identity_in_access_log(self):
        cases = [
            ("v1", mint(self.key, self.kid, v1_claims(app=APP_B)), "app", APP_B),
            ("v2", mint(self.key, self.kid, v2_claims(self.entra, app=APP_A)), "app", APP_A),
            ("v1 aud GUID", mint(self.key, self.kid, v1_claims(aud=AUDIENCE_GUID)), "app", APP_A),
            ("v2 user", mint(self.key, self.kid, v2_claims(self.entra, roles=None, idtyp="user",
                                                          scp="user_impersonation", upn="ann@contoso.example")),
             "user", APP_A),
        ]
        for name, tok, kind, app in cases:
            with self.subTest(token=name):
                st, h, b, rid = self.send(tok)
                self.assertEqual(st, 200, b)
                self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], "Echo: Hello")
                line = self.access_line(self.gw, rid)
                self.assertEqual(line["status"], 200)
                self.assertEqual(line["identity_type"], kind)
                self.assertEqual(line["tid"], TENANT)
                self.assertEqual(line["oid"], OID)
                self.assertEqual(line["app"], app)
                self.assertNotIn("error_code", line)
                # The caller's token never goes upstream (this upstream uses its own api-key).
                rec = self.up.requests()[-1]
                self.assertEqual(header_values(rec, "x-request-id"), [rid])
                self.assertEqual(header_values(rec, "authorization"), [])
                self.assertEqual(header_values(rec, "api-key"), [self.up.api_key])
                self.assertNotIn(tok.split(".")[2], json.dumps(rec))

    def test_tokens_change_within_one_keep_alive_connection(self):
        # The connection remembers its last token's cache key (token_cache.h, ag_token_memo): each
        # request must still be judged by its own token. A forgery of the same length as the
        # remembered token (one signature character changed) is refused on that same connection.
        tok_a = mint(self.key, self.kid, v2_claims(self.entra, app=APP_A))
        tok_b = mint(self.key, self.kid, v1_claims(app=APP_B))
        h_, p_, s_ = tok_a.split(".")
        forged = ".".join([h_, p_, s_[:-2] + ("A" if s_[-2] != "A" else "B") + s_[-1]])
        self.assertEqual(len(forged), len(tok_a))
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=15)
        try:
            for tok, app in [(tok_a, APP_A), (tok_a, APP_A), (tok_b, APP_B), (tok_a, APP_A)]:
                rid = new_rid()
                conn.request("POST", CHAT, body=json.dumps(chat_body()).encode(),
                             headers=dict(bearer(tok, rid), **{"Content-Type": "application/json"}))
                r = conn.getresponse()
                body = r.read()
                self.assertEqual(r.status, 200, body)
                self.assertEqual(self.access_line(self.gw, rid)["app"], app)
            rid = new_rid()
            conn.request("POST", CHAT, body=json.dumps(chat_body()).encode(),
                         headers=dict(bearer(forged, rid), **{"Content-Type": "application/json"}))
            r = conn.getresponse()
            body = r.read()
            self.assertEqual(r.status, 401, body)
            self.assertEqual(r.getheader("www-authenticate"), invalid_token_header(PUBLIC_INVALID))
            self.assert_reason_logged(self.gw, rid, "bad_signature")
        finally:
            conn.close()

    def test_invalid_tokens_get_401_invalid_token(self):
        now = int(time.time())
        e = self.entra
        foreign = os.path.join(self.tmp, "foreign.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", foreign], check=True, capture_output=True)
        good = mint(self.key, self.kid, v2_claims(e))
        h_, p_, s_ = good.split(".")
        tampered = ".".join([h_, b64url(json.dumps(v2_claims(e, oid="0d0d0d0d-0000-4000-8000-0000000000ff"))), s_])
        none_hdr = b64url(json.dumps({"typ": "JWT", "alg": "none", "kid": self.kid}))
        cases = [
            ("expired v2", mint(self.key, self.kid, v2_claims(e, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
             PUBLIC_TIME, "expired"),
            ("expired v1", mint(self.key, self.kid, v1_claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
             PUBLIC_TIME, "expired"),
            ("not yet valid", mint(self.key, self.kid, v2_claims(e, nbf=now + 3600, exp=now + 7200)),
             PUBLIC_TIME, "not_yet_valid"),
            ("wrong aud", mint(self.key, self.kid, v2_claims(e, aud="api://someone-else")),
             PUBLIC_INVALID, "bad_audience"),
            ("wrong aud v1", mint(self.key, self.kid, v1_claims(aud="https://management.azure.com/")),
             PUBLIC_INVALID, "bad_audience"),
            ("wrong iss", mint(self.key, self.kid, v2_claims(e, iss=f"https://login.evil.example/{TENANT}/v2.0")),
             PUBLIC_INVALID, "bad_issuer"),
            ("tid not allowed", mint(self.key, self.kid, v2_claims(e, tid=OTHER_TENANT)),
             PUBLIC_INVALID, "tenant_not_allowed"),
            ("iss of another tenant", mint(self.key, self.kid, v2_claims(e, tid=OTHER_TENANT,
                                                                          iss=e.v2_issuer(TENANT))),
             PUBLIC_INVALID, "issuer_tenant_mismatch"),
            ("tampered payload", tampered, PUBLIC_INVALID, "bad_signature"),
            ("signed by a foreign key", mint(foreign, self.kid, v2_claims(e)), PUBLIC_INVALID, "bad_signature"),
            ("alg none, no signature", mint(None, self.kid, v2_claims(e), alg="none"),
             PUBLIC_MALFORMED, "malformed"),
            ("alg none with a signature", ".".join([none_hdr, p_, s_]), PUBLIC_MALFORMED, "alg_none"),
            ("alg NONE", mint(self.key, self.kid, v2_claims(e), header={"alg": "NONE"}),
             PUBLIC_MALFORMED, "alg_none"),
            ("HS256 keyed with the public key PEM",
             mint(None, self.kid, v2_claims(e), alg="HS256", hmac_secret_file=e.pub_path(self.kid)),
             PUBLIC_MALFORMED, "alg_not_allowed"),
            ("jku in the header", mint(self.key, self.kid, v2_claims(e), header={"jku": e.url + "/evil/keys"}),
             PUBLIC_MALFORMED, "header_key_reference"),
            ("unknown kid", mint(foreign, "no-such-kid-0001", v2_claims(e)), PUBLIC_INVALID, "unknown_kid"),
            ("not a JWT", "not-a-jwt", PUBLIC_MALFORMED, "malformed"),
            ("token over max_token_bytes", "a" * 9000, PUBLIC_MALFORMED, "token_too_large"),
        ]
        for name, tok, public, reason in cases:
            with self.subTest(token=name):
                self.assert_rejected(self.gw, self.up, bearer(tok), 401, invalid_token_header(public),
                                     error_body("401", public), reason)

    def test_missing_or_non_bearer_credentials(self):
        for name, headers, public, reason in [
                ("no Authorization", {}, PUBLIC_MISSING, "no_credentials"),
                ("Basic scheme", {"Authorization": "Basic dXNlcjpwYXNz"}, PUBLIC_SCHEME, "unsupported_scheme")]:
            with self.subTest(case=name):
                before = len(self.up.requests())
                rid = new_rid()
                st, h, b = request(self.gw.port, "POST", CHAT, chat_body(), dict(headers, **{"x-request-id": rid}))
                self.assertEqual(st, 401, b)
                www = h.get("www-authenticate", "")
                self.assertRegex(www, r'^Bearer realm="[^"\\]+"$')
                self.assertNotIn("error=", www)
                self.assertEqual(json.loads(b), error_body("401", public))
                self.assertEqual(h.get("connection", "").lower(), "close")
                self.assertEqual(len(self.up.requests()), before)
                self.assertTrue(self.access_line(self.gw, rid).get("error_code"))
                self.assert_reason_logged(self.gw, rid, reason)

    def test_duplicate_authorization_is_a_bad_request(self):
        tok = mint(self.key, self.kid, v2_claims(self.entra))
        p = json.dumps(chat_body()).encode()
        raw = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nAuthorization: Bearer {tok}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(p)}\r\n\r\n").encode() + p
        resps = parse_responses(raw_exchange(self.gw.port, raw))
        self.assertEqual([r[0] for r in resps], [400])
        self.assertEqual(resps[0][1].get("connection", "").lower(), "close")
        self.assertEqual(self.up.requests(), [])

    def test_unknown_kid_refetches_keys_once_then_401(self):
        base = self.entra.stats()
        foreign = os.path.join(self.tmp, "foreign.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", foreign], check=True, capture_output=True)
        tok = mint(foreign, "kid-nobody-published", v2_claims(self.entra))
        t0 = time.monotonic()
        self.assert_rejected(self.gw, self.up, bearer(tok), 401, invalid_token_header(PUBLIC_INVALID),
                             error_body("401", PUBLIC_INVALID), "unknown_kid")
        self.assertLess(time.monotonic() - t0, 10.0)
        after = self.entra.stats()
        self.assertGreaterEqual(after["jwks_fetches"] - base["jwks_fetches"], 1,
                                "the unknown kid did not cause a key refetch")
        # A second unknown kid inside unknown_kid_refetch_s (default 300 s) fetches nothing more.
        tok2 = mint(foreign, "kid-nobody-published-2", v2_claims(self.entra))
        self.assert_rejected(self.gw, self.up, bearer(tok2), 401, invalid_token_header(PUBLIC_INVALID),
                             error_body("401", PUBLIC_INVALID), "unknown_kid")
        self.assertEqual(self.entra.stats()["jwks_fetches"], after["jwks_fetches"])
        # Known keys still work.
        st, _, b, _ = self.send(mint(self.key, self.kid, v2_claims(self.entra)))
        self.assertEqual(st, 200, b)

    def test_authorization_rules_per_deployment(self):
        e = self.entra
        analytics = mint(self.key, self.kid, v2_claims(e, roles=["analytics"]))
        apps_a = mint(self.key, self.kid, v2_claims(e, roles=["Apps.Call"], app=APP_A))
        apps_b = mint(self.key, self.kid, v2_claims(e, roles=["Apps.Call"], app=APP_B))
        apps_b_v1 = mint(self.key, self.kid, v1_claims(roles=["Apps.Call"], app=APP_B))
        no_roles = mint(self.key, self.kid, v2_claims(e, roles=None))
        other_role = mint(self.key, self.kid, v2_claims(e, roles=["Reader", "Writer"]))
        user_no_scope = mint(self.key, self.kid, v2_claims(e, roles=None, idtyp="user", scp="Files.Read"))
        forbidden = [
            ("missing role", no_roles, CHAT, None),
            ("role not in any rule", other_role, CHAT, None),
            ("wrong app", apps_b, CHAT, None),
            ("wrong app v1", apps_b_v1, CHAT, None),
            ("user without the scope", user_no_scope, CHAT, None),
            ("analytics on gpt-4o", analytics, CHAT_4O, None),
            ("analytics on gpt-4o via v1 model", analytics, V1_CHAT, chat_body(model="gpt-4o")),
            ("Apps.Call on gpt-4o", apps_a, CHAT_4O, None),
        ]
        www = f'Bearer error="insufficient_scope", error_description="{PUBLIC_FORBIDDEN}"'
        for name, tok, path, payload in forbidden:
            with self.subTest(case=name):
                line = self.assert_rejected(self.gw, self.up, bearer(tok), 403, www,
                                            error_body("PermissionDenied", PUBLIC_FORBIDDEN), "forbidden",
                                            path=path, payload=payload, close=False)
                self.assertEqual(line.get("tid"), TENANT)
        allowed = [
            ("analytics on gpt-4o-mini", analytics, CHAT, None),
            ("analytics on gpt-4o-mini via v1 model", analytics, V1_CHAT, chat_body(model="gpt-4o-mini")),
            ("Apps.Call from the listed app", apps_a, CHAT, None),
        ]
        for name, tok, path, payload in allowed:
            with self.subTest(case=name):
                st, h, b, rid = self.send(tok, path, payload)
                self.assertEqual(st, 200, b)
                self.assertEqual(self.access_line(self.gw, rid)["status"], 200)

    def test_authentication_happens_before_the_body_is_read(self):
        """A bad token is answered as soon as the headers are in: the announced body is never awaited."""
        tok = mint(self.key, self.kid, v2_claims(self.entra, aud="api://someone-else"))
        head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {tok}\r\nContent-Length: 100000\r\n\r\n").encode()
        t0 = time.monotonic()
        data = raw_exchange(self.gw.port, head + b'{"messages":', timeout=8)
        took = time.monotonic() - t0
        resps = parse_responses(data)
        self.assertEqual(len(resps), 1, data)
        st, h, b = resps[0]
        self.assertEqual(st, 401)
        self.assertEqual(h["www-authenticate"], invalid_token_header(PUBLIC_INVALID))
        self.assertEqual(h.get("connection", "").lower(), "close")
        self.assertEqual(json.loads(b), error_body("401", PUBLIC_INVALID))
        self.assertLess(took, 5.0, "the gateway waited for the body or kept the connection open")
        self.assertEqual(self.up.requests(), [])


MULTIPART_BOUNDARY = "aoai-guard-test-boundary"


def multipart_transcription(model="gpt-4o"):
    """A v1 audio transcription request body: the deployment is the multipart `model` field."""
    b = MULTIPART_BOUNDARY
    return (f"--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFF0000WAVE\r\n--{b}--\r\n").encode()


class EntraAuthorizationEdges(AuthTestCase):
    """Authorization where the deployment is not in the path, and rules/audiences changed by reload."""

    def setUp(self):
        super().setUp()
        self.entra = self.start_entra()
        self.kid = self.entra.kids()[0]
        self.up = self.fake()
        self.cfg = base_config([upstream(self.up)], auth=auth_section(self.entra, rules=RULES))
        self.gw = self.gateway(self.cfg)
        self.wait_ready(self.gw)

    def token(self, **kw):
        return mint(self.entra.key_path(self.kid), self.kid, v2_claims(self.entra, jti=uuid.uuid4().hex, **kw))

    def reload(self):
        n = len([l for l in self.gw.log_lines() if "configuration reloaded" in l.get("msg", "")])
        self.gw.reload(self.cfg)
        wait_until(lambda: len([l for l in self.gw.log_lines() if "configuration reloaded" in l.get("msg", "")]) > n,
                   what="the reload to be applied")

    def test_multipart_v1_operation_needs_a_grant_for_every_deployment(self):
        """/openai/v1/audio/transcriptions names its deployment inside a multipart body the gateway does
        not parse: a caller granted only gpt-4o-mini must not reach Azure with it (fail closed)."""
        headers = {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"}
        www = f'Bearer error="insufficient_scope", error_description="{PUBLIC_FORBIDDEN}"'
        for path in ["/openai/v1/audio/transcriptions", "/openai/v1/audio/translations", "/openai/v1/images/edits"]:
            with self.subTest(path=path):
                self.assert_rejected(self.gw, self.up, dict(bearer(self.token(roles=["analytics"])), **headers), 403,
                                     www, error_body("PermissionDenied", PUBLIC_FORBIDDEN), "forbidden", path=path,
                                     payload=multipart_transcription(), close=False)
        # A caller granted every deployment ("*") may use them.
        before = len(self.up.requests())
        request(self.gw.port, "POST", "/openai/v1/audio/transcriptions", multipart_transcription(),
                dict(bearer(self.token(roles=["AI.User"])), **headers))
        self.assertEqual(len(self.up.requests()), before + 1)

    def test_reloaded_rules_apply_to_known_tokens(self):
        tok = self.token(roles=["analytics"])
        st, _, b = request(self.gw.port, "POST", CHAT_4O, chat_body(), bearer(tok))
        self.assertEqual(st, 403, b)
        self.cfg["auth"]["rules"] = [{"roles": ["analytics"], "deployments": ["gpt-4o-mini", "gpt-4o"]}]
        self.reload()
        st, _, b = request(self.gw.port, "POST", CHAT_4O, chat_body(), bearer(tok))
        self.assertEqual(st, 200, b)
        self.cfg["auth"]["rules"] = [{"roles": ["AI.User"], "deployments": ["*"]}]
        self.reload()
        st, _, b = request(self.gw.port, "POST", CHAT, chat_body(), bearer(tok))
        self.assertEqual(st, 403, b)

    def test_reload_that_drops_an_audience_rejects_cached_tokens_too(self):
        """A token validated (and cached) before the reload is held to the new audiences, exactly
        like a token the gateway has not seen yet."""
        cached = self.token(aud=AUDIENCE_GUID)
        st, _, b = request(self.gw.port, "POST", CHAT, chat_body(), bearer(cached))
        self.assertEqual(st, 200, b)
        self.cfg["auth"]["audiences"] = [AUDIENCE]
        self.reload()
        fresh = self.token(aud=AUDIENCE_GUID)
        for name, tok in [("unseen token", fresh), ("token cached before the reload", cached)]:
            with self.subTest(token=name):
                self.assert_rejected(self.gw, self.up, bearer(tok), 401, invalid_token_header(PUBLIC_INVALID),
                                     error_body("401", PUBLIC_INVALID), "bad_audience")


class KeyRotation(AuthTestCase):
    def test_rotation_mid_traffic_causes_no_failures(self):
        entra = self.start_entra()
        old_kid = entra.kids()[0]
        up = self.fake(extra=["--no-record"])
        gw = self.gateway(base_config([upstream(up)], workers=2, auth=auth_section(entra, rules=RULES)))
        self.wait_ready(gw)
        per_round = self.initial_round(entra)

        old_v1 = mint(entra.key_path(old_kid), old_kid, v1_claims())
        old_v2 = mint(entra.key_path(old_kid), old_kid, v2_claims(entra))
        newest = {"v1": old_v1, "v2": old_v2, "kid": old_kid}
        results = []  # (label, kid, status)
        lock = threading.Lock()
        stop = threading.Event()

        def sender(label, pick):
            while not stop.is_set():
                kid, tok = pick()
                try:
                    st, _, _ = request(gw.port, "POST", CHAT, chat_body(), bearer(tok), timeout=15)
                except OSError as ex:
                    st = repr(ex)
                with lock:
                    results.append((label, kid, st))

        threads = [
            threading.Thread(target=sender, args=("old-v1", lambda: (old_kid, old_v1))),
            threading.Thread(target=sender, args=("old-v2", lambda: (old_kid, old_v2))),
            threading.Thread(target=sender, args=("newest-v2", lambda: (newest["kid"], newest["v2"]))),
            threading.Thread(target=sender, args=("newest-v1", lambda: (newest["kid"], newest["v1"]))),
        ]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(results) >= 20, 30, what="traffic before the rotation")
            new_kid = entra.rotate()
            self.assertNotEqual(new_kid, old_kid)
            # Tokens signed by the new key are used as soon as the key exists.
            v2 = mint(entra.key_path(new_kid), new_kid, v2_claims(entra))
            v1 = mint(entra.key_path(new_kid), new_kid, v1_claims())
            newest.update(v1=v1, v2=v2, kid=new_kid)

            def new_key_used():
                with lock:
                    return sum(1 for l, k, s in results if k == new_kid and l.startswith("newest")) >= 20
            wait_until(new_key_used, 60, what="requests with the new key")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        failures = [r for r in results if r[2] != 200]
        self.assertEqual(failures, [], f"{len(failures)} of {len(results)} requests failed")
        by_label = {}
        for label, kid, st in results:
            by_label.setdefault((label, kid == new_kid), 0)
            by_label[(label, kid == new_kid)] += 1
        self.assertGreater(by_label.get(("newest-v2", True), 0), 0, by_label)
        self.assertGreater(by_label.get(("newest-v1", True), 0), 0, by_label)
        self.assertGreater(by_label.get(("old-v2", False), 0), 0, by_label)
        # The new key was fetched: one refetch round for the unknown kid (v1 and v2 key documents),
        # not one per request.
        delta = entra.stats()["jwks_fetches"] - per_round
        self.assertGreaterEqual(delta, 1)
        self.assertLessEqual(delta, per_round, f"{delta} key fetches after one rotation")


class ForgedKidFlood(AuthTestCase):
    def test_random_kid_flood_causes_at_most_one_refetch(self):
        entra = self.start_entra()
        kid = entra.kids()[0]
        up = self.fake()
        gw = self.gateway(base_config([upstream(up)], workers=2,
                                      auth=auth_section(entra, rules=RULES, unknown_kid_refetch_s=120)))
        self.wait_ready(gw)
        per_round = self.initial_round(entra)
        base = entra.stats()
        claims = v2_claims(entra)
        statuses, wwws = [], set()
        lock = threading.Lock()

        def flood(n):
            for _ in range(n):
                tok = forged(claims, uuid.uuid4().hex)
                try:
                    st, h, _ = request(gw.port, "POST", CHAT, chat_body(), bearer(tok), timeout=20)
                    www = h.get("www-authenticate")
                except OSError as ex:
                    st, www = repr(ex), None
                with lock:
                    statuses.append(st)
                    wwws.add(www)

        t0 = time.monotonic()
        threads = [threading.Thread(target=flood, args=(25,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.monotonic() - t0
        self.assertEqual(len(statuses), 200)
        self.assertEqual([s for s in statuses if s != 401], [])
        self.assertEqual(wwws, {invalid_token_header(PUBLIC_INVALID)})
        after = entra.stats()
        jwks_delta = after["jwks_fetches"] - base["jwks_fetches"]
        meta_delta = after["metadata_fetches"] - base["metadata_fetches"]
        self.assertGreaterEqual(jwks_delta, 1, "no refetch at all for unknown kids")
        self.assertLessEqual(jwks_delta, per_round, f"{jwks_delta} key fetches for one refetch interval")
        self.assertLessEqual(meta_delta, per_round)
        self.assertEqual(up.stats()["requests"], 0)
        self.assertLess(took, 60.0)
        # The flood left the gateway serving real tokens.
        st, _, b = request(gw.port, "POST", CHAT, chat_body(), bearer(mint(entra.key_path(kid), kid, v2_claims(entra))))
        self.assertEqual(st, 200, b)


class JwksOutage(AuthTestCase):
    def test_jwks_down_at_start_then_up(self):
        entra = self.start_entra()
        kid = entra.kids()[0]
        entra.down()
        up = self.fake()
        gw = self.gateway(base_config([upstream(up)], auth=auth_section(entra, rules=RULES)))
        tok = mint(entra.key_path(kid), kid, v2_claims(entra))
        st, body = readyz(gw)
        self.assertEqual(st, 503, body)
        rid = new_rid()
        st, h, b = request(gw.port, "POST", CHAT, chat_body(), bearer(tok, rid))
        self.assertEqual(st, 503, b)
        self.assertEqual(json.loads(b), error_body("ServiceUnavailable", PUBLIC_NO_KEYS))
        self.assertNotIn("www-authenticate", h)
        self.assertEqual(h.get("connection", "").lower(), "close")
        self.assertTrue(self.access_line(gw, rid).get("error_code"))
        self.assert_reason_logged(gw, rid, "no_keys")
        # Still down: still not ready (a few failed rounds later).
        st, body = readyz(gw)
        self.assertEqual(st, 503, body)
        self.assertEqual(up.requests(), [])
        entra.up()
        self.wait_ready(gw, timeout=60)
        st, h, b = request(gw.port, "POST", CHAT, chat_body(), bearer(tok))
        self.assertEqual(st, 200, b)

    def test_jwks_down_later_keeps_the_last_good_keys(self):
        entra = self.start_entra()
        kid = entra.kids()[0]
        up = self.fake(extra=["--no-record"])
        gw = self.gateway(base_config([upstream(up)], auth=auth_section(entra, rules=RULES, jwks_refresh_s=1,
                                                                         unknown_kid_refetch_s=1)))
        self.wait_ready(gw)
        key = entra.key_path(kid)

        def fresh():  # a token the gateway has not cached yet
            return mint(key, kid, v2_claims(entra, jti=uuid.uuid4().hex))
        st, _, b = request(gw.port, "POST", CHAT, chat_body(), bearer(fresh()))
        self.assertEqual(st, 200, b)
        entra.down()
        # An unknown kid forces a refetch now; it fails, the kid stays unknown, the old keys stay.
        st, h, b = request(gw.port, "POST", CHAT, chat_body(), bearer(forged(v2_claims(entra), "kid-during-outage")))
        self.assertEqual(st, 401, b)
        self.assertEqual(h.get("www-authenticate"), invalid_token_header(PUBLIC_INVALID))
        # Several background refresh periods (jwks_refresh_s 1) pass while fresh tokens keep passing.
        t_end = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < t_end:
            st, _, b = request(gw.port, "POST", CHAT, chat_body(), bearer(fresh()))
            self.assertEqual(st, 200, b)
            n += 1
        self.assertGreater(n, 3)
        st, body = readyz(gw)
        self.assertEqual(st, 200, body)
        # Back up: refreshing resumes (fetches counted by the fake again) and tokens keep passing.
        before = entra.stats()["jwks_fetches"]
        entra.up()
        wait_until(lambda: entra.stats()["jwks_fetches"] > before, 60, what="key refresh after the outage")
        st, _, b = request(gw.port, "POST", CHAT, chat_body(), bearer(fresh()))
        self.assertEqual(st, 200, b)


class UpstreamCredential(AuthTestCase):
    """Upstream auth type entra: the proxy's own token from fake_identity, never the caller's."""

    def setup_gateway(self, expires_in=3600, refresh_before_s=300, fail=None):
        self.entra = self.start_entra()
        self.kid = self.entra.kids()[0]
        self.ident = self.track(FakeIdentity(self.tmp, expires_in=expires_in))
        if fail:
            self.ident.fail(*fail)
        self.up = self.fake(api_key=None)
        u = {"name": "aoai", "url": self.up.url, "auth": {"type": "entra"}}
        self.gw = self.gateway(base_config([u], auth=auth_section(self.entra, rules=RULES),
                                           credential=self.ident.credential_section(refresh_before_s)))

    def caller_token(self):
        return mint(self.entra.key_path(self.kid), self.kid, v2_claims(self.entra, jti=uuid.uuid4().hex))

    def test_upstream_receives_the_proxy_token_never_the_callers(self):
        self.setup_gateway()
        self.wait_ready(self.gw)
        tok = self.caller_token()
        rid = new_rid()
        st, h, b = request(self.gw.port, "POST", CHAT, chat_body(), dict(bearer(tok, rid), **{"api-key": "caller-key-xyz"}))
        self.assertEqual(st, 200, b)
        stats = self.ident.stats()
        self.assertGreaterEqual(stats["issued"], 1)
        self.assertEqual(stats["last_scope"], COGNITIVE_SCOPE)
        rec = self.up.requests()[-1]
        self.assertEqual(header_values(rec, "x-request-id"), [rid])
        auths = header_values(rec, "authorization")
        self.assertEqual(len(auths), 1, auths)
        self.assertRegex(auths[0], r"^Bearer fake-token-(\d+)-" + COGNITIVE_SCOPE.replace(".", r"\.") + "$")
        n = int(auths[0].split("-")[2])
        self.assertLessEqual(n, stats["issued"])
        self.assertEqual(header_values(rec, "api-key"), [])
        blob = json.dumps(rec)
        for part in tok.split("."):
            self.assertNotIn(part, blob)
        self.assertNotIn("caller-key-xyz", blob)
        line = self.access_line(self.gw, rid)
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["oid"], OID)

    def test_readyz_waits_for_the_proxy_token(self):
        # The first two token requests fail (IMDS-style retries follow at about 2 s and 6 s).
        self.setup_gateway(fail=(500, 2))
        st, body = readyz(self.gw)
        self.assertEqual(st, 503, body)
        self.wait_ready(self.gw, timeout=60)
        stats = self.ident.stats()
        self.assertEqual(stats["injected"], 2)
        self.assertGreaterEqual(stats["issued"], 1)
        st, _, b = request(self.gw.port, "POST", CHAT, chat_body(), bearer(self.caller_token()))
        self.assertEqual(st, 200, b)
        auths = header_values(self.up.requests()[-1], "authorization")
        self.assertRegex(auths[0], r"^Bearer fake-token-\d+-")

    def test_proxy_token_refreshed_before_expiry(self):
        # 8 s tokens refreshed 2 s before expiry: three distinct tokens within about 20 s.
        self.setup_gateway(expires_in=8, refresh_before_s=2)
        self.wait_ready(self.gw)
        tok = self.caller_token()
        statuses = []

        def distinct():
            st, _, b = request(self.gw.port, "POST", CHAT, chat_body(), bearer(tok))
            statuses.append(st)
            if st != 200:
                raise AssertionError(f"request failed during token refresh: {st} {b!r}")
            return len(set(self.tokens_seen())) >= 3
        wait_until(distinct, 45, interval=0.1, what="three distinct upstream tokens")
        self.assertEqual(set(statuses), {200})
        values = self.tokens_seen()
        self.assertEqual(len(values), len(statuses))
        numbers = [int(v.split("-")[2]) for v in values]
        self.assertEqual(numbers, sorted(numbers), "an older token was used after a newer one")
        self.assertEqual(self.ident.stats()["rejected"], 0)

    def tokens_seen(self):
        """The bearer tokens the upstream received, in order, one per request."""
        out = []
        for rec in self.up.requests():
            auths = header_values(rec, "authorization")
            self.assertEqual(len(auths), 1, rec["headers"])
            self.assertRegex(auths[0], r"^Bearer fake-token-\d+-" + COGNITIVE_SCOPE.replace(".", r"\.") + "$")
            out.append(auths[0][len("Bearer "):])
        return out


class ApiKeyMode(AuthTestCase):
    KEY_A = "team-a-key-0123456789abcdef"
    KEY_B = "team-b-key-fedcba9876543210"

    def setUp(self):
        super().setUp()
        self.up = self.fake()
        auth = {"mode": "api_key", "api_keys": [
            {"name": "team-a", "key": self.KEY_A, "deployments": ["gpt-4o-mini"]},
            {"name": "team-b", "key": self.KEY_B, "deployments": ["*"]}]}
        self.gw = self.gateway(base_config([upstream(self.up)], auth=auth))
        self.wait_ready(self.gw)

    def test_keys_map_to_named_identities(self):
        for name, key, path in [("team-a", self.KEY_A, CHAT), ("team-b", self.KEY_B, CHAT_4O)]:
            with self.subTest(identity=name):
                rid = new_rid()
                st, h, b = request(self.gw.port, "POST", path, chat_body(), {"api-key": key, "x-request-id": rid})
                self.assertEqual(st, 200, b)
                line = self.access_line(self.gw, rid)
                self.assertEqual(line["identity"], name)
                self.assertEqual(line["identity_type"], "api_key")
                rec = self.up.requests()[-1]
                # The caller's key is replaced by the upstream's own.
                self.assertEqual(header_values(rec, "api-key"), [self.up.api_key])
                self.assertNotIn(key, json.dumps(rec))

    def test_wrong_or_missing_key_gets_401(self):
        self.assert_rejected(self.gw, self.up, {"api-key": "team-a-key-0123456789abcdeX"}, 401, None,
                             error_body("401", PUBLIC_BAD_API_KEY), "bad_api_key")
        self.assert_rejected(self.gw, self.up, {"api-key": "short"}, 401, None,
                             error_body("401", PUBLIC_BAD_API_KEY), "bad_api_key")
        # A bearer token is not an api key.
        self.assert_rejected(self.gw, self.up, {"Authorization": f"Bearer {self.KEY_A}"}, 401, None,
                             error_body("401", PUBLIC_MISSING), "no_credentials")

    def test_key_not_granted_the_deployment_gets_403(self):
        line = self.assert_rejected(self.gw, self.up, {"api-key": self.KEY_A}, 403, None,
                                    error_body("PermissionDenied", PUBLIC_FORBIDDEN), "forbidden", path=CHAT_4O,
                                    close=False)
        self.assertEqual(line.get("identity"), "team-a")
        line = self.assert_rejected(self.gw, self.up, {"api-key": self.KEY_A}, 403, None,
                                    error_body("PermissionDenied", PUBLIC_FORBIDDEN), "forbidden", path=V1_CHAT,
                                    payload=chat_body(model="gpt-4o"), close=False)
        self.assertEqual(line.get("identity"), "team-a")

    def test_key_limited_to_one_deployment_cannot_use_multipart_v1_operations(self):
        headers = {"api-key": self.KEY_A, "Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"}
        self.assert_rejected(self.gw, self.up, headers, 403, None, error_body("PermissionDenied", PUBLIC_FORBIDDEN),
                             "forbidden", path="/openai/v1/audio/transcriptions", payload=multipart_transcription(),
                             close=False)
