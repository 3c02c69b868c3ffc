"""mx-server end to end with a real gRPC client (Python grpcio, stubs generated from
proto/): ModelService semantics, single-flight across replicas (Redis and embedded),
lease takeover, ERROR then retry, path safety, disconnecting clients, the HF mirror,
TLS and token auth, P2P registry on both backends, metrics."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import threading
import time
import unittest
import urllib.request
from pathlib import Path

import grpc

import hf_reader
from harness import MIB, Nginx, make_repo, mx_binary, run
from server_harness import HubAndServersCase, RedisServer, stubs

S = stubs()
model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]
p2p_pb2, p2p_grpc = S["p2p_pb2"], S["p2p_pb2_grpc"]
health_pb2, health_grpc = S["health_pb2"], S["health_pb2_grpc"]
api_pb2, api_grpc = S["api_pb2"], S["api_pb2_grpc"]

FILES = {
    "config.json": 600,
    "tokenizer.json": 150_000,
    "empty.txt": 0,
    "sub/notes.md": 2000,
    "model-00001-of-00002.safetensors": 6 * MIB + 5,
    "model-00002-of-00002.safetensors": 3 * MIB,
}
REPO_BYTES = sum(FILES.values())


def ensure(address, name, revision=None, ignore_weights=False, metadata=None, creds=None):
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with channel:
        stub = model_grpc.ModelServiceStub(channel)
        req = model_pb2.ModelDownloadRequest(model_name=name, ignore_weights=ignore_weights)
        if revision:
            req.revision = revision
        return list(stub.EnsureModelDownloaded(req, metadata=metadata, timeout=120))


def stream_files(address, name, chunk_size=1 << 20, paths=None, ignore_weights=False):
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = model_grpc.ModelServiceStub(ch)
        req = model_pb2.ModelFilesRequest(model_name=name, chunk_size=chunk_size,
                                          ignore_weights=ignore_weights)
        if paths:
            req.file_selector.paths.extend(paths)
        call = stub.StreamModelFiles(req, timeout=120)
        chunks = list(call)
        return chunks, dict(call.initial_metadata())


def assemble(chunks):
    files = {}
    for c in chunks:
        buf = files.setdefault(c.relative_path, bytearray())
        assert c.offset == len(buf), (c.relative_path, c.offset, len(buf))
        buf.extend(c.data)
    return files


class ServerTestBase(HubAndServersCase):
    PREFIX = "mx-srv-"

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=21)
        return {"org/m": {"revisions": {"main": cls.content}},
                "org/other": {"revisions": {"main": cls.content}}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.commit = cls.hub.commit("org/m")

    def setUp(self):
        super().setUp()
        self.redis = None

    def tearDown(self):
        super().tearDown()
        if self.redis:
            self.redis.stop()

    def origin_bytes(self):
        return self.hub.stats()["bytes_total"]


class ModelServiceTest(ServerTestBase):
    def test_health_ping_and_grpc_health(self):
        srv = self.server()
        with grpc.insecure_channel(srv.address) as ch:
            h = health_grpc.HealthServiceStub(ch).GetHealth(health_pb2.HealthRequest())
            self.assertEqual(h.status, "ok")
            self.assertTrue(h.version)
            r = api_grpc.ApiServiceStub(ch).SendRequest(api_pb2.ApiRequest(id="1", action="ping"))
            self.assertTrue(r.success)
            self.assertEqual(json.loads(r.data), {"message": "pong"})
            r = api_grpc.ApiServiceStub(ch).SendRequest(api_pb2.ApiRequest(id="2", action="dance"))
            self.assertFalse(r.success)
            self.assertIn("dance", r.error)
            # grpc.health.v1.Health/Check: empty request, response field 1 = SERVING (1).
            check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=lambda _: b"", response_deserializer=lambda b: b)
            self.assertEqual(check(None), b"\x08\x01")

    def test_ensure_list_stream_delete(self):
        srv = self.server()
        updates = ensure(srv.address, "org/m")
        self.assertEqual(len(updates), 2)
        self.assertEqual(updates[0].status, model_pb2.DOWNLOADING)
        self.assertEqual(updates[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(updates[-1].resolved_revision, self.commit)
        self.assertEqual(updates[-1].model_name, "org/m")
        again = ensure(srv.address, "org/m")
        self.assertEqual([u.status for u in again], [model_pb2.DOWNLOADED, model_pb2.DOWNLOADED])
        self.assertIn("already", again[0].message)
        self.assertEqual(again[-1].resolved_revision, self.commit)
        # The cache is an ordinary HF cache.
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])

        with grpc.insecure_channel(srv.address) as ch:
            lst = model_grpc.ModelServiceStub(ch).ListModelFiles(model_pb2.ModelFilesRequest(model_name="org/m"))
        self.assertEqual({f.relative_path: f.size for f in lst.files}, FILES)
        self.assertEqual(lst.total_size, REPO_BYTES)

        chunks, md = stream_files(srv.address, "org/m")
        self.assertEqual(chunks[0].commit_hash, self.commit)
        self.assertFalse(any(c.HasField("commit_hash") for c in chunks[1:]))
        self.assertTrue(chunks[-1].is_last_file and chunks[-1].is_last_chunk)
        self.assertEqual(sum(c.is_last_file for c in chunks), 1)
        self.assertLessEqual(max(len(c.data) for c in chunks), 1 << 20)
        empty = [c for c in chunks if c.relative_path == "empty.txt"]
        self.assertEqual(len(empty), 1)
        self.assertTrue(empty[0].is_last_chunk)
        self.assertEqual(empty[0].data, b"")
        for rel, data in assemble(chunks).items():
            self.assertEqual(bytes(data), (self.content / rel).read_bytes(), rel)
        # A chunk size above the message limit is clamped and announced, not refused.
        chunks, md = stream_files(srv.address, "org/m", chunk_size=64 << 20,
                                  paths=["model-00001-of-00002.safetensors"])
        self.assertIn("x-mx-chunk-size-clamped-from", md)
        self.assertLess(max(len(c.data) for c in chunks), 16 << 20)
        self.assertEqual(bytes(assemble(chunks)["model-00001-of-00002.safetensors"]),
                         (self.content / "model-00001-of-00002.safetensors").read_bytes())
        # ignore_weights leaves the weights out.
        with grpc.insecure_channel(srv.address) as ch:
            lst = model_grpc.ModelServiceStub(ch).ListModelFiles(
                model_pb2.ModelFilesRequest(model_name="org/m", ignore_weights=True))
        self.assertEqual(sorted(f.relative_path for f in lst.files),
                         ["config.json", "empty.txt", "sub/notes.md", "tokenizer.json"])

        with grpc.insecure_channel(srv.address) as ch:
            resp = model_grpc.ModelServiceStub(ch).DeleteModel(model_pb2.DeleteModelRequest(model_name="org/m"))
        self.assertTrue(resp.success)
        self.assertFalse((self.cache / "models--org--m").exists())
        with self.assertRaises(grpc.RpcError) as e:
            stream_files(srv.address, "org/m")
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_metadata_only_request_does_not_mark_weights_present(self):
        srv = self.server()
        ensure(srv.address, "org/m", ignore_weights=True)
        snap = self.cache / "models--org--m" / "snapshots" / self.commit
        self.assertFalse((snap / "model-00001-of-00002.safetensors").exists())
        self.assertTrue((snap / "config.json").exists())
        updates = ensure(srv.address, "org/m")
        self.assertEqual(updates[0].status, model_pb2.DOWNLOADING)
        self.assertTrue((snap / "model-00001-of-00002.safetensors").exists())

    def test_stream_refuses_paths_outside_the_snapshot(self):
        srv = self.server()
        ensure(srv.address, "org/m")
        snap = self.cache / "models--org--m" / "snapshots" / self.commit
        secret = self.tmp / "secret.txt"
        secret.write_text("do not serve me")
        os.symlink(secret, snap / "escape.txt")
        os.symlink("/etc/passwd", snap / "passwd")
        for path, code in [("../../../../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                           ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                           ("sub/../../x", grpc.StatusCode.INVALID_ARGUMENT),
                           ("escape.txt", grpc.StatusCode.NOT_FOUND),
                           ("passwd", grpc.StatusCode.NOT_FOUND)]:
            with self.assertRaises(grpc.RpcError, msg=path) as e:
                stream_files(srv.address, "org/m", paths=[path])
            self.assertEqual(e.exception.code(), code, path)
        chunks, _ = stream_files(srv.address, "org/m")
        self.assertNotIn("escape.txt", {c.relative_path for c in chunks})
        self.assertNotIn("passwd", {c.relative_path for c in chunks})

    def test_ngc_is_unimplemented_and_unknown_repo_is_an_error(self):
        srv = self.server()
        with self.assertRaises(grpc.RpcError) as e:
            with grpc.insecure_channel(srv.address) as ch:
                list(model_grpc.ModelServiceStub(ch).EnsureModelDownloaded(
                    model_pb2.ModelDownloadRequest(model_name="org/m", provider=model_pb2.NGC)))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        updates = ensure(srv.address, "org/missing")
        self.assertEqual(updates[-1].status, model_pb2.ERROR)
        self.assertIn("does not exist", updates[-1].message)

    def test_error_then_exactly_one_retry(self):
        srv = self.server(env={"MX_STALL_TIMEOUT_SECONDS": "2"})
        self.hub.set_faults([{"kind": "404", "path": "config.json", "count": -1}])
        first = ensure(srv.address, "org/m")
        self.assertEqual(first[-1].status, model_pb2.ERROR)
        self.hub.set_faults([])
        second = ensure(srv.address, "org/m")
        self.assertIn("retrying", second[0].message)
        self.assertEqual(second[-1].status, model_pb2.DOWNLOADED)

    def test_hundred_disconnecting_clients_leak_nothing(self):
        srv = self.server()
        ensure(srv.address, "org/m")

        def abandon():
            with grpc.insecure_channel(srv.address) as ch:
                call = model_grpc.ModelServiceStub(ch).StreamModelFiles(
                    model_pb2.ModelFilesRequest(model_name="org/m", chunk_size=64 << 10))
                next(call)
                call.cancel()

        def active_streams():
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics") as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("mx_active_streams "):
                        return float(line.split()[1])
            return None

        def settle(want_fds=None, timeout=20.0):
            """Polls until no stream is active and the fd count is stable (or `want_fds`)."""
            deadline = time.monotonic() + timeout
            last = None
            while time.monotonic() < deadline:
                fds = srv.fd_count()
                if active_streams() == 0 and (fds == want_fds if want_fds is not None
                                              else fds == last):
                    return fds
                last = fds
                time.sleep(0.1)
            return srv.fd_count()

        abandon()  # warm up thread pools and caches before measuring
        baseline = settle()
        rss = srv.rss_kib()
        threads = [threading.Thread(target=abandon) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = settle(want_fds=baseline)
        print(f"\n100 abandoned streams: fds {baseline} -> {after}, rss {rss} -> {srv.rss_kib()} KiB")
        self.assertEqual(after, baseline, "descriptors leaked by abandoned streams")
        self.assertEqual(active_streams(), 0)
        # Under ASan (make sanitize) freed memory sits in its quarantine by design, so RSS says
        # nothing there; LeakSanitizer checks for leaks when the server exits instead.
        if not os.environ.get("ASAN_OPTIONS"):
            self.assertLess(srv.rss_kib() - rss, 48 * 1024)

    def test_lru_eviction(self):
        srv = self.server(args=["--max-models", "1"])
        ensure(srv.address, "org/m")
        ensure(srv.address, "org/other")
        self.assertFalse((self.cache / "models--org--m").exists())  # least recently used
        self.assertTrue((self.cache / "models--org--other").exists())
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics") as r:
            self.assertIn("mx_evictions_total 1", r.read().decode().replace(".000000", ""))
        again = ensure(srv.address, "org/m")  # evicted models come back on demand
        self.assertEqual(again[-1].status, model_pb2.DOWNLOADED)

    def test_metrics_endpoint(self):
        srv = self.server()
        ensure(srv.address, "org/m")
        stream_files(srv.address, "org/m")
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics") as r:
            text = r.read().decode()
        values = {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l and not l.startswith("#")}
        self.assertEqual(values["mx_downloads_completed_total"], 1)
        self.assertGreaterEqual(values["mx_upstream_bytes_total"], REPO_BYTES)
        self.assertEqual(values["mx_streamed_bytes_total"], REPO_BYTES)
        self.assertEqual(values["mx_cache_models"], 1)
        self.assertGreater(values["mx_registry_operation_seconds_count"], 0)


class ReplicaTest(ServerTestBase):
    def run_clients(self, addresses, n):
        results = [None] * n

        def client(i):
            results[i] = ensure(addresses[i % len(addresses)], "org/m")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            self.assertEqual(r[-1].status, model_pb2.DOWNLOADED, r)
            self.assertEqual(r[-1].resolved_revision, self.commit)
        return results

    def test_three_servers_on_redis_download_once(self):
        self.redis = RedisServer(self.tmp).start()
        env = {"MX_METADATA_BACKEND": "redis", "REDIS_URL": self.redis.url}
        servers = [self.server(env=env) for _ in range(3)]
        self.run_clients([s.address for s in servers], 8)
        served = self.origin_bytes()
        print(f"\n3 replicas, 8 clients: origin served {served / REPO_BYTES:.3f}x the repo")
        self.assertLessEqual(served, 1.05 * REPO_BYTES)

    def test_two_embedded_servers_on_one_cache_download_once(self):
        servers = [self.server() for _ in range(2)]
        self.run_clients([s.address for s in servers], 6)
        self.assertLessEqual(self.origin_bytes(), 1.05 * REPO_BYTES)

    def test_killed_replica_is_taken_over(self):
        self.redis = RedisServer(self.tmp).start()
        env = {"MX_METADATA_BACKEND": "redis", "REDIS_URL": self.redis.url, "MX_LEASE_SECS": "3"}
        a, b = self.server(env=env), self.server(env=env)
        shard = "model-00001-of-00002.safetensors"
        # The shard stalls after half its bytes, so A stays mid-download until it dies.
        self.hub.set_faults([{"kind": "stall", "path": shard, "count": 1, "seconds": 60}])
        t = threading.Thread(target=lambda: ensure_quiet(a.address), daemon=True)
        t.start()

        def model_record():
            cli = ["redis-cli", "-p", str(self.redis.port)]
            keys = subprocess.run(cli + ["--scan", "--pattern", "mx:model:*"],
                                  capture_output=True, text=True).stdout.split()
            if len(keys) != 1:
                return {}
            flat = subprocess.run(cli + ["HGETALL", keys[0]],
                                  capture_output=True, text=True).stdout.splitlines()
            return dict(zip(flat[::2], flat[1::2]))

        # Wait for the observable state, not for a guess at time: the origin has served
        # part of the shard and stalled, and the registry holds A's DOWNLOADING claim.
        deadline = time.monotonic() + 60
        while True:
            stats = self.hub.stats()
            rec = model_record()
            if (stats["faults_triggered"].get("stall") == 1
                    and stats["bytes_by_file"].get(shard, 0) > 0
                    and rec.get("state") == "0" and rec.get("claim_id")):
                break
            self.assertLess(time.monotonic(), deadline,
                            f"A never got mid-download: {stats} {rec}\n{a.log_text()}")
            time.sleep(0.05)
        a_claim = rec["claim_id"]
        shard_bytes_at_kill = stats["bytes_by_file"][shard]
        a.kill9()
        t.join(timeout=30)
        started = time.monotonic()
        updates = ensure(b.address, "org/m")
        took = time.monotonic() - started
        self.assertEqual(updates[-1].status, model_pb2.DOWNLOADED, updates)
        self.assertEqual(updates[-1].resolved_revision, self.commit)
        print(f"\ntakeover after kill -9: {took:.1f}s with a 3 s lease")
        self.assertLess(took, 2 * 3 + 10)  # two lease periods plus the download itself
        # A takeover, not a coincidence: B replaced A's claim with its own, and the origin
        # served the shard again after A died.
        rec = model_record()
        self.assertTrue(rec.get("claim_id"), rec)
        self.assertNotEqual(rec["claim_id"], a_claim, rec)
        self.assertGreater(self.hub.stats()["bytes_by_file"].get(shard, 0), shard_bytes_at_kill)
        self.assertEqual(self.hub.stats()["faults_triggered"].get("stall"), 1)

    def test_redis_restart_mid_run(self):
        self.redis = RedisServer(self.tmp).start()
        env = {"MX_METADATA_BACKEND": "redis", "REDIS_URL": self.redis.url}
        srv = self.server(env=env)
        ensure(srv.address, "org/m")
        before = self.origin_bytes()
        port = self.redis.port
        self.redis.stop()
        self.redis = RedisServer(self.tmp, port=port).start()  # empty, same address
        updates = ensure(srv.address, "org/m")
        self.assertEqual(updates[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(self.origin_bytes(), before)  # restored, not downloaded again
        out = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", "mx:model:*"],
                             capture_output=True, text=True).stdout
        self.assertIn("org/m", out)


def ensure_quiet(address):
    try:
        ensure(address, "org/m")
    except grpc.RpcError:
        pass


class MirrorTest(ServerTestBase):
    def test_mx_download_through_the_mirror_matches_a_direct_download(self):
        srv = self.server()
        via = self.tmp / "via-mirror"
        r = run([mx_binary(), "download", "org/m", "--cache-dir", via, "--quiet"],
                env={"HF_ENDPOINT": srv.mirror})
        self.assertEqual(r.returncode, 0, r.stderr + srv.log_text())
        direct = self.tmp / "direct"
        r2 = run([mx_binary(), "download", "org/m", "--cache-dir", direct, "--quiet"],
                 env={"HF_ENDPOINT": self.hub.endpoint})
        self.assertEqual(r2.returncode, 0, r2.stderr)
        a, b = via / "models--org--m", direct / "models--org--m"
        self.assertEqual((a / "refs/main").read_text(), (b / "refs/main").read_text())
        for root, _, files in os.walk(b / "snapshots"):
            for f in files:
                pb = Path(root) / f
                pa = a / pb.relative_to(b)
                self.assertEqual(os.readlink(pa), os.readlink(pb))
                self.assertEqual(pa.read_bytes(), pb.read_bytes())
        self.assertEqual(sorted(p.name for p in (a / "blobs").iterdir()),
                         sorted(p.name for p in (b / "blobs").iterdir()))
        self.assertEqual(json.loads((a / f"trees/{self.commit}.json").read_text()),
                         json.loads((b / f"trees/{self.commit}.json").read_text()))
        # Hub-style headers and ranges on resolve.
        req = urllib.request.Request(f"{srv.mirror}/org/m/resolve/main/model-00002-of-00002.safetensors",
                                     method="HEAD")
        with urllib.request.urlopen(req) as resp:
            self.assertEqual(resp.headers["X-Repo-Commit"], self.commit)
            self.assertTrue(resp.headers["X-Linked-Etag"].startswith('"'))
            self.assertEqual(int(resp.headers["X-Linked-Size"]), FILES["model-00002-of-00002.safetensors"])
        req = urllib.request.Request(f"{srv.mirror}/org/m/resolve/main/config.json",
                                     headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req) as resp:
            self.assertEqual(resp.status, 206)
            self.assertEqual(resp.headers["Content-Range"], f"bytes 10-19/{FILES['config.json']}")
            self.assertEqual(resp.read(), (self.content / "config.json").read_bytes()[10:20])
        for url, code in [(f"{srv.mirror}/org/m/resolve/main/nope.txt", "EntryNotFound"),
                          (f"{srv.mirror}/api/models/org/absent/revision/main", "RepoNotFound")]:
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url)
            self.assertEqual(e.exception.code, 404)
            self.assertEqual(e.exception.headers["X-Error-Code"], code)


    def test_listing_and_head_do_not_wait_for_weights(self):
        srv = self.server()
        self.hub.reset()
        with urllib.request.urlopen(f"{srv.mirror}/api/models/org/m/revision/main") as r:
            info = json.loads(r.read())
        self.assertEqual(info["sha"], self.commit)
        self.assertEqual(sorted(s["rfilename"] for s in info["siblings"]), sorted(FILES))
        with urllib.request.urlopen(f"{srv.mirror}/api/models/org/m/revision/main?blobs=true") as r:
            sib = {s["rfilename"]: s for s in json.loads(r.read())["siblings"]}
        self.assertEqual({k: v["size"] for k, v in sib.items()}, FILES)
        self.assertEqual(len(sib["model-00001-of-00002.safetensors"]["lfs"]["sha256"]), 64)
        with urllib.request.urlopen(f"{srv.mirror}/api/models/org/m/tree/main?recursive=true") as r:
            tree = json.loads(r.read())
        files = {t["path"]: t for t in tree if t["type"] == "file"}
        self.assertEqual({p: t["size"] for p, t in files.items()}, FILES)
        self.assertIn("lfs", files["model-00001-of-00002.safetensors"])
        self.assertIn({"type": "directory", "path": "sub"}, [{k: t[k] for k in ("type", "path")} for t in tree])
        with urllib.request.urlopen(f"{srv.mirror}/api/models/org/m/tree/main") as r:
            top = json.loads(r.read())
        self.assertNotIn("sub/notes.md", [t["path"] for t in top])
        req = urllib.request.Request(f"{srv.mirror}/org/m/resolve/main/model-00001-of-00002.safetensors",
                                     method="HEAD")
        with urllib.request.urlopen(req) as resp:
            self.assertEqual(int(resp.headers["Content-Length"]), FILES["model-00001-of-00002.safetensors"])
        self.assertEqual(self.origin_bytes(), 0)  # nothing but metadata crossed from upstream
        with urllib.request.urlopen(f"{srv.mirror}/org/m/resolve/{self.commit}/sub/notes.md") as r:
            self.assertEqual(r.read(), (self.content / "sub/notes.md").read_bytes())


class SecurityTest(ServerTestBase):
    def test_tls_and_bearer_token(self):
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        token_file = self.tmp / "token"
        token_file.write_text("s3cr3t-token\n")
        # The mirror is plain HTTP: with TLS and a token it must be acknowledged explicitly.
        srv = self.server(args=["--tls-cert", cert, "--tls-key", key, "--auth-token-file", token_file,
                                "--allow-plaintext-mirror", "true"], start=False)
        srv.start(wait=False)
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        deadline = time.monotonic() + 20
        while True:
            try:
                with grpc.secure_channel(srv.address, creds) as ch:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                break
            except grpc.FutureTimeoutError:
                self.assertLess(time.monotonic(), deadline, srv.log_text())
        ok = ensure(srv.address, "org/m", metadata=[("authorization", "Bearer s3cr3t-token")], creds=creds)
        self.assertEqual(ok[-1].status, model_pb2.DOWNLOADED)
        for md in ([("authorization", "Bearer wrong")], None):
            with self.assertRaises(grpc.RpcError) as e:
                ensure(srv.address, "org/m", metadata=md, creds=creds)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        # Health checks are exempt from the token.
        with grpc.secure_channel(srv.address, creds) as ch:
            self.assertEqual(health_grpc.HealthServiceStub(ch).GetHealth(health_pb2.HealthRequest()).status, "ok")
        # Plaintext is refused on a TLS port.
        with self.assertRaises(grpc.RpcError):
            with grpc.insecure_channel(srv.address) as ch:
                health_grpc.HealthServiceStub(ch).GetHealth(health_pb2.HealthRequest(), timeout=3)
        self.assertNotIn("s3cr3t-token", srv.log_text())

    def test_validate_config(self):
        from server_harness import server_binary
        r = run([server_binary(), "--validate-config"], env={"MODEL_EXPRESS_CACHE_DIRECTORY": self.cache})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("8001", r.stdout)
        cfg = self.tmp / "cfg.yaml"
        cfg.write_text("port: 9100\nmirror_port: 0\nmetadata_backend: embedded\n")
        r = run([server_binary(), "--validate-config", "--config", cfg, "--port", "9200"],
                env={"MODEL_EXPRESS_CACHE_DIRECTORY": self.cache, "MODEL_EXPRESS_SERVER_PORT": "9300"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(":9200", r.stdout)  # flag beats env beats file
        r = run([server_binary(), "--validate-config"],
                env={"MODEL_EXPRESS_CACHE_DIRECTORY": self.cache, "MX_METADATA_BACKEND": "etcd"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("etcd", r.stderr)


class P2pTest(ServerTestBase):
    def identity(self, **kw):
        base = dict(mx_version="0.5.0", model_name="Qwen/Qwen3-0.6B",
                    backend_framework=p2p_pb2.BACKEND_FRAMEWORK_VLLM, tensor_parallel_size=1,
                    pipeline_parallel_size=1, expert_parallel_size=1, dtype="bfloat16")
        base.update(kw)
        return p2p_pb2.SourceIdentity(**base)

    def check_backend(self, env):
        env = dict(env, MX_HEARTBEAT_TIMEOUT_SECS="2", MX_GC_TIMEOUT_SECS="3600")
        srv = self.server(env=env, args=["--reaper-interval-ms", "200"])
        with grpc.insecure_channel(srv.address) as ch:
            stub = p2p_grpc.P2pServiceStub(ch)
            worker = p2p_pb2.WorkerMetadata(worker_rank=0, status=p2p_pb2.SOURCE_STATUS_READY,
                                            metadata_endpoint="127.0.0.1:5555", agent_name="a0")
            for req, msg in [(p2p_pb2.PublishMetadataRequest(worker=worker, worker_id="w"), "identity is required"),
                             (p2p_pb2.PublishMetadataRequest(identity=self.identity(), worker=worker), "worker_id is required"),
                             (p2p_pb2.PublishMetadataRequest(identity=self.identity(), worker_id="w"), "worker is required")]:
                r = stub.PublishMetadata(req)
                self.assertFalse(r.success)
                self.assertEqual(r.message, msg)
            r = stub.PublishMetadata(p2p_pb2.PublishMetadataRequest(identity=self.identity(), worker=worker,
                                                                    worker_id="w0"))
            self.assertTrue(r.success)
            self.assertEqual(r.mx_source_id, "a222b41983f1f988")
            worker1 = p2p_pb2.WorkerMetadata(worker_rank=1, status=p2p_pb2.SOURCE_STATUS_READY)
            stub.PublishMetadata(p2p_pb2.PublishMetadataRequest(identity=self.identity(), worker=worker1,
                                                                worker_id="w1"))
            other = stub.PublishMetadata(p2p_pb2.PublishMetadataRequest(
                identity=self.identity(model_name="other/model"), worker=worker, worker_id="w2"))
            ready = p2p_pb2.SOURCE_STATUS_READY
            lst = stub.ListSources(p2p_pb2.ListSourcesRequest(identity=self.identity(), status_filter=ready))
            self.assertEqual(sorted(i.worker_id for i in lst.instances), ["w0", "w1"])
            lst = stub.ListSources(p2p_pb2.ListSourcesRequest(model_name_filter="other/model"))
            self.assertEqual([i.mx_source_id for i in lst.instances], [other.mx_source_id])
            lst = stub.ListSources(p2p_pb2.ListSourcesRequest(identity=self.identity(), worker_rank_filter=1))
            self.assertEqual([i.worker_id for i in lst.instances], ["w1"])
            self.assertEqual(len(stub.ListSources(p2p_pb2.ListSourcesRequest(limit=1)).instances), 1)
            md = stub.GetMetadata(p2p_pb2.GetMetadataRequest(mx_source_id=r.mx_source_id, worker_id="w0"))
            self.assertTrue(md.found)
            self.assertEqual(md.worker.metadata_endpoint, "127.0.0.1:5555")
            self.assertEqual(md.identity.model_name, "Qwen/Qwen3-0.6B")
            self.assertFalse(stub.GetMetadata(p2p_pb2.GetMetadataRequest(mx_source_id="x", worker_id="y")).found)
            # Heartbeats keep w0 ready; w1 goes stale after the timeout.
            for _ in range(6):
                time.sleep(0.5)
                up = stub.UpdateStatus(p2p_pb2.UpdateStatusRequest(mx_source_id=r.mx_source_id, worker_id="w0",
                                                                   status=ready))
                self.assertTrue(up.success)
            lst = stub.ListSources(p2p_pb2.ListSourcesRequest(identity=self.identity(), status_filter=ready))
            self.assertEqual([i.worker_id for i in lst.instances], ["w0"])
            md = stub.GetMetadata(p2p_pb2.GetMetadataRequest(mx_source_id=r.mx_source_id, worker_id="w1"))
            self.assertEqual(md.worker.status, p2p_pb2.SOURCE_STATUS_STALE)
            bad = stub.UpdateStatus(p2p_pb2.UpdateStatusRequest(mx_source_id="nope", worker_id="x", status=ready))
            self.assertFalse(bad.success)

    def test_p2p_registry_embedded(self):
        self.check_backend({})

    def test_p2p_registry_redis(self):
        self.redis = RedisServer(self.tmp).start()
        self.check_backend({"MX_METADATA_BACKEND": "redis", "REDIS_URL": self.redis.url})


if __name__ == "__main__":
    unittest.main()
