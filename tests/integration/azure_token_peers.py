"""Azure identity stand-ins for test_credentials_azure.py, written from the documented wire
formats (Microsoft identity platform v2.0 token endpoint, IMDS, App Service managed identity):

* ``AzureAD``: an HTTPS Azure AD (authority host) on 127.0.0.1. It answers MSAL's OpenID
  configuration (and instance discovery, should anything ask) and the token endpoint's
  client_credentials grant with a client secret, a certificate's client assertion (RS256 or
  PS256, verified against the registered certificate) or a federated token (workload
  identity).
* ``ManagedIdentity``: IMDS (``/metadata/identity/oauth2/token``, ``Metadata: true``) and App
  Service (``X-IDENTITY-HEADER``, api-version 2019-08-01) on one plain-HTTP 127.0.0.1 port.
* ``AzuriteOAuth``: storage_peers.Azurite over HTTPS with ``--oauth basic``.

Each issued token is a JWT Azurite's "basic" OAuth accepts (iss https://sts.windows.net/<tenant>/,
aud https://storage.azure.com, nbf/iat/exp), carrying which link issued it (``mx_link``), a
serial number and the client; every request is recorded (user agent, grant, client, scope,
assertion, the token issued). Stopped with stop() (server.shutdown())."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from unittest import mock

from harness import free_port
from http_peers import LoopbackHttpServer, QuietHandler, relay_head, reply
from storage_peers import AZURITE_ACCOUNT, Azurite

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

STORAGE_SCOPE = "https://storage.azure.com/.default"
STORAGE_RESOURCE = "https://storage.azure.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_claims(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[1]))


def make_tls_cert(directory: Path, name: str = "tls") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem). The cert is
    its own CA bundle (CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS)."""
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def make_client_certificate(directory: Path, name: str = "sp") -> tuple[Path, bytes]:
    """A service principal's certificate: one PEM with the private key and the certificate
    (what AZURE_CLIENT_CERTIFICATE_PATH names). Returns (path, certificate DER)."""
    cert, key = make_tls_cert(directory, name)
    both = directory / f"{name}-both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return both, der


class _Peer(LoopbackHttpServer):
    """Common plumbing: a threaded server, a request log, a token serial."""

    def __init__(self, tls: tuple[Path, Path] | None):
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.serial = 0
        self.expires_in = 3599
        # JWT exp relative to now, when it should differ from expires_in (a token the
        # endpoint says is good but storage already refuses: a revoked / expired one).
        self.jwt_lifetime_override: list[int] = []
        peer = self

        class Handler(QuietHandler):
            def do_GET(self):
                peer._handle(self, "GET", b"")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                peer._handle(self, "POST", self.rfile.read(min(n, 1 << 20)))

        super().__init__(Handler, tls=tls)

    def reset(self):
        with self.lock:
            self.records.clear()
            self.jwt_lifetime_override.clear()
            self.expires_in = 3599

    def issue(self, link: str, tenant: str, client: str) -> tuple[str, int]:
        """A JWT Azurite accepts, naming the link; returns (token, expires_in)."""
        with self.lock:
            self.serial += 1
            serial = self.serial
            expires_in = self.expires_in
            lifetime = self.jwt_lifetime_override.pop(0) if self.jwt_lifetime_override else expires_in
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"aud": STORAGE_RESOURCE, "iss": f"https://sts.windows.net/{tenant}/",
                  "iat": now - 5, "nbf": now - 5, "exp": now + lifetime, "tid": tenant,
                  "appid": client, "mx_link": link, "mx_serial": serial}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = b64url(hashlib.sha256(b"stand-in:" + signing_input.encode()).digest())
        return f"{signing_input}.{sig}", expires_in

    def _send(self, h, status: int, body: dict):
        reply(h, status, json.dumps(body))

    def _record(self, **fields):
        with self.lock:
            self.records.append(fields)

    def token_records(self, who: str | None = None) -> list[dict]:
        """Token requests answered with a token; who: "mx" or "sdk" (by user agent)."""
        with self.lock:
            out = [r for r in self.records if r.get("token")]
        if who == "mx":
            out = [r for r in out if r["user_agent"].startswith("mx/")]
        elif who == "sdk":
            out = [r for r in out if not r["user_agent"].startswith("mx/")]
        return out


