"""Stand-ins for the AWS token endpoints, following their documented wire formats, and a
SigV4-checking proxy in front of s3rver. All bind 127.0.0.1 on free ports, run in threads
of the test process and are stopped with server.shutdown().

* ``StsStandIn``: STS AssumeRoleWithWebIdentity (AWS query protocol: a form POST, an XML
  answer). It accepts only the web-identity token currently in the token file it is
  given (a rotated-away token is refused, as a real issuer's would expire), and can
  rotate that file after each answer.
* ``ContainerStandIn``: the ECS / EKS Pod Identity credentials endpoint (GET, an
  ``Authorization`` header equal to the expected token, a JSON answer).
* ``ImdsStandIn``: EC2 instance metadata, IMDSv2 only (PUT /latest/api/token, then GETs
  carrying X-aws-ec2-metadata-token).
* ``S3AuthProxy``: verifies each request's SigV4 signature with the secret that was
  issued for its access key id, and that x-amz-security-token is the session token issued
  with it (and not revoked); records what it received; forwards the request to s3rver
  without credentials (s3rver serves anonymous reads). A request signed with anything the
  stand-ins did not issue is refused with 403, so a read that succeeds proves mx used the
  issued credential.

Issued credentials are deterministic in what the caller presented (role and web-identity
token, container token, instance role) and a generation that the test bumps to revoke:
mx and the SDK oracle, given the same environment, get the same credential, which the
tests compare through the proxy's records without mx ever printing one.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import threading
import urllib.parse
from pathlib import Path

from http_peers import LoopbackHttpServer, QuietHandler, read_body, relay_head, reply


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def _iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Every credential the stand-ins issued (or the test registered as static keys)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_token = {}  # session token ("" for long-term keys: keyed by akid) -> cred
        self.revoked = set()
        self.issued = []  # every credential, in order

    def issue(self, issuer: str, seed: str, lifetime_s: int) -> dict:
        h = _digest(issuer, seed)
        cred = {"issuer": issuer,
                "AccessKeyId": "ASIA" + h[:16].upper(),
                "SecretAccessKey": "sk-" + h[16:48],
                "SessionToken": "st-" + _digest("token", issuer, seed)[:40],
                "Expiration": _iso(datetime.datetime.now(datetime.timezone.utc)
                                   + datetime.timedelta(seconds=lifetime_s))}
        with self.lock:
            self.by_token[cred["SessionToken"]] = cred
            self.issued.append(cred)
        return cred

    def register_static(self, akid: str, secret: str, token: str = "", issuer: str = "static"):
        cred = {"issuer": issuer, "AccessKeyId": akid, "SecretAccessKey": secret, "SessionToken": token}
        with self.lock:
            self.by_token[token or "akid:" + akid] = cred
            self.issued.append(cred)

    def revoke(self, token: str):
        with self.lock:
            self.revoked.add(token)

    def secrets(self) -> set:
        """Every secret and session token known: what no mx output may contain."""
        with self.lock:
            out = set()
            for c in self.issued:
                out.add(c["SecretAccessKey"])
                if c.get("SessionToken"):
                    out.add(c["SessionToken"])
            return out


class _Server(LoopbackHttpServer):
    """A threaded http.server on 127.0.0.1:<free port> running `handler_cls`, with a request log."""

    def __init__(self, handler_cls):
        handler_cls.peer = self
        super().__init__(handler_cls, quiet_disconnects=True)
        self.lock = threading.Lock()
        self.records = []

    def record(self, **kw):
        with self.lock:
            self.records.append(kw)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.records)

    def clear(self):
        with self.lock:
            self.records.clear()


class _Handler(QuietHandler):
    peer = None

    def reply(self, status: int, body: bytes | str, ctype: str = "text/plain"):
        try:
            reply(self, status, body, ctype, head=self.command == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (a capped, oversized answer)

    def read_body(self) -> bytes:
        return read_body(self)


# ---------------------------------------------------------------------------------------
# STS
# ---------------------------------------------------------------------------------------

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def _sts_error(code: str, message: str) -> str:
    return (f'<ErrorResponse xmlns="{_STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>")


class StsStandIn(_Server):
    """AssumeRoleWithWebIdentity. `token_files`: the files whose current content is an
    accepted web-identity token. `rotate`: after each answer, write a new token into the
    file that was used. `refuse`: answer every call with this (status, code)."""

    def __init__(self, registry: Registry, token_files=(), lifetime_s: int = 3600,
                 rotate: bool = False, refuse: tuple | None = None):
        self.registry = registry
        self.token_files = [Path(p) for p in token_files]
        self.lifetime_s = lifetime_s
        self.rotate = rotate
        self.refuse = refuse
        self.generation = 0
        super().__init__(_StsHandler)

    def accepted(self) -> dict:
        out = {}
        for p in self.token_files:
            try:
                out[p.read_text()] = p
            except OSError:
                pass
        return out


class _StsHandler(_Handler):
    def do_POST(self):
        sts: StsStandIn = self.peer
        body = self.read_body().decode(errors="replace")
        form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        jwt = form.get("WebIdentityToken", "")
        rec = {"action": form.get("Action"), "version": form.get("Version"),
               "role_arn": form.get("RoleArn"), "session_name": form.get("RoleSessionName"),
               "web_identity_token": jwt, "authorization": self.headers.get("Authorization"),
               "path": self.path}
        if sts.refuse:
            status, code = sts.refuse
            sts.record(**rec, status=status)
            # Echoes the token, as a careless or hostile endpoint might: mx must not repeat it.
            return self.reply(status, _sts_error(code, f"Not authorized to perform sts:AssumeRoleWithWebIdentity "
                                                       f"with token {jwt}"), "text/xml")
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15" \
                or not form.get("RoleArn") or not form.get("RoleSessionName"):
            sts.record(**rec, status=400)
            return self.reply(400, _sts_error("InvalidParameterValue", "bad request"), "text/xml")
        accepted = sts.accepted()
        if jwt not in accepted:
            sts.record(**rec, status=400)
            return self.reply(400, _sts_error("InvalidIdentityToken", "token not accepted"), "text/xml")
        with sts.lock:
            generation = sts.generation
        cred = sts.registry.issue("sts", f"{form['RoleArn']}|{jwt}|{generation}", sts.lifetime_s)
        sts.record(**rec, status=200, issued=cred["AccessKeyId"], session_token=cred["SessionToken"])
        if sts.rotate:
            path = accepted[jwt]
            n = int(jwt.rsplit("-", 1)[-1]) + 1 if jwt.rsplit("-", 1)[-1].isdigit() else 1
            path.write_text(f"{jwt.rsplit('-', 1)[0]}-{n}")
        xml = (f'<AssumeRoleWithWebIdentityResponse xmlns="{_STS_NS}"><AssumeRoleWithWebIdentityResult>'
               f"<SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>"
               f"<Audience>sts.amazonaws.com</Audience>"
               f"<AssumedRoleUser><Arn>{form['RoleArn'].replace(':iam::', ':sts::').replace(':role/', ':assumed-role/')}/"
               f"{form['RoleSessionName']}</Arn><AssumedRoleId>AROA:{form['RoleSessionName']}</AssumedRoleId>"
               f"</AssumedRoleUser><Credentials><AccessKeyId>{cred['AccessKeyId']}</AccessKeyId>"
               f"<SecretAccessKey>{cred['SecretAccessKey']}</SecretAccessKey>"
               f"<SessionToken>{cred['SessionToken']}</SessionToken>"
               f"<Expiration>{cred['Expiration']}</Expiration></Credentials>"
               f"<Provider>oidc.eks.example</Provider></AssumeRoleWithWebIdentityResult>"
               f"<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
               f"</AssumeRoleWithWebIdentityResponse>")
        self.reply(200, xml, "text/xml")


# ---------------------------------------------------------------------------------------
# Container credentials (ECS / EKS Pod Identity)
# ---------------------------------------------------------------------------------------


class ContainerStandIn(_Server):
    """GET <path> with `Authorization: <token>`; the token is the current content of
    `token_file` (EKS Pod Identity projects and rotates it) or `token`."""

    def __init__(self, registry: Registry, token: str | None = None, token_file=None,
                 lifetime_s: int = 3600):
        self.registry = registry
        self.token = token
        self.token_file = Path(token_file) if token_file else None
        self.lifetime_s = lifetime_s
        self.generation = 0
        self.answer = None  # bytes: served instead of credentials (hostile answers)
        super().__init__(_ContainerHandler)

    def expected(self) -> str | None:
        if self.token_file:
            return self.token_file.read_text()
        return self.token


class _ContainerHandler(_Handler):
    def do_GET(self):
        c: ContainerStandIn = self.peer
        auth = self.headers.get("Authorization")
        if auth != c.expected():
            c.record(path=self.path, authorization=auth, status=401)
            return self.reply(401, json.dumps({"Code": "AccessDenied", "Message": "bad token"}),
                              "application/json")
        if c.answer is not None:
            c.record(path=self.path, authorization=auth, status=200, hostile=True)
            return self.reply(200, c.answer, "application/json")
        with c.lock:
            generation = c.generation
        cred = c.registry.issue("container", f"{auth}|{self.path}|{generation}", c.lifetime_s)
        c.record(path=self.path, authorization=auth, status=200, issued=cred["AccessKeyId"],
                 session_token=cred["SessionToken"])
        body = {"AccessKeyId": cred["AccessKeyId"], "SecretAccessKey": cred["SecretAccessKey"],
                "Token": cred["SessionToken"], "Expiration": cred["Expiration"],
                "AccountId": "123456789012"}
        self.reply(200, json.dumps(body), "application/json")


# ---------------------------------------------------------------------------------------
# EC2 instance metadata (IMDSv2)
# ---------------------------------------------------------------------------------------


class ImdsStandIn(_Server):
    def __init__(self, registry: Registry, role: str = "mx-node-role", lifetime_s: int = 3600):
        self.registry = registry
        self.role = role
        self.lifetime_s = lifetime_s
        self.tokens = set()
        self.generation = 0
        # None: IMDSv2 only. A status (403, 404, 405): the token call answers that and GETs
        # without a token are served (an IMDSv1-only service, which the SDK falls back to).
        self.token_status = None
        super().__init__(_ImdsHandler)


class _ImdsHandler(_Handler):
    def do_PUT(self):
        m: ImdsStandIn = self.peer
        self.read_body()
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if self.path != "/latest/api/token" or not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            m.record(method="PUT", path=self.path, ttl=ttl, status=400)
            return self.reply(400, "bad token request")
        if m.token_status:
            m.record(method="PUT", path=self.path, ttl=ttl, status=m.token_status)
            return self.reply(m.token_status, "")
        token = "imds-" + _digest("imds", len(m.tokens), m.port)[:32]
        with m.lock:
            m.tokens.add(token)
        m.record(method="PUT", path=self.path, ttl=ttl, status=200)
        self.reply(200, token)

    def do_GET(self):
        m: ImdsStandIn = self.peer
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token not in m.tokens and not (m.token_status and token is None):  # IMDSv2 only
            m.record(method="GET", path=self.path, token=bool(token), status=401)
            return self.reply(401, "")
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            m.record(method="GET", path=self.path, token=token is not None, status=200)
            return self.reply(200, m.role)
        if self.path == base + m.role:
            with m.lock:
                generation = m.generation
            cred = m.registry.issue("imds", f"{m.role}|{generation}", m.lifetime_s)
            m.record(method="GET", path=self.path, token=token is not None, status=200, issued=cred["AccessKeyId"],
                     session_token=cred["SessionToken"])
            body = {"Code": "Success", "LastUpdated": _iso(datetime.datetime.now(datetime.timezone.utc)),
                    "Type": "AWS-HMAC", "AccessKeyId": cred["AccessKeyId"],
                    "SecretAccessKey": cred["SecretAccessKey"], "Token": cred["SessionToken"],
                    "Expiration": cred["Expiration"]}
            return self.reply(200, json.dumps(body), "text/plain")
        m.record(method="GET", path=self.path, token=True, status=404)
        self.reply(404, "")


# ---------------------------------------------------------------------------------------
# The SigV4-checking proxy in front of s3rver
# ---------------------------------------------------------------------------------------


def _sigv4_expected(method, raw_path, headers, signed, secret, amz_date, scope) -> str:
    path, _, query = raw_path.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    q = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                 for k, v in sorted(pairs))
    canon_headers = "".join(f"{h}:{' '.join((headers.get(h) or '').split())}\n" for h in signed)
    canonical = "\n".join([method, path, q, canon_headers, ";".join(signed),
                           headers.get("x-amz-content-sha256") or "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class S3AuthProxy(_Server):
    """Checks SigV4 + session token against `registry`, then forwards to s3rver anonymously.
    `allow_anonymous`: let unsigned requests through (a public bucket)."""

    def __init__(self, registry: Registry, upstream_port: int, allow_anonymous: bool = False):
        self.registry = registry
        self.upstream_port = upstream_port
        self.allow_anonymous = allow_anonymous
        # Called once, with the session token, at the first ranged read: the test revokes
        # the token there (an "expired" token) and the read gets 400 ExpiredToken, the status
        # real S3 answers an expired session token with.
        self.expire_at_first_read = None
        self.hook_lock = threading.Lock()
        super().__init__(_ProxyHandler)

    def verdict(self, handler) -> tuple[int, str, dict]:
        """(status, S3 error code, record) for one request."""
        h = {k.lower(): v for k, v in handler.headers.items()}
        auth = h.get("authorization", "")
        token = h.get("x-amz-security-token", "")
        rec = {"method": handler.command, "path": handler.path, "range": h.get("range"),
               "akid": None, "session_token": token or None}
        if not auth:
            return (200 if self.allow_anonymous else 403), ("" if self.allow_anonymous else "AccessDenied"), rec
        try:
            algo, rest = auth.split(" ", 1)
            fields = dict(p.strip().split("=", 1) for p in rest.split(","))
            akid, scope = fields["Credential"].split("/", 1)
            signed = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (ValueError, KeyError):
            return 400, "AuthorizationHeaderMalformed", rec
        rec["akid"] = akid
        with self.registry.lock:
            cred = self.registry.by_token.get(token or "akid:" + akid)
            revoked = token in self.registry.revoked
        if cred is None or cred["AccessKeyId"] != akid:
            return 403, "InvalidAccessKeyId" if cred is None else "InvalidToken", rec
        if rec["range"] and token:
            with self.hook_lock:
                hook, self.expire_at_first_read = self.expire_at_first_read, None
            if hook:
                hook(token)
                revoked = True
        if revoked:
            return 400, "ExpiredToken", rec  # as S3 does (not 401/403)
        if "x-amz-security-token" in h and "x-amz-security-token" not in signed:
            return 403, "SignatureDoesNotMatch", rec
        want = _sigv4_expected(handler.command, handler.path, h, signed, cred["SecretAccessKey"],
                               h.get("x-amz-date", ""), scope)
        if algo != "AWS4-HMAC-SHA256" or not hmac.compare_digest(want, signature):
            return 403, "SignatureDoesNotMatch", rec
        return 200, "", rec

    def seen(self) -> list:
        """(akid, session token) of every request that was let through."""
        return [(r["akid"], r["session_token"]) for r in self.snapshot() if r["status"] == 200]


class _ProxyHandler(_Handler):
    def _forward(self):
        p: S3AuthProxy = self.peer
        body = self.read_body()
        status, code, rec = p.verdict(self)
        if status != 200:
            p.record(**rec, status=status, code=code)
            return self.reply(status, f"<Error><Code>{code}</Code><Message>refused by the proxy</Message></Error>",
                              "application/xml")
        p.record(**rec, status=200, code="")
        headers = {k: v for k, v in self.headers.items()
                   if not k.lower().startswith("x-amz-") and k.lower() not in ("authorization", "connection")}
        conn = http.client.HTTPConnection("127.0.0.1", p.upstream_port, timeout=60)
        conn.request(self.command, self.path, body=body or None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        relay_head(self, r, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = _forward
