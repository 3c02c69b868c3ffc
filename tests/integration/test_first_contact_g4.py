"""Issue 13, item 10 (storage settings), with the real binaries and real peers: an unknown
MX_S3_ADDRESSING_STYLE is refused (s3rver), TLS failures no retry can fix fail at once
(plain HTTP and self-signed TLS stand-ins), and the registry speaks rediss:// to Debian's
redis-server with --tls-port (CA and client certificates made with openssl here)."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import grpc

from harness import MIB, free_port, make_repo, mx_binary, run
from server_harness import HubAndServersCase, RedisServer, stubs
from storage_peers import S3rver, write_model

S = stubs()
model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> Path:
    """A self-signed CA in d/<name>.crt and .key."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
            cwd=d)
    return d / f"{name}.crt"


def make_leaf(d: Path, name: str, ca: str, san: str = "IP:127.0.0.1,DNS:localhost") -> tuple:
    """A certificate for `san` signed by CA `ca`: (crt, key)."""
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *a):
        pass


class HttpStandIn:
    """A loopback HTTP server that answers 404 to everything, in plain HTTP or (with cert)
    TLS; counts accepted connections."""

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.connections = 0
        original = self.httpd.get_request

        def counted():
            self.connections += 1
            return original()
        self.httpd.get_request = counted
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class S3AddressingStyleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-g4-s3-"))
        write_model(cls.tmp / "model", shards=1, seed=3, big=64 * 1024)
        cls.s3 = S3rver(cls.tmp).start()
        cls.s3.upload_dir(cls.tmp / "model", "org/model")

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def stream(self, style):
        env = dict(self.s3.env(), MX_S3_ADDRESSING_STYLE=style)
        return run([mx_binary(), "stream", "--json", f"s3://{self.s3.bucket}/org/model"], env=env,
                   timeout=120)

    def test_unknown_style_is_an_error_naming_the_variable(self):
        start = time.monotonic()
        r = self.stream("pth")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("MX_S3_ADDRESSING_STYLE", r.stderr)
        self.assertIn("'pth'", r.stderr)
        self.assertIn("path, virtual, auto", r.stderr)
        self.assertLess(time.monotonic() - start, 5)

    def test_known_styles_work(self):
        # path (any case) and auto (path-style for a custom endpoint) reach s3rver; virtual
        # would need DNS for <bucket>.127.0.0.1 and is left out.
        for style in ("path", "PATH", "auto", ""):
            r = self.stream(style)
            self.assertEqual(r.returncode, 0, f"{style}: {r.stderr}")


