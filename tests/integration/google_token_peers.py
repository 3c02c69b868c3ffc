"""Stand-ins for Google's token endpoints and a GCS XML-API bucket, for
test_credentials_google.py. Each is an http.server on 127.0.0.x, run in a thread of the
test process and stopped with server.shutdown().

* GoogleTokenPeer speaks the documented wire formats:
  - POST /token: the OAuth 2.0 token endpoint (oauth2.googleapis.com/token):
    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer (a service-account JWT
    assertion, whose RS256 signature is verified with the key's public half) and
    grant_type=refresh_token (authorized_user);
  - POST /v1/token: STS token exchange (workload identity federation);
  - POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken: IAM Credentials
    impersonation (the STS token as bearer);
  - GET /computeMetadata/v1/instance[/service-accounts/default/token]: the metadata
    server (Metadata-Flavor: Google both ways);
  - GET /subject: a URL credential source (JSON {"id_token": ...}).
  It issues distinguishable tokens ("ya29.sa-N-…", "ya29.user-N-…", "ya29.sts-N-…",
  "ya29.imp-N-…", "ya29.md-N-…") and records what each request carried.
* GcsPeer: ListObjectsV2-style listing and ranged GETs over a local directory, refusing
  any request whose bearer token the token peer did not issue (or that has expired).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
import urllib.parse
from pathlib import Path
from xml.sax.saxutils import escape

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness import free_port
from http_peers import LoopbackHttpServer, QuietHandler, read_body, reply

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def new_rsa_key() -> tuple[str, object]:
    """(PKCS#8 PEM private key, public key object)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class _Peer(LoopbackHttpServer):
    """Binds host:<free port> at start()."""

    host = "127.0.0.1"

    def start(self):
        peer = self

        class Handler(QuietHandler):
            def do_GET(self):
                peer._handle(self, "GET")

            def do_HEAD(self):
                peer._handle(self, "HEAD")

            def do_POST(self):
                peer._handle(self, "POST")

        self.listen(Handler, self.host)
        return super().start()

    @property
    def url(self) -> str:
        return self.endpoint


class GoogleTokenPeer(_Peer):
    def __init__(self, host: str = "127.0.0.21"):
        self.host = host
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.issued: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.counter = 0
        # Configuration the tests change between scenarios.
        self.expires_in = 3600
        self.public_keys: dict[str, object] = {}  # client_email -> public key
        self.users: dict[str, tuple[str, str]] = {}  # refresh_token -> (client_id, secret)
        self.subject_file: Path | None = None  # rotate this file on each STS exchange
        self.subject_tokens: set[str] = set()  # subject tokens STS accepts
        self.url_subject = None  # (token, required header name, value) for GET /subject
        self.refuse: str | None = None  # an OAuth error code every token request gets

    # -- helpers for tests ---------------------------------------------------------------

    def reset(self):
        with self.lock:
            self.records.clear()

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.records]

    def secrets(self) -> set[str]:
        """Everything secret this peer saw or gave out."""
        out = set(self.issued)
        for r in self.records:
            for k in ("assertion", "refresh_token", "client_secret", "subject_token", "bearer"):
                if r.get(k):
                    out.add(r[k])
        out |= self.subject_tokens
        return out

    def _issue(self, kind: str, lifetime: int | None = None) -> tuple[str, int]:
        with self.lock:
            self.counter += 1
            life = self.expires_in if lifetime is None else lifetime
            token = f"ya29.{kind}-{self.counter}-{secrets.token_urlsafe(12)}"
            self.issued[token] = time.time() + life
            return token, life

    def valid(self, token: str) -> bool:
        with self.lock:
            exp = self.issued.get(token)
        return exp is not None and time.time() < exp

    def _record(self, rec: dict):
        with self.lock:
            self.records.append(rec)

    def _oauth_error(self, h, code: str, status: int = 400):
        reply(h, status, json.dumps({"error": code, "error_description": "refused by stand-in"}).encode())

    def _token_answer(self, h, kind: str):
        token, life = self._issue(kind)
        reply(h, 200, json.dumps({"access_token": token, "expires_in": life,
                                  "token_type": "Bearer"}).encode())
        return token

    # -- routes --------------------------------------------------------------------------

    def _handle(self, h, method: str):
        url = urllib.parse.urlsplit(h.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        ua = h.headers.get("User-Agent", "")
        if method == "GET" and path.startswith("/computeMetadata/v1/"):
            return self._metadata(h, path, query, ua)
        if method == "GET" and path == "/subject":
            return self._subject(h)
        if method != "POST":
            return reply(h, 404, b"{}")
        body = read_body(h)
        if path == "/token":
            return self._oauth_token(h, urllib.parse.parse_qs(body.decode()), ua)
        if path == "/v1/token":
            return self._sts(h, urllib.parse.parse_qs(body.decode()), ua)
        if path.endswith(":generateAccessToken"):
            return self._impersonate(h, path, body, ua)
        return reply(h, 404, b"{}")

    def _oauth_token(self, h, form: dict, ua: str):
        one = {k: v[0] for k, v in form.items()}
        grant = one.get("grant_type")
        if grant == JWT_BEARER:
            assertion = one.get("assertion", "")
            rec = {"kind": "sa", "ua": ua, "assertion": assertion, "verified": False}
            try:
                head_b64, claims_b64, sig_b64 = assertion.split(".")
                rec["header"] = json.loads(_b64url_decode(head_b64))
                claims = json.loads(_b64url_decode(claims_b64))
                rec.update(iss=claims.get("iss"), aud=claims.get("aud"), scope=claims.get("scope"),
                           iat=claims.get("iat"), exp=claims.get("exp"))
                key = self.public_keys.get(claims.get("iss"))
                if key is not None:
                    key.verify(_b64url_decode(sig_b64), f"{head_b64}.{claims_b64}".encode(),
                               padding.PKCS1v15(), hashes.SHA256())
                    rec["verified"] = rec["header"].get("alg") == "RS256"
            except Exception as e:  # noqa: BLE001 - any malformed assertion is refused
                rec["problem"] = type(e).__name__
            self._record(rec)
            if self.refuse:
                return self._oauth_error(h, self.refuse)
            if not rec["verified"]:
                return self._oauth_error(h, "invalid_grant")
            return self._token_answer(h, "sa")
        if grant == "refresh_token":
            rt = one.get("refresh_token", "")
            rec = {"kind": "user", "ua": ua, "refresh_token": rt, "client_id": one.get("client_id"),
                   "client_secret": one.get("client_secret")}
            self._record(rec)
            if self.refuse:
                return self._oauth_error(h, self.refuse)
            if self.users.get(rt) != (one.get("client_id"), one.get("client_secret")):
                return self._oauth_error(h, "invalid_grant")
            return self._token_answer(h, "user")
        self._record({"kind": "bad-grant", "ua": ua, "grant_type": grant})
        return self._oauth_error(h, "unsupported_grant_type")

    def _sts(self, h, form: dict, ua: str):
        one = {k: v[0] for k, v in form.items()}
        rec = {"kind": "sts", "ua": ua, **{k: one.get(k) for k in (
            "grant_type", "audience", "scope", "requested_token_type", "subject_token",
            "subject_token_type")}}
        self._record(rec)
        if self.refuse:
            return self._oauth_error(h, self.refuse)
        if one.get("grant_type") != TOKEN_EXCHANGE or one.get("subject_token") not in self.subject_tokens:
            return self._oauth_error(h, "invalid_grant")
        if self.subject_file is not None:
            # The platform rotates the projected token: the old one stops working.
            fresh = f"subject-{secrets.token_urlsafe(8)}"
            with self.lock:
                self.subject_tokens = {fresh}
            tmp = self.subject_file.with_suffix(".tmp")
            tmp.write_text(fresh)
            os.replace(tmp, self.subject_file)
        token, life = self._issue("sts")
        reply(h, 200, json.dumps({"access_token": token, "expires_in": life,
                                  "issued_token_type": rec["requested_token_type"],
                                  "token_type": "Bearer"}).encode())

    def _impersonate(self, h, path: str, body: bytes, ua: str):
        auth = h.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else ""
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {}
        email = urllib.parse.unquote(path.rsplit("/", 1)[-1].split(":")[0])
        rec = {"kind": "imp", "ua": ua, "bearer": bearer, "email": email,
               "scope": data.get("scope"), "lifetime": data.get("lifetime")}
        self._record(rec)
        if not bearer.startswith("ya29.sts-") or not self.valid(bearer):
            return reply(h, 401, json.dumps({"error": {"code": 401, "status": "UNAUTHENTICATED"}}).encode())
        token, life = self._issue("imp")
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + life))
        reply(h, 200, json.dumps({"accessToken": token, "expireTime": expire}).encode())

    def _metadata(self, h, path: str, query: dict, ua: str):
        flavor = {"Metadata-Flavor": "Google"}
        if h.headers.get("Metadata-Flavor") != "Google":
            return reply(h, 403, b"missing Metadata-Flavor", "text/plain", flavor)
        if path.rstrip("/") == "/computeMetadata/v1/instance":
            self._record({"kind": "md-ping", "ua": ua})
            return reply(h, 200, b"attributes/\nid\n", "application/text", flavor)
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            self._record({"kind": "md", "ua": ua, "scopes": (query.get("scopes") or [None])[0]})
            token, life = self._issue("md")
            return reply(h, 200, json.dumps({"access_token": token, "expires_in": life,
                                             "token_type": "Bearer"}).encode(),
                         "application/json", flavor)
        return reply(h, 404, b"", "text/plain", flavor)

    def _subject(self, h):
        token, name, value = self.url_subject
        self._record({"kind": "subject-url", "header": h.headers.get(name)})
        if h.headers.get(name) != value:
            return reply(h, 403, b"{}")
        reply(h, 200, json.dumps({"id_token": token}).encode())