class AzureAD(_Peer):
    """An Azure AD authority host over HTTPS. Register clients with add_secret /
    add_certificate / add_federated (expected federated tokens: a callable returning the
    file's current content, so rotation is checked)."""

    def __init__(self, tls: tuple[Path, Path]):
        super().__init__(tls)
        self.secrets: dict[str, str] = {}
        self.certificates: dict[str, bytes] = {}  # client -> DER
        self.federated: dict[str, object] = {}     # client -> callable() -> current token
        self.on_federated = None                    # called after each workload identity grant

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _handle(self, h, method: str, body: bytes):
        url = urllib.parse.urlsplit(h.path)
        parts = [p for p in url.path.split("/") if p]
        ua = h.headers.get("User-Agent", "")
        base = self.authority
        if method == "GET" and parts[-3:] == ["v2.0", ".well-known", "openid-configuration"]:
            tenant = parts[0]
            return self._send(h, 200, {
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/{tenant}/oauth2/v2.0/logout",
                "issuer": f"{base}/{tenant}/v2.0",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                          "client_secret_basic"]})
        if method == "GET" and parts[-2:] == ["discovery", "instance"]:
            host = f"127.0.0.1:{self.port}"
            return self._send(h, 200, {
                "tenant_discovery_endpoint": f"{base}/common/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]})
        if method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self._token(h, parts[0], urllib.parse.parse_qs(body.decode(errors="replace")), ua)
        self._record(path=url.path, method=method, user_agent=ua, token=None)
        return self._send(h, 404, {"error": "not_found"})

    def _token(self, h, tenant: str, form: dict, ua: str):
        f = {k: v[0] for k, v in form.items()}
        client = f.get("client_id", "")
        rec = {"path": f"/{tenant}/oauth2/v2.0/token", "user_agent": ua, "tenant": tenant,
               "grant_type": f.get("grant_type"), "client_id": client, "scope": f.get("scope"),
               "assertion_type": f.get("client_assertion_type"),
               "assertion": f.get("client_assertion"), "secret_ok": None, "link": None,
               "token": None}
        link, error = None, None
        if f.get("grant_type") != "client_credentials":
            error = "unsupported_grant_type"
        elif "client_secret" in f:
            rec["secret_ok"] = self.secrets.get(client) == f["client_secret"]
            link, error = "client_secret", (None if rec["secret_ok"] else "invalid_client")
        elif f.get("client_assertion_type") == JWT_BEARER and client in self.certificates:
            ok, why = self._check_assertion(f.get("client_assertion", ""), client, tenant)
            rec["assertion_check"] = why
            link, error = "client_certificate", (None if ok else "invalid_client")
        elif f.get("client_assertion_type") == JWT_BEARER and client in self.federated:
            expected = self.federated[client]()
            rec["assertion_current"] = f.get("client_assertion") == expected
            link, error = "workload_identity", (None if rec["assertion_current"] else "invalid_grant")
        else:
            error = "invalid_client"
        if error:
            self._record(**rec, error=error)
            # A hostile endpoint echoes what it was sent: mx must not print it.
            echoed = f.get("client_secret") or f.get("client_assertion") or ""
            return self._send(h, 401 if error == "invalid_client" else 400, {
                "error": error, "error_description": f"AADSTS700016: stand-in refused ({error}) {echoed}",
                "error_codes": [700016]})
        token, expires_in = self.issue(link, tenant, client)
        rec.update(link=link, token=token)
        self._record(**rec)
        if link == "workload_identity" and self.on_federated:
            self.on_federated()
        return self._send(h, 200, {"token_type": "Bearer", "expires_in": expires_in,
                                   "ext_expires_in": expires_in, "access_token": token})

    def _check_assertion(self, assertion: str, client: str, tenant: str) -> tuple[bool, str]:
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
            der = self.certificates[client]
            cert = x509.load_der_x509_certificate(der)
            signing_input = f"{head_b64}.{claims_b64}".encode()
            sig = b64url_decode(sig_b64)
            if header.get("alg") == "RS256":
                if header.get("x5t") != b64url(hashlib.sha1(der).digest()):
                    return False, "x5t is not the certificate's SHA-1 thumbprint"
                cert.public_key().verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
            elif header.get("alg") == "PS256":
                if header.get("x5t#S256") != b64url(hashlib.sha256(der).digest()):
                    return False, "x5t#S256 is not the certificate's SHA-256 thumbprint"
                cert.public_key().verify(sig, signing_input, padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO), hashes.SHA256())
            else:
                return False, f"alg {header.get('alg')}"
            now = time.time()
            if claims.get("iss") != client or claims.get("sub") != client:
                return False, "iss/sub is not the client"
            if claims.get("aud") != f"{self.authority}/{tenant}/oauth2/v2.0/token":
                return False, f"aud {claims.get('aud')}"
            if not (claims.get("nbf", 0) - 300 <= now <= claims.get("exp", 0)):
                return False, "outside nbf..exp"
            return True, f"valid {header['alg']}"
        except Exception as e:  # a malformed assertion is a refusal, not a crash
            return False, f"malformed: {type(e).__name__}"


class ManagedIdentity(_Peer):
    """IMDS and App Service managed identity on one plain-HTTP port (both are http:// on a
    link-local / loopback address in Azure too)."""

    IMDS_PATH = "/metadata/identity/oauth2/token"
    APP_SERVICE_PATH = "/msi/token"

    def __init__(self, identity_header: str = "app-service-header-secret"):
        super().__init__(None)
        self.identity_header = identity_header

    @property
    def host(self) -> str:  # AZURE_POD_IDENTITY_AUTHORITY_HOST
        return f"http://127.0.0.1:{self.port}"

    @property
    def app_service_endpoint(self) -> str:  # IDENTITY_ENDPOINT
        return f"http://127.0.0.1:{self.port}{self.APP_SERVICE_PATH}"

    def _handle(self, h, method: str, body: bytes):
        url = urllib.parse.urlsplit(h.path)
        path = url.path.rstrip("/")  # msal-node asks for ".../token/"
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        ua = h.headers.get("User-Agent", "")
        rec = {"path": path, "user_agent": ua, "api_version": q.get("api-version"),
               "resource": q.get("resource"), "client_id": q.get("client_id"), "link": None,
               "token": None}
        if path == self.IMDS_PATH:
            if h.headers.get("Metadata", "").lower() != "true":
                # What IMDS answers a request without the header (the SDK's probe).
                self._record(**rec, error="no Metadata header")
                return self._send(h, 400, {"error": "invalid_request",
                                           "error_description": "Required metadata header not specified"})
            link, version = "imds", "2018-02-01"
        elif path == self.APP_SERVICE_PATH:
            if h.headers.get("X-IDENTITY-HEADER") != self.identity_header:
                self._record(**rec, error="bad X-IDENTITY-HEADER")
                return self._send(h, 401, {"statusCode": 401, "message": "bad identity header "
                                           + h.headers.get("X-IDENTITY-HEADER", "")})
            link, version = "app_service", "2019-08-01"
        else:
            self._record(**rec, error="unknown path")
            return self._send(h, 404, {"error": "not_found"})
        if q.get("api-version") != version or q.get("resource") != STORAGE_RESOURCE:
            self._record(**rec, error="bad query")
            return self._send(h, 400, {"error": "invalid_request", "error_description": "bad query"})
        client = q.get("client_id") or "system-assigned"
        token, expires_in = self.issue(link, "mi-tenant", client)
        rec.update(link=link, token=token)
        self._record(**rec)
        now = int(time.time())
        return self._send(h, 200, {"access_token": token, "client_id": client,
                                   "expires_in": str(expires_in), "expires_on": str(now + expires_in),
                                   "ext_expires_in": str(expires_in), "not_before": str(now),
                                   "resource": STORAGE_RESOURCE, "token_type": "Bearer"})


class AzuriteOAuth(Azurite):
    """Azurite over HTTPS with --oauth basic (bearer tokens need HTTPS there). Seeded with
    storage_peers.Azurite's own SharedKey requests, over TLS."""

    def __init__(self, tmpdir, tls: tuple[Path, Path], container="models"):
        super().__init__(tmpdir, container)
        self.tls = tls

    def _extra_args(self) -> list[str]:
        return ["--oauth", "basic", "--cert", str(self.tls[0]), "--key", str(self.tls[1])]

    @property
    def endpoint(self):
        return f"https://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def _request(self, method, path, query, body, extra=None):
        ctx = ssl.create_default_context(cafile=str(self.tls[0]))
        plain = http.client.HTTPConnection

        def tls_connection(host, port, timeout=60):
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)

        # The helper's SharedKey signing, unchanged; only its connection speaks TLS.
        with mock.patch.object(http.client, "HTTPConnection", tls_connection):
            assert http.client.HTTPSConnection.__mro__[1] is plain
            return super()._request(method, path, query, body, extra)