class TlsFailsAtOnceTest(unittest.TestCase):
    """http::Fetch (the hub API) on a TLS failure no retry can fix: one attempt, a message
    that says what to check. Six tries with backoff took 4 s and more."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-g4-tls-"))
        cls.ca = make_ca(cls.tmp, "ca")
        # Trusted only through the CA; issued for "localhost" alone, so 127.0.0.1 mismatches.
        cls.cert, cls.key = make_leaf(cls.tmp, "hub", "ca", san="DNS:localhost")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def download(self, endpoint, **env):
        start = time.monotonic()
        r = run([mx_binary(), "download", "org/m", "--cache-dir", str(self.tmp / "cache")],
                env=dict({"HF_ENDPOINT": endpoint, "CURL_CA_BUNDLE": None, "SSL_CERT_FILE": None,
                          "REQUESTS_CA_BUNDLE": None}, **env), timeout=120)
        return r, time.monotonic() - start

    def assert_fast_failure(self, r, seconds, stand_in, *phrases):
        self.assertNotEqual(r.returncode, 0, r.stdout)
        for p in phrases:
            self.assertIn(p, r.stderr)
        self.assertLess(seconds, 1.5, r.stderr)
        self.assertEqual(stand_in.connections, 1, r.stderr)

    def test_https_to_a_plain_http_port(self):
        with HttpStandIn() as plain:
            r, s = self.download(f"https://127.0.0.1:{plain.port}")
            self.assert_fast_failure(r, s, plain, "does not speak TLS", "http:// instead of https://")

    def test_untrusted_certificate(self):
        with HttpStandIn(self.cert, self.key) as tls:
            r, s = self.download(f"https://localhost:{tls.port}")
            self.assert_fast_failure(r, s, tls, "not trusted", "CURL_CA_BUNDLE")

    def test_certificate_for_another_host(self):
        with HttpStandIn(self.cert, self.key) as tls:
            r, s = self.download(f"https://127.0.0.1:{tls.port}", CURL_CA_BUNDLE=str(self.ca))
            self.assert_fast_failure(r, s, tls, "another host name")

    def test_unreadable_ca_bundle(self):
        with HttpStandIn(self.cert, self.key) as tls:
            r, s = self.download(f"https://localhost:{tls.port}",
                                 CURL_CA_BUNDLE=str(self.tmp / "no-such-bundle.pem"))
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn("cannot use the CA bundle", r.stderr)
            self.assertLess(s, 1.5, r.stderr)

    def test_trusted_certificate_gets_through(self):
        # The control: with the CA and the right name, TLS works and the stand-in's 404 is
        # what fails the download.
        with HttpStandIn(self.cert, self.key) as tls:
            r, _ = self.download(f"https://localhost:{tls.port}", CURL_CA_BUNDLE=str(self.ca))
            self.assertNotEqual(r.returncode, 0)
            self.assertNotIn("TLS", r.stderr)
            self.assertGreaterEqual(tls.connections, 1)


class TlsRedis:
    """Debian's redis-server on a TLS port only (--port 0)."""

    def __init__(self, tmpdir: Path, ca: Path, cert: Path, key: Path, auth_clients: str = "no"):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-tls-", dir=tmpdir))
        self.port = free_port()
        self.ca, self.cert, self.key, self.auth_clients = ca, cert, key, auth_clients
        self.proc = None

    def cli(self, *args, client=None):
        cmd = ["redis-cli", "--tls", "--cacert", str(self.ca), "-p", str(self.port)]
        if client:
            cmd += ["--cert", str(client[0]), "--key", str(client[1])]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10)

    def start(self, client=None) -> "TlsRedis":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1 127.0.0.2",
             "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", self.auth_clients,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("ping", client=client).stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server with TLS did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ensure(address, name):
    with grpc.insecure_channel(address) as ch:
        stub = model_grpc.ModelServiceStub(ch)
        req = model_pb2.ModelDownloadRequest(model_name=name)
        return list(stub.EnsureModelDownloaded(req, timeout=120))