class GcsPeer(_Peer):
    """A bucket over `root` (bucket name -> directory), XML API path style."""

    def __init__(self, root: Path, bucket: str, tokens: GoogleTokenPeer, host: str = "127.0.0.22"):
        self.root, self.bucket, self.tokens, self.host = Path(root), bucket, tokens, host
        self.lock = threading.Lock()
        self.public = False  # allow anonymous reads (a public bucket)
        self.revoke_first = False  # revoke the first token after its first object read
        self.seen: list[str | None] = []  # bearer token of each request (None: anonymous)
        self.refused = 0

    def reset(self):
        with self.lock:
            self.seen.clear()
            self.refused = 0

    def _authorized(self, h) -> bool:
        auth = h.headers.get("Authorization")
        token = auth[7:] if auth and auth.startswith("Bearer ") else None
        with self.lock:
            self.seen.append(token)
        if token is None:
            return self.public and auth is None
        return self.tokens.valid(token)

    def _deny(self, h, head):
        with self.lock:
            self.refused += 1
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                b"<Message>Access denied.</Message></Error>")
        reply(h, 401, body, "application/xml", head=head)

    def _handle(self, h, method: str):
        url = urllib.parse.urlsplit(h.path)
        parts = urllib.parse.unquote(url.path).lstrip("/").split("/", 1)
        head = method == "HEAD"
        if not self._authorized(h):
            return self._deny(h, head)
        if parts[0] != self.bucket:
            return reply(h, 404, b"<Error><Code>NoSuchBucket</Code></Error>", "application/xml", head=head)
        if len(parts) == 1 or parts[1] == "":
            return self._list(h, urllib.parse.parse_qs(url.query), head)
        key = parts[1]
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return reply(h, 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml", head=head)
        if self.revoke_first:
            token = h.headers["Authorization"][7:]
            with self.tokens.lock:
                self.tokens.issued[token] = 0  # the next request with it is refused
            self.revoke_first = False
        data = path.read_bytes()
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            a = int(a)
            b = min(int(b) if b else len(data) - 1, len(data) - 1)
            return reply(h, 206, data[a:b + 1], "application/octet-stream",
                         {"Content-Range": f"bytes {a}-{b}/{len(data)}"}, head)
        return reply(h, 200, data, "application/octet-stream", head=head)

    def _list(self, h, query: dict, head: bool):
        prefix = (query.get("prefix") or [""])[0]
        items = []
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    items.append(f"<Contents><Key>{escape(key)}</Key><Size>{p.stat().st_size}</Size></Contents>")
        body = ("<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"
                f"<Name>{self.bucket}</Name><Prefix>{escape(prefix)}</Prefix>"
                f"<KeyCount>{len(items)}</KeyCount><IsTruncated>false</IsTruncated>"
                + "".join(items) + "</ListBucketResult>").encode()
        reply(h, 200, body, "application/xml", head=head)


def closed_port(host: str) -> int:
    """A port on host that nothing listens on (bound then released)."""
    return free_port(host)
