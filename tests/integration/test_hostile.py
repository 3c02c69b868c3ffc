"""Hostile input against a real mx-server's HTTP edge (the HF mirror): path and revision
escapes, invalid UTF-8, header injection, request smuggling, Range overflow, token checks,
slowloris / slow readers / idle floods, thread-limit pressure. After every test the server
must still be alive and serving. gRPC-side reproductions: test_hostile_grpc.py; cache
races: test_hostile_cache.py."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
import unittest
from pathlib import Path

from harness import MIB, make_repo, run
from harness import http_get as get
from server_harness import HubAndServersCase

# make sanitize runs this suite on ASan+UBSan builds (several times slower): time bounds
# hold for the release build that make test runs, and get room under sanitizers.
SLACK = 5 if os.environ.get("ASAN_OPTIONS") else 1

FILES = {
    "config.json": 600,
    "tiny.txt": 10,
    "big.bin": 4 * MIB,
    "model.safetensors": 8 * MIB,
}


def raw_exchange(host, port, data: bytes, src: str | None = None, timeout=3.0) -> bytes:
    """Sends bytes on a fresh connection and returns everything read until close or quiet."""
    s = socket.socket()
    if src:
        s.bind((src, 0))
    s.settimeout(timeout)
    s.connect((host, port))
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out



class HostileBase(HubAndServersCase):
    PREFIX = "mx-hostile-"
    server_args: list = []

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=7)
        return {
            "acme/m": {"revisions": {"main": cls.content}},
            "acme/gated": {"revisions": {"main": cls.content}, "token": "hf_upstream_secret"},
            # As on huggingface.co: listing a gated repo needs no token, its files do.
            "acme/gatedopen": {"revisions": {"main": cls.content}, "token": "hf_upstream_secret",
                               "open_api": True},
        }

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.commit = cls.hub.commit("acme/m")

    @classmethod
    def server_env(cls):
        return {"HF_ENDPOINT": cls.hub.endpoint, "HF_TOKEN": "hf_upstream_secret"}

    def tearDown(self):
        for s in self.servers:
            # Every test ends with the server alive and serving.
            if s.proc is not None:
                self.assertIsNone(s.proc.poll(), s.log_text())
                status, _, _ = get(s.mirror, "/api/models/acme/m/revision/main")
                self.assertEqual(status, 200, s.log_text())
        super().tearDown()

    def server(self, env=None, args=None, start=True):
        return super().server(env=env, args=[*self.server_args, *(args or [])], start=start)

    def hub_api_status(self, repo):
        status, _, _ = get(self.hub.endpoint, f"/api/models/{repo}/revision/main")
        return status

    def mirror_addr(self, srv):
        return srv.host, srv.mirror_port


class EscapeAndEncodingTest(HostileBase):
    def test_revision_cannot_walk_out_of_the_cache(self):
        srv = self.server()
        get(srv.mirror, "/api/models/acme/m/revision/main")  # the repo folder exists
        for path in ["/acme/m/resolve/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fdev%2Fzero/config.json",
                     "/api/models/acme/m/revision/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fshadow",
                     "/api/models/acme/m/revision/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fnope",
                     "/api/models/acme/m/tree/..%2F..%2F..%2Fdev%2Fzero",
                     "/acme/m/resolve/main/..%2F..%2F..%2F..%2Fetc%2Fpasswd"]:
            start = time.monotonic()
            status, headers, body = get(srv.mirror, path)
            self.assertEqual(status, 400, (path, body))
            self.assertLess(time.monotonic() - start, 2 * SLACK, path)
            self.assertNotIn(str(self.cache), body.decode(errors="replace"))
        # Same answer whether the target exists or not: no file-existence oracle.
        a = get(srv.mirror, "/api/models/acme/m/revision/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fshadow")
        b = get(srv.mirror, "/api/models/acme/m/revision/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fnope")
        self.assertEqual((a[0], a[1].get("x-error-code")), (b[0], b[1].get("x-error-code")))
        # A pre-planted ref that points outside is never followed either.
        self.assertFalse(any(p.name == "shadow" for p in self.cache.rglob("*")))

    def test_invalid_utf8_answers_400(self):
        srv = self.server()
        for path in ["/%FF", "/api/models/acme/m/revision/%FF", "/acme/m/resolve/main/%FF",
                     "/api/models/acme/m/tree/%C3%28", "/api/models/acme/m/tree/main/%C3%28"]:
            status, _, _ = get(srv.mirror, path)
            self.assertEqual(status, 400, path)

    def test_no_header_injection(self):
        srv = self.server()
        host, port = self.mirror_addr(srv)
        out = raw_exchange(host, port, b"GET /%0D%0AX-Injected:%20yes HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        self.assertNotIn(b"\r\nX-Injected", out)
        out = raw_exchange(host, port, b"GET /api/models/acme/m/tree/main HTTP/1.1\r\n"
                                       b"Host: a\nX-Injected: yes\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        self.assertNotIn(b"\r\nX-Injected", out)
        # A long hostile name comes back bounded, never echoed whole.
        status, headers, body = get(srv.mirror, "/api/models/acme/" + "x" * 20000)
        self.assertEqual(status, 400)
        self.assertLess(len(headers.get("x-error-message", "")), 600)
        self.assertLess(len(body), 2000)


class ProtocolTest(HostileBase):
    def test_request_smuggling_is_refused(self):
        srv = self.server()
        host, port = self.mirror_addr(srv)
        inner = b"GET /api/models/acme/m/revision/nope HTTP/1.1\r\nHost: x\r\n\r\n"
        out = raw_exchange(host, port, b"GET /api/models/acme/m/revision/main HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out[:400])
        self.assertIn(b"HTTP/1.1 200", out)
        out = raw_exchange(host, port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % len(inner) + inner)
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out[:400])
        self.assertIn(b"HTTP/1.1 405", out)
        out = raw_exchange(host, port, b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner)
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out[:400])
        self.assertIn(b"HTTP/1.1 400", out)

    def test_ranges(self):
        srv = self.server()
        whole = (self.content / "config.json").read_bytes()
        url = "/acme/m/resolve/main/config.json"
        status, h, body = get(srv.mirror, url, {"Range": "bytes=0-18446744073709551615"})
        self.assertEqual((status, body), (206, whole))
        self.assertEqual(h["content-range"], f"bytes 0-{len(whole) - 1}/{len(whole)}")
        for ignored in ["bytes=0-1,5-6", "items=0-5"]:
            status, _, body = get(srv.mirror, url, {"Range": ignored})
            self.assertEqual((status, body), (200, whole), ignored)
        status, h, _ = get(srv.mirror, url, {"Range": f"bytes={len(whole)}-"})
        self.assertEqual(status, 416)
        self.assertEqual(h["content-range"], f"bytes */{len(whole)}")
        status, _, body = get(srv.mirror, url, {"Range": "bytes=-10"})
        self.assertEqual((status, body), (206, whole[-10:]))

    def test_one_small_get_fetches_one_file(self):
        srv = self.server()
        status, _, body = get(srv.mirror, "/acme/m/resolve/main/tiny.txt", {"Range": "bytes=0-0"})
        self.assertEqual((status, body), (206, (self.content / "tiny.txt").read_bytes()[:1]))
        served = self.hub.stats()["bytes_total"]
        self.assertLess(served, 64 * 1024, "a 1-byte GET pulled more than the file upstream")
        self.assertFalse((self.cache / "models--acme--m" / "snapshots" / self.commit /
                          "model.safetensors").exists())
        # The whole repo still comes when a client walks it (every file is a GET).
        status, _, body = get(srv.mirror, "/acme/m/resolve/main/model.safetensors")
        self.assertEqual(body, (self.content / "model.safetensors").read_bytes())


class TokenPolicyTest(HostileBase):
    def test_mirror_token_is_checked(self):
        token = self.tmp / "token"
        token.write_text("s3cret-token\n")
        srv = self.server(args=["--auth-token-file", token])
        for auth in [None, "Bearer wrong", "Bearer s3cret-tokeN", "Bearer s3cret-token2"]:
            status, h, _ = get(srv.mirror, "/api/models/acme/m/revision/main",
                               {"Authorization": auth} if auth else {})
            self.assertEqual(status, 401, auth)
        status, _, _ = get(srv.mirror, "/api/models/acme/m/revision/main",
                           {"Authorization": "Bearer s3cret-token"})
        self.assertEqual(status, 200)
        # /metrics is open (documented) and names no model, path or token.
        status, _, body = get(f"http://{srv.host}:{srv.metrics_port}", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"mx_cache_models", body)
        for secret in [b"acme", b"s3cret", str(self.cache).encode()]:
            self.assertNotIn(secret, body)
        # tearDown's liveness probe carries no token: stop here.
        srv.stop()
        srv.proc = None

    def test_gated_repos_for_authenticated_callers_only(self):
        token = self.tmp / "token2"
        token.write_text("s3cret-token")
        srv = self.server(args=["--auth-token-file", token, "--gated-repos", "authenticated"])
        # Anonymous: public repos yes, gated ones no (even though the server holds HF_TOKEN).
        status, _, _ = get(srv.mirror, "/api/models/acme/m/revision/main")
        self.assertEqual(status, 200)
        status, h, _ = get(srv.mirror, "/acme/gated/resolve/main/config.json")
        self.assertEqual(status, 401, h)
        status, _, body = get(srv.mirror, "/acme/gated/resolve/main/config.json",
                              {"Authorization": "Bearer s3cret-token"})
        self.assertEqual((status, body), (200, (self.content / "config.json").read_bytes()))
        # Cached now, still refused to anonymous callers.
        status, _, _ = get(srv.mirror, "/acme/gated/resolve/main/config.json")
        self.assertEqual(status, 401)
        # A gated repo whose listing is public upstream is still gated here.
        self.assertEqual(self.hub_api_status("acme/gatedopen"), 200)
        status, _, _ = get(srv.mirror, "/acme/gatedopen/resolve/main/config.json")
        self.assertEqual(status, 401)
        # An unknown revision of a public repo does not lock anonymous callers out of it.
        status, _, _ = get(srv.mirror, "/api/models/acme/m/revision/no-such-branch")
        self.assertEqual(status, 404)
        status, _, _ = get(srv.mirror, "/acme/m/resolve/main/config.json")
        self.assertEqual(status, 200)

    def test_gated_repos_policy_is_the_same_on_grpc(self):
        import grpc
        from server_harness import stubs
        S = stubs()
        model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]
        token = self.tmp / "token4"
        token.write_text("s3cret-token")
        srv = self.server(args=["--auth-token-file", token, "--gated-repos", "authenticated"])

        def ensure(name, md=None):
            with grpc.insecure_channel(srv.address) as ch:
                stub = model_grpc.ModelServiceStub(ch)
                req = model_pb2.ModelDownloadRequest(model_name=name, provider=0)
                return list(stub.EnsureModelDownloaded(req, metadata=md, timeout=60))

        self.assertEqual(ensure("acme/m")[-1].status, model_pb2.DOWNLOADED)
        with self.assertRaises(grpc.RpcError) as e:
            ensure("acme/gated")
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(ensure("acme/gated", [("authorization", "Bearer s3cret-token")])[-1].status,
                         model_pb2.DOWNLOADED)
        with self.assertRaises(grpc.RpcError) as e:  # a wrong token is never "anonymous"
            ensure("acme/m", [("authorization", "Bearer nope")])
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        # Deleting is never anonymous.
        with grpc.insecure_channel(srv.address) as ch:
            with self.assertRaises(grpc.RpcError) as e:
                model_grpc.ModelServiceStub(ch).DeleteModel(
                    model_pb2.DeleteModelRequest(model_name="acme/m"), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_default_policy_serves_gated_repos_with_the_server_token(self):
        srv = self.server()
        status, _, body = get(srv.mirror, "/acme/gated/resolve/main/config.json")
        self.assertEqual((status, body), (200, (self.content / "config.json").read_bytes()))
        self.assertNotIn(b"hf_upstream_secret", Path(srv.log_path).read_bytes())

    def test_tls_with_token_refuses_a_plaintext_mirror(self):
        cert, key = self.tmp / "c.pem", self.tmp / "k.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        token = self.tmp / "token3"
        token.write_text("t")
        srv = self.server(args=["--tls-cert", cert, "--tls-key", key, "--auth-token-file", token],
                          start=False)
        r = run([srv_bin(), "--validate-config", "--tls-cert", cert, "--tls-key", key,
                 "--auth-token-file", token, "--mirror-port", "8002"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("plain HTTP", r.stderr + r.stdout)
        r = run([srv_bin(), "--validate-config", "--tls-cert", cert, "--tls-key", key,
                 "--auth-token-file", token, "--allow-plaintext-mirror", "true"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.servers.remove(srv)


def srv_bin():
    from server_harness import server_binary
    return server_binary()


class FloodTest(HostileBase):
    def setUp(self):
        super().setUp()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))

    def test_good_client_served_within_a_second_under_1000_hostile_connections(self):
        srv = self.server()
        host, port = self.mirror_addr(srv)
        # Cache both files first: what is measured is the server, not the upstream fetch.
        for f in ["big.bin", "config.json"]:
            status, _, _ = get(srv.mirror, f"/acme/m/resolve/main/{f}")
            self.assertEqual(status, 200)
        hostile = []
        try:
            for i in range(1000):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.bind((f"127.0.0.{10 + i % 25}", 0))
                s.setblocking(True)
                s.connect((host, port))
                if i % 3 == 0:    # slowloris: a head that never ends
                    s.send(b"GET /api/models/acme/m/revision/main HTTP/1.1\r\nX-a: ")
                elif i % 3 == 1:  # slow reader: asks for 4 MiB and never reads
                    s.send(b"GET /acme/m/resolve/main/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                hostile.append(s)  # the rest: idle keep-alive
            worst = 0.0
            times = []
            for attempt in range(5):
                start = time.monotonic()
                status, _, body = get(srv.mirror, "/acme/m/resolve/main/config.json", timeout=5)
                took = time.monotonic() - start
                self.assertEqual(status, 200)
                worst = max(worst, took)
                times.append(round(took * 1000))
                # Keep the slowloris trickling: one byte a second.
                for s in hostile[::3]:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                time.sleep(0.2)
            print(f"\nwell-behaved client under 1000 hostile connections: {times} ms")
            self.assertLess(worst, 1.0 * SLACK)
        finally:
            for s in hostile:
                s.close()

    def test_thread_limit_does_not_kill_the_server(self):
        srv = self.server()
        pid = srv.proc.pid
        vm = int([l for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if l.startswith("VmSize:")][0].split()[1]) * 1024
        # Room for a few more thread stacks at most.
        subprocess.run(["prlimit", f"--pid={pid}", f"--as={vm + 64 * MIB}:"], check=True)
        socks = []
        try:
            for i in range(400):
                s = socket.socket()
                s.bind((f"127.0.0.{40 + i % 10}", 0))
                s.connect(self.mirror_addr(srv))
                s.send(b"GET /api/models/acme/m/revision/main HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(s)
            time.sleep(1)
            self.assertIsNone(srv.proc.poll(), srv.log_text())
        finally:
            for s in socks:
                s.close()
        subprocess.run(["prlimit", f"--pid={pid}", "--as=unlimited:"], check=True)


if __name__ == "__main__":
    unittest.main()