class RedissRegistryTest(HubAndServersCase):
    PREFIX = "mx-g4-rediss-"

    @classmethod
    def make_repos(cls, tmp):
        content = make_repo(tmp / "content", {"config.json": 300, "model.safetensors": MIB + 7},
                            seed=13)
        return {"org/m": {"revisions": {"main": content}}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        certs = cls.tmp / "certs"
        certs.mkdir()
        cls.ca = make_ca(certs, "ca")
        cls.other_ca = make_ca(certs, "other-ca")
        cls.cert, cls.key = make_leaf(certs, "redis", "ca")
        cls.client = make_leaf(certs, "client", "ca")

    def setUp(self):
        super().setUp()
        self.redis = []

    def tearDown(self):
        super().tearDown()
        for r in self.redis:
            r.stop()

    def tls_redis(self, auth_clients="no", client=None) -> TlsRedis:
        r = TlsRedis(self.tmp, self.ca, self.cert, self.key, auth_clients)
        self.redis.append(r)
        return r.start(client=client)

    def model_keys(self, redis, client=None):
        out = redis.cli("--scan", "--pattern", "mx:model:*", client=client)
        return out.stdout.split()

    def failed_start(self, env=None, args=None) -> str:
        """Starts an mx-server that must exit at once; returns its log."""
        s = self.server(env=env, args=args, start=False)
        s.start(wait=False)
        rc = s.proc.wait(timeout=30)
        self.assertNotEqual(rc, 0, s.log_text())
        return s.log_text()

    def test_serves_a_model_with_its_registry_over_tls(self):
        redis = self.tls_redis()
        # The CA from the URL (flags) and from MX_REDIS_TLS_CA: two replicas, one registry.
        a = self.server(args=["--metadata-backend", "redis", "--redis-url",
                              f"rediss://127.0.0.1:{redis.port}?ca={self.ca}"])
        b = self.server(env={"MX_METADATA_BACKEND": "redis",
                             "REDIS_URL": f"rediss://localhost:{redis.port}",
                             "MX_REDIS_TLS_CA": str(self.ca)})
        # No CA given: OpenSSL's default store, which SSL_CERT_FILE points elsewhere.
        c = self.server(env={"MX_METADATA_BACKEND": "redis", "SSL_CERT_FILE": str(self.ca),
                             "REDIS_URL": f"rediss://127.0.0.1:{redis.port}"})
        for s in (a, b, c):
            self.assertEqual(ensure(s.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(len(self.model_keys(redis)), 1, a.log_text())
        self.assertEqual(self.hub.stats()["bytes_total"], 300 + MIB + 7)  # fetched once

    def test_reconnects_after_a_redis_restart(self):
        redis = self.tls_redis()
        srv = self.server(env={"MX_METADATA_BACKEND": "redis", "MX_REDIS_TLS_CA": str(self.ca),
                               "REDIS_URL": f"rediss://127.0.0.1:{redis.port}"})
        ensure(srv.address, "org/m")
        before = self.hub.stats()["bytes_total"]
        redis.stop()
        again = TlsRedis(self.tmp, self.ca, self.cert, self.key)
        again.port = redis.port  # empty, same address
        self.redis.append(again.start())
        self.assertEqual(ensure(srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(self.hub.stats()["bytes_total"], before)  # restored, not re-fetched
        self.assertEqual(len(self.model_keys(again)), 1, srv.log_text())

    def test_client_certificate(self):
        redis = self.tls_redis(auth_clients="yes", client=self.client)
        url = f"rediss://127.0.0.1:{redis.port}?ca={self.ca}"
        env = {"MX_METADATA_BACKEND": "redis", "REDIS_URL": url}
        # Without one, the server refuses after the handshake: still an error at start.
        self.assertIn("Redis at 127.0.0.1", self.failed_start(env=env))
        s = self.server(env=dict(env, MX_REDIS_TLS_CERT=str(self.client[0]),
                                 MX_REDIS_TLS_KEY=str(self.client[1])))
        self.assertEqual(ensure(s.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        q = self.server(env=dict(env, REDIS_URL=f"{url}&cert={self.client[0]}&key={self.client[1]}"))
        self.assertEqual(ensure(q.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(len(self.model_keys(redis, client=self.client)), 1)

    def test_wrong_ca_fails_at_start_with_a_clear_error(self):
        redis = self.tls_redis()
        start = time.monotonic()
        log = self.failed_start(env={"MX_METADATA_BACKEND": "redis",
                                     "REDIS_URL": f"rediss://127.0.0.1:{redis.port}",
                                     "MX_REDIS_TLS_CA": str(self.other_ca)})
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn("certificate not trusted", log)
        self.assertIn("MX_REDIS_TLS_CA", log)
        self.assertIn(str(self.other_ca), log)
        # Only when asked, explicitly: no verification, with a warning.
        s = self.server(env={"MX_METADATA_BACKEND": "redis",
                             "REDIS_URL": f"rediss://127.0.0.1:{redis.port}?insecure=true"})
        self.assertIn("NOT verified", s.log_text())
        self.assertEqual(ensure(s.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        e = self.server(env={"MX_METADATA_BACKEND": "redis", "MX_REDIS_TLS_CA": str(self.other_ca),
                             "MX_REDIS_TLS_INSECURE_SKIP_VERIFY": "1",
                             "REDIS_URL": f"rediss://127.0.0.1:{redis.port}"})
        self.assertIn("NOT verified", e.log_text())

    def test_certificate_for_another_name(self):
        redis = self.tls_redis()
        # The certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same server.
        log = self.failed_start(env={"MX_METADATA_BACKEND": "redis",
                                     "REDIS_URL": f"rediss://127.0.0.2:{redis.port}?ca={self.ca}"})
        self.assertIn("is not for '127.0.0.2'", log)

    def test_rediss_to_a_plain_port_and_bad_options(self):
        plain = RedisServer(self.tmp).start()
        self.redis.append(plain)
        log = self.failed_start(env={"MX_METADATA_BACKEND": "redis",
                                     "REDIS_URL": f"rediss://127.0.0.1:{plain.port}"})
        self.assertIn("plain redis:// port?", log)
        log = self.failed_start(env={"MX_METADATA_BACKEND": "redis",
                                     "REDIS_URL": f"rediss://127.0.0.1:{plain.port}?cafile=/x"})
        self.assertIn("unknown option 'cafile'", log)


if __name__ == "__main__":
    unittest.main()