class RefusingProxy(LoopbackHttpServer):
    """An HTTPS proxy in front of AzuriteOAuth that refuses the first `refuse` ranged GETs
    with 403 AuthenticationFailed (what storage answers a token that expired or was revoked
    early) and records the bearer token of every ranged GET: the test of mx's renewal of a
    token after a 403 in the middle of reading."""

    def __init__(self, upstream: AzuriteOAuth, tls: tuple[Path, Path], refuse: int = 1):
        self.upstream = upstream
        self.refuse = refuse
        self.lock = threading.Lock()
        self.ranged: list[tuple[str, int]] = []  # (bearer token, status sent)
        ctx_up = ssl.create_default_context(cafile=str(tls[0]))
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if "Range" in self.headers:
                    with proxy.lock:
                        refuse = proxy.refuse > 0
                        proxy.refuse -= refuse
                        proxy.ranged.append((token, 403 if refuse else 206))
                    if refuse:
                        body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed'
                                b'</Code><Message>Lifetime validation failed. The token is expired.</Message></Error>')
                        return reply(self, 403, body, "application/xml")
                conn = http.client.HTTPSConnection("127.0.0.1", proxy.upstream.port, timeout=60, context=ctx_up)
                conn.request("GET", self.path, headers=dict(self.headers))
                r = conn.getresponse()
                data = r.read()
                conn.close()
                relay_head(self, r, len(data))
                self.wfile.write(data)

        super().__init__(Handler, tls=tls)

    @property
    def endpoint(self):
        return f"https://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
