"""First contact with mx-server (issue 13, items 6, 9, 12, 13), against the real server,
the hub stand-in and redis-server:

- errors sent to remote callers (gRPC, the mirror) hold no local path and no advice meant
  for the server's operator, while the server's log keeps the detail;
- --validate-config and start-up refuse unknown YAML keys (with a suggestion), port
  clashes, a gRPC port already in use, unreadable or mismatched TLS files, unknown log
  levels, and sizes out of range, naming where each value came from; sizes take units;
- /healthz and /readyz on the mirror and metrics ports, one access-log line per mirror
  request, JSON logs with fields as keys;
- one warning when listening everywhere with neither auth nor TLS; where the embedded
  registry lives."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import unittest
from pathlib import Path

import grpc

from harness import MIB, base_env, free_port, make_repo, run
from harness import http_get as get
from server_harness import HubAndServersCase, MxServer, RedisServer, server_binary, stubs

S = stubs()
model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]

FILES = {"config.json": 700, "tokenizer.json": 20_000, "model.safetensors": 2 * MIB + 3}
UPSTREAM_TOKEN = "hf_upstream_secret_g3"



def ensure(address, name):
    with grpc.insecure_channel(address) as ch:
        stub = model_grpc.ModelServiceStub(ch)
        return list(stub.EnsureModelDownloaded(model_pb2.ModelDownloadRequest(model_name=name),
                                               timeout=60))


def stream(address, name, chunk_size=0):
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        call = model_grpc.ModelServiceStub(ch).StreamModelFiles(
            model_pb2.ModelFilesRequest(model_name=name, chunk_size=chunk_size), timeout=60)
        chunks = list(call)
        return chunks, dict(call.initial_metadata())


def wait_for(predicate, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def log_of(srv: MxServer) -> str:
    return srv.log_path.read_text(errors="replace")


def make_cert(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class FirstContactBase(HubAndServersCase):
    PREFIX = "mx-g3-"

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=13)
        return {"org/m": {"revisions": {"main": cls.content}},
                "org/n": {"revisions": {"main": cls.content}},
                "acme/gated": {"revisions": {"main": cls.content}, "token": UPSTREAM_TOKEN}}

    def validate(self, *args, env=None):
        e = {"MODEL_EXPRESS_CACHE_DIRECTORY": self.cache,
             # Free ports, so a test never depends on 8001/8002/9401 being unused here.
             "MODEL_EXPRESS_SERVER_PORT": free_port(), "MX_MIRROR_PORT": free_port(),
             "MODEL_EXPRESS_SERVER_METRICS_PORT": free_port()}
        e.update(env or {})
        return run([server_binary(), "--validate-config", *args], env=e, timeout=30)


# --- item 6: what remote callers are told ---------------------------------------------------

class CallerErrorsTest(FirstContactBase):
    """The server has no HF token; the repo is gated upstream."""

    ADVICE = ("HF_TOKEN", "--token", "HF_HUB_OFFLINE", "download it first")

    def assert_caller_text(self, text: str, cache: Path):
        for advice in self.ADVICE:
            self.assertNotIn(advice, text)
        self.assertNotIn(str(cache), text)
        self.assertNotIn(str(cache.resolve()), text)
        self.assertNotIn(str(self.tmp), text)

    def test_grpc_gated_repo_blames_the_servers_token(self):
        srv = self.server()
        updates = ensure(srv.address, "acme/gated")
        self.assertEqual(updates[-1].status, model_pb2.ERROR)
        msg = updates[-1].message
        self.assertIn("the server's HF token cannot read this repo", msg)
        self.assert_caller_text(msg, self.cache)
        # The operator's log keeps the original advice.
        self.assertIn("HF_TOKEN", log_of(srv))

    def test_mirror_gated_repo_blames_the_servers_token(self):
        srv = self.server()
        status, headers, body = get(srv.mirror, "/acme/gated/resolve/main/config.json")
        self.assertEqual(status, 401, body)
        self.assertEqual(headers.get("x-error-code"), "GatedRepo")
        msg = headers.get("x-error-message", "")
        self.assertIn("the server's HF token cannot read this repo", msg)
        self.assertIn("the server's HF token cannot read this repo", json.loads(body)["error"])
        self.assert_caller_text(msg + body.decode(), self.cache)
        # The access line (written once the answer is out) keeps the detail.
        self.assertTrue(wait_for(lambda: "HF_TOKEN" in log_of(srv)), log_of(srv))

    def test_offline_server_says_so_without_paths_or_advice(self):
        srv = self.server(env={"HF_HUB_OFFLINE": "1"})
        updates = ensure(srv.address, "org/m")
        self.assertEqual(updates[-1].status, model_pb2.ERROR)
        self.assert_caller_text(updates[-1].message, self.cache)
        self.assertIn("offline", updates[-1].message)
        # The detail, with its path, is in the server's log.
        self.assertIn(str(self.cache), log_of(srv))


# --- item 9: bad configuration is refused ---------------------------------------------------

class RefuseBadConfigTest(FirstContactBase):
    def test_unknown_yaml_key_suggests_the_nearest(self):
        cfg = self.tmp / "typo.yaml"
        cfg.write_text("port: 9123\nmirorr_port: 9124\n")
        r = self.validate("--config", cfg)
        self.assertEqual(r.returncode, 2, r.stdout)
        self.assertIn(f"unknown key 'mirorr_port' in {cfg}; did you mean 'mirror_port'?", r.stderr)
        # Start-up refuses it too.
        s = self.server(args=["--config", cfg], start=False)
        s.start(wait=False)
        self.assertNotEqual(s.proc.wait(timeout=30), 0)
        self.assertIn("did you mean 'mirror_port'?", s.log_text())
        # Keys spelled as flags work (metadata_backend was ignored before).
        cfg.write_text("metadata_backend: etcd\n")
        r = self.validate("--config", cfg)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"key 'metadata_backend' in {cfg} ('etcd'): must be embedded or redis", r.stderr)

    def test_port_clash_names_both_settings(self):
        p = free_port()
        r = self.validate("--port", p, "--mirror-port", p)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"port {p} is set twice", r.stderr)
        self.assertIn("flag --port", r.stderr)
        self.assertIn("flag --mirror-port", r.stderr)
        r = self.validate(env={"MODEL_EXPRESS_SERVER_METRICS_PORT": p, "MX_MIRROR_PORT": p})
        self.assertEqual(r.returncode, 2)
        self.assertIn("environment variable MODEL_EXPRESS_SERVER_METRICS_PORT", r.stderr)

    def test_grpc_port_in_use_fails_to_start(self):
        first = self.server()
        # A second server on the same gRPC port (its other ports free).
        env = base_env()
        env.update(self.server_env())
        env.update({"MODEL_EXPRESS_CACHE_DIRECTORY": str(self.cache),
                    "MODEL_EXPRESS_SERVER_HOST": "127.0.0.1",
                    "MODEL_EXPRESS_SERVER_PORT": str(first.port),
                    "MX_MIRROR_PORT": str(free_port()),
                    "MODEL_EXPRESS_SERVER_METRICS_PORT": str(free_port())})
        proc = subprocess.Popen([server_binary()], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.fail("a second mx-server runs on the gRPC port of the first:\n" + err[-2000:])
        self.assertNotEqual(proc.returncode, 0, err)
        self.assertIn(f"gRPC port {first.port} on 127.0.0.1 is already in use", err)
        self.assertNotIn("mx-server listening", err)
        # --validate-config sees it too.
        r = self.validate("--host", "127.0.0.1", "--port", first.port)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"gRPC port {first.port} on 127.0.0.1 is already in use", r.stderr)
        self.assertIn("flag --port", r.stderr)
        # The first server still serves.
        self.assertEqual(ensure(first.address, "org/m")[-1].status, model_pb2.DOWNLOADED)

    def test_tls_files_are_checked(self):
        cert_a, key_a = make_cert(self.tmp, "a")
        cert_b, key_b = make_cert(self.tmp, "b")
        self.assertEqual(self.validate("--tls-cert", cert_a, "--tls-key", key_a).returncode, 0)
        r = self.validate("--tls-cert", cert_a, "--tls-key", key_b)
        self.assertEqual(r.returncode, 2)
        self.assertIn("flag --tls-key", r.stderr)
        self.assertIn("is not the key of the certificate", r.stderr)
        r = self.validate("--tls-cert", self.tmp / "missing.crt", "--tls-key", key_a)
        self.assertEqual(r.returncode, 2)
        self.assertIn("flag --tls-cert: cannot read", r.stderr)
        garbage = self.tmp / "garbage.crt"
        garbage.write_text("not a certificate\n")
        r = self.validate("--tls-cert", garbage, "--tls-key", key_a)
        self.assertEqual(r.returncode, 2)
        self.assertIn("holds no PEM certificate", r.stderr)
        # Start-up refuses a mismatched pair as well.
        s = self.server(args=["--tls-cert", cert_a, "--tls-key", key_b], start=False)
        s.start(wait=False)
        self.assertEqual(s.proc.wait(timeout=30), 2)
        self.assertIn("is not the key of the certificate", s.log_text())

    def test_unknown_log_level(self):
        r = self.validate("--log-level", "verbose")
        self.assertEqual(r.returncode, 2)
        self.assertIn("flag --log-level ('verbose'): must be debug, info, warn or error", r.stderr)
        r = self.validate(env={"MX_LOG_LEVEL": "loud"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("environment variable MX_LOG_LEVEL ('loud')", r.stderr)
        self.assertEqual(self.validate("--log-level", "debug").returncode, 0)

    def test_sizes_take_units_and_errors_name_source_and_range(self):
        cfg = self.tmp / "sizes.yaml"
        cfg.write_text("chunk_size: 2MiB\nmax_message_size: 32MiB\nmax_bytes: 1GiB\n")
        r = self.validate("--config", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.validate("--chunk-size", "10x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("flag --chunk-size ('10x'): must be a size between 64 KiB and 256 MiB",
                      r.stderr)
        cfg.write_text("chunk_size: 1TiB\n")
        r = self.validate("--config", cfg)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"key 'chunk_size' in {cfg} ('1TiB'): must be a size between 64 KiB and 256 MiB",
                      r.stderr)
        r = self.validate(env={"MX_LEASE_SECS": "0"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("environment variable MX_LEASE_SECS ('0'): must be a whole number between 1 and 3600",
                      r.stderr)
        r = self.validate("--max-message-size", "1MiB", "--chunk-size", "1MiB")
        self.assertEqual(r.returncode, 2)
        self.assertIn("flag --chunk-size", r.stderr)
        self.assertIn("flag --max-message-size", r.stderr)
        # The unit is honoured: the default chunk of a stream is 256 KiB.
        srv = self.server(args=["--chunk-size", "256KiB"])
        self.assertEqual(ensure(srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        chunks, md = stream(srv.address, "org/m")
        self.assertEqual(md.get("x-mx-chunk-size"), str(256 << 10))
        self.assertEqual(max(len(c.data) for c in chunks), 256 << 10)


# --- item 12: probes, access log, JSON fields ---------------------------------------------

class ProbesAndLogsTest(FirstContactBase):
    def metrics_base(self, srv):
        return f"http://{srv.host}:{srv.metrics_port}"

    def test_healthz_and_readyz_on_both_ports(self):
        srv = self.server()
        for base in (srv.mirror, self.metrics_base(srv)):
            status, _, body = get(base, "/healthz")
            self.assertEqual((status, body), (200, b"ok\n"))
            status, _, body = get(base, "/readyz")
            self.assertEqual(status, 200, body)
            self.assertIn(b"registry: ok (embedded)", body)
            self.assertIn(b"cache: ok", body)

    def test_probes_need_no_token_where_the_mirror_does(self):
        token = self.tmp / "probe-token"
        token.write_text("s3cret-probe-token")
        srv = self.server(args=["--auth-token-file", token])
        self.assertEqual(get(srv.mirror, "/api/models/org/m")[0], 401)  # the mirror is closed
        for base in (srv.mirror, self.metrics_base(srv)):
            self.assertEqual(get(base, "/healthz")[0], 200)
            status, _, body = get(base, "/readyz")
            self.assertEqual(status, 200, body)
            self.assertNotIn(b"s3cret", body)

    def test_readyz_names_the_failing_check(self):
        redis = RedisServer(self.tmp).start()
        try:
            srv = self.server(env={"MX_METADATA_BACKEND": "redis", "REDIS_URL": redis.url})
            status, _, body = get(srv.mirror, "/readyz")
            self.assertEqual(status, 200, body)
            self.assertIn(b"registry: ok (redis)", body)
            redis.stop()
            status, body = wait_for(lambda: (lambda r: (r[0], r[2]) if r[0] == 503 else None)(
                get(self.metrics_base(srv), "/readyz")), timeout=10)
            self.assertEqual(status, 503)
            self.assertIn(b"registry: failed", body)
            self.assertIn(b"cache: ok", body)
            self.assertNotIn(str(redis.port).encode(), body)  # no addresses on an open port
            self.assertEqual(get(srv.mirror, "/healthz")[0], 200)  # alive all the same
            redis = RedisServer(self.tmp, port=redis.port).start()
            self.assertTrue(wait_for(lambda: get(srv.mirror, "/readyz")[0] == 200, timeout=10))
            # An unwritable cache: its private folder replaced by a file.
            locks = self.cache / ".locks"
            subprocess.run(["rm", "-rf", str(locks / "mx")], check=True)
            (locks / "mx").write_text("in the way")
            status, body = wait_for(lambda: (lambda r: (r[0], r[2]) if r[0] == 503 else None)(
                get(srv.mirror, "/readyz")), timeout=10)
            self.assertIn(b"cache: failed", body)
            self.assertIn(b"registry: ok", body)
            self.assertNotIn(str(self.cache).encode(), body)
        finally:
            redis.stop()

    def test_access_log_line_per_request_without_secrets(self):
        srv = self.server()
        size = (self.content / "config.json").stat().st_size
        status, _, _ = get(srv.mirror, "/org/m/resolve/main/config.json?signature=qsecret123",
                           {"Authorization": "Bearer hfsecret456"})
        self.assertEqual(status, 200)
        status, _, _ = get(srv.mirror, "/api/models/org/nope/revision/main")
        self.assertEqual(status, 404)
        self.assertEqual(get(srv.mirror, "/healthz")[0], 200)  # probes: debug level only
        # A raw control byte in the request line: refused, and escaped in the log.
        with socket.create_connection(("127.0.0.1", srv.mirror_port), timeout=5) as s:
            s.sendall(b"GET /a\x1b[31mb HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)
        pattern = (r"http method=GET path=/org/m/resolve/main/config.json status=200 "
                   rf"bytes={size} duration_s=\d+\.\d+ complete=yes")
        self.assertTrue(wait_for(lambda: re.search(pattern, log_of(srv))), log_of(srv))
        self.assertTrue(wait_for(lambda: re.search(
            r"http method=GET path=/api/models/org/nope/revision/main status=404 .*error=",
            log_of(srv))), log_of(srv))
        self.assertTrue(wait_for(lambda: "status=400" in log_of(srv)), log_of(srv))
        text = log_of(srv)
        self.assertNotIn("qsecret123", text)
        self.assertNotIn("hfsecret456", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("path=/healthz", text)

    def test_json_log_has_fields_as_keys(self):
        srv = self.server(args=["--log-format", "json"])
        self.assertEqual(ensure(srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        stream(srv.address, "org/m")
        get(srv.mirror, '/org/m/resolve/main/tokenizer.json?x="quote')
        get(srv.mirror, "/api/models/org/nope/revision/main")
        self.assertEqual(get(srv.mirror, "/org/n/resolve/main/config.json")[0], 200)

        def records():
            out = []
            for line in log_of(srv).splitlines():
                if line.startswith("{"):
                    out.append(json.loads(line))  # every record is valid JSON
            return out

        def find(msg, **match):
            for r in records():
                if r.get("msg") == msg and all(r.get(k) == v for k, v in match.items()):
                    return r
            return None

        access = wait_for(lambda: find("http", path="/org/m/resolve/main/tokenizer.json"))
        self.assertIsNotNone(access, log_of(srv))
        self.assertEqual(access["method"], "GET")
        self.assertEqual(access["status"], 200)
        self.assertEqual(access["bytes"], FILES["tokenizer.json"])
        self.assertIsInstance(access["duration_s"], float)
        self.assertIn(access["level"], ("info",))
        self.assertIn("time", access)
        missing = wait_for(lambda: find("http", status=404))
        self.assertIn("error", missing)
        done = find("download done", model="org/m")
        self.assertIsNotNone(done, log_of(srv))
        self.assertEqual(done["bytes"], sum(FILES.values()))
        self.assertEqual(done["files"], len(FILES))
        self.assertIsInstance(done["duration_s"], float)
        streamed = wait_for(lambda: find("stream done", model="org/m"))
        self.assertIsNotNone(streamed, log_of(srv))
        self.assertEqual(streamed["bytes"], sum(FILES.values()))
        self.assertEqual(streamed["files"], len(FILES))
        fetched = find("mirror fetch done", model="org/n", file="config.json")
        self.assertIsNotNone(fetched, log_of(srv))
        self.assertEqual(fetched["bytes"], FILES["config.json"])
        # Every line of the log is one JSON record.
        for line in log_of(srv).splitlines():
            if line.strip():
                self.assertTrue(line.startswith("{"), line)


# --- item 13: the open-server warning and where the registry lives ------------------------

class StartupWarningTest(FirstContactBase):
    WARNING = "with no auth token and no TLS"

    def start_on(self, host, args=None):
        s = MxServer(self.tmp, self.cache, env=self.server_env(), args=args, host=host)
        self.servers.append(s)
        s.start()
        return s

    def test_open_server_warns_once(self):
        srv = self.start_on("0.0.0.0")
        self.assertEqual(log_of(srv).count(self.WARNING), 1, log_of(srv))
        self.assertEqual(ensure(srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(log_of(srv).count(self.WARNING), 1)

    def test_no_warning_on_loopback_or_with_a_token(self):
        srv = self.start_on("127.0.0.1")
        self.assertNotIn(self.WARNING, log_of(srv))
        token = self.tmp / "token"
        token.write_text("t0ken")
        srv = self.start_on("0.0.0.0", args=["--auth-token-file", token])
        self.assertNotIn(self.WARNING, log_of(srv))

    def test_embedded_registry_lives_in_the_cache(self):
        # The README: <cache>/.locks/mx/registry.db (huggingface_hub's scan skips .locks).
        r = self.validate()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"registry embedded {self.cache}/.locks/mx/registry.db", r.stdout)
        self.server()
        self.assertTrue((self.cache / ".locks" / "mx" / "registry.db").is_file())


if __name__ == "__main__":
    unittest.main()
