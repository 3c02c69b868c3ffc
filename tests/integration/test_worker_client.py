"""The worker side (`mx model`, `mx health`, `mx api send`) against a real mx-server with a
hub stand-in upstream: both storage modes give a cache `mx cache verify` and an offline
huggingface_hub-style reader accept; a server path not readable here switches to
streaming with one warning; a server killed mid-stream and restarted is survived; a
commit change between phases is refused; server down -> smart-fallback uses the hub and
server-only fails fast; `mx model clear` removes local files and the server record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import hf_reader
from azure_token_peers import make_tls_cert
from grpc_fault_proxy import GrpcFaultProxy
from harness import MIB, HubStub, base_env, free_port, make_repo, mx_binary, run
from server_harness import HubAndServersCase, RedisServer

FILES = {
    "config.json": 700,
    "tokenizer.json": 5000,
    "sub/notes.txt": 0,
    "model.safetensors.index.json": 300,
    "model-00001-of-00002.safetensors": 6 * MIB + 5,
    "model-00002-of-00002.safetensors": 3 * MIB,
}
BIG = {"config.json": 100, "model.safetensors": 48 * MIB}


def largest_temp(blobs: Path) -> int:
    """Bytes in the largest temp file under blobs/ (0 when none): a temp file may be renamed
    between listing and stat."""
    size = 0
    for p in blobs.glob("*.tmp"):
        try:
            size = max(size, p.stat().st_size)
        except FileNotFoundError:
            pass
    return size


class WorkerClientTest(HubAndServersCase):
    PREFIX = "mx-worker-"

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=31)
        cls.big = make_repo(tmp / "big", BIG, seed=32)
        return {"org/m": {"revisions": {"main": cls.content}},
                "org/big": {"revisions": {"main": cls.big}}}

    def mx(self, *args, env=None, timeout=300):
        e = {"MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token"), "HF_ENDPOINT": self.hub.endpoint}
        e.update(env or {})
        return run([mx_binary(), *args], env=e, timeout=timeout)

    def download(self, server, cache, *extra, env=None, ok=True):
        r = self.mx("model", "download", "org/m", "-e", server.address if server else extra[0],
                    "--cache-path", cache, "-f", "json", *(extra[1:] if not server else extra),
                    env=env)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout.strip().splitlines()[-1]), r
        return None, r

    def assert_complete(self, cache, report, content=None, files=FILES):
        content = content or self.content
        self.assertEqual(Path(report["path"]).parent.parent, Path(cache) / "models--org--m")
        for name in files:
            self.assertEqual((Path(report["path"]) / name).read_bytes(),
                             (content / name).read_bytes(), name)
        v = run([mx_binary(), "cache", "verify", "--cache-dir", cache, "org/m"])
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertEqual(hf_reader.snapshot_path_offline(str(cache), "org/m"), report["path"])

    def client_cache(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="client-", dir=self.tmp))

    def test_no_shared_storage_streams_a_verified_cache_once(self):
        s = self.server()
        cache = self.client_cache()
        rep, r = self.download(s, cache, "--no-shared-storage")
        self.assertEqual(rep["strategy"], "stream")
        self.assertEqual(rep["commit"], self.hub.commit("org/m"))
        self.assertEqual(rep["files"], len(FILES))
        self.assertEqual(rep["bytes_streamed"], sum(FILES.values()))
        # Metadata phase: 4 parallel calls for its 4 files; weights phase: one per shard.
        self.assertEqual(s.log_text().count("stream done"), 6)
        for key in ("path", "commit", "files", "bytes", "bytes_streamed", "seconds", "strategy"):
            self.assertIn(key, rep)
        self.assert_complete(cache, rep)
        self.assertEqual(list((cache / "models--org--m" / "blobs").glob("*.tmp")), [])
        # A second run fetches nothing again (also via the environment variable).
        rep2, _ = self.download(s, cache, env={"MODEL_EXPRESS_NO_SHARED_STORAGE": "true"})
        self.assertEqual(rep2["bytes_streamed"], 0)
        # Human output: the last stdout line is the snapshot path.
        h = self.mx("model", "download", "org/m", "-e", s.address, "--cache-path", cache,
                    "--no-shared-storage")
        self.assertEqual(h.returncode, 0, h.stderr)
        self.assertEqual(h.stdout.strip().splitlines()[-1], rep["path"])

    def test_shared_storage_reads_the_servers_cache(self):
        s = self.server()
        rep, r = self.download(s, self.cache)
        self.assertEqual(rep["strategy"], "shared-storage")
        self.assertEqual(rep["bytes_streamed"], 0)
        self.assertNotIn("warning", r.stderr)
        self.assert_complete(self.cache, rep)

    def test_unreadable_server_path_streams_with_one_warning(self):
        s = self.server()
        cache = self.client_cache()  # the server's cache dir is not visible here
        before = self.hub.stats()
        rep, r = self.download(s, cache)
        self.assertEqual(rep["strategy"], "stream", r.stderr)
        self.assertEqual(r.stderr.count("warning:"), 1, r.stderr)
        self.assertIn("streaming the files from the server", r.stderr)
        self.assert_complete(cache, rep)
        # The server fetched from the hub once; the client itself never went there.
        again = self.mx("model", "download", "org/m", "-e", s.address, "--cache-path",
                        self.client_cache(), "-f", "json", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(json.loads(again.stdout)["strategy"], "stream")

    def test_server_killed_mid_stream_then_restarted(self):
        s = self.server()
        cache = self.client_cache()
        # Warm the server so the stream starts at once.
        self.assertEqual(self.mx("model", "download", "org/big", "-e", s.address, "--phase",
                                 "all", "--cache-path", self.cache).returncode, 0)
        env = base_env()
        env.update({"MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token")})
        proc = subprocess.Popen(
            [mx_binary(), "model", "download", "org/big", "-e", s.address, "--cache-path",
             str(cache), "--no-shared-storage", "-s", "server-only", "-f", "json",
             "--transfer-chunk-size", "64KiB", "--streams", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        blobs = cache / "models--org--big" / "blobs"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and largest_temp(blobs) < MIB:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGSTOP)  # freeze the client mid-file
        try:
            self.assertTrue(list(blobs.glob("*.tmp")), "the stream never started")
            port = s.port
            s.kill9()
            s2 = self.server(env={"MODEL_EXPRESS_SERVER_PORT": str(port)}, start=False)
            s2.start(wait=False)
            s2.port = port  # the environment above made it listen on the old port
            s2.wait_ready()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        rep = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(rep["strategy"], "stream")
        self.assertIn("stream done", s2.log_text())
        # Resumed from the verified offset: no byte crossed the network twice.
        self.assertEqual(rep["bytes_streamed"], sum(BIG.values()))
        for name in BIG:
            self.assertEqual((Path(rep["path"]) / name).read_bytes(), (self.big / name).read_bytes())
        v = run([mx_binary(), "cache", "verify", "--cache-dir", cache, "org/big"])
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertEqual(list(blobs.glob("*.tmp")), [])

    def test_commit_change_between_phases_is_refused(self):
        s = self.server()
        cache = self.client_cache()
        rep, _ = self.download(s, cache, "--no-shared-storage", "--phase", "metadata")
        old = rep["commit"]
        self.assertFalse((Path(rep["path"]) / "model-00001-of-00002.safetensors").exists())
        self.assertTrue((Path(rep["path"]) / "config.json").exists())
        # Upstream moves: a server in front of a hub where org/m has a new commit.
        changed = make_repo(self.tmp / "changed", FILES, seed=99)
        with HubStub(self.tmp, {"org/m": {"revisions": {"main": changed}}}) as hub2:
            self.assertNotEqual(hub2.commit("org/m"), old)
            # Its own registry: it stands for another upstream, not a replica of s.
            s2 = self.server(env={"HF_ENDPOINT": hub2.endpoint, "MX_METADATA_BACKEND": "embedded"},
                             cache=self.client_cache())
            _, r = self.download(s2, cache, "--no-shared-storage", "--phase", "weights",
                                 "--expect-commit", old, "-s", "server-only", ok=False)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("refusing to mix two commits", r.stderr)
        repo = cache / "models--org--m"
        self.assertEqual([p.name for p in (repo / "snapshots").iterdir()], [old])
        self.assertFalse((repo / "snapshots" / old / "model-00001-of-00002.safetensors").exists())
        # The metadata phase wrote no ref: refs are written once the whole install is in.
        # (a --phase metadata install still names its commit; its files verify)
        v = run([mx_binary(), "cache", "verify", "--cache-dir", cache, "org/m"])
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        # The weights phase against the unchanged server completes the pinned commit.
        rep, _ = self.download(s, cache, "--no-shared-storage", "--phase", "weights",
                               "--expect-commit", old, "-s", "server-only")
        self.assertEqual(rep["commit"], old)
        self.assertEqual(rep["bytes_streamed"], FILES["model-00001-of-00002.safetensors"] +
                         FILES["model-00002-of-00002.safetensors"])
        self.assert_complete(cache, rep)

    def test_server_down_fallback_and_server_only(self):
        dead = f"127.0.0.1:{free_port()}"
        cache = self.client_cache()
        t0 = time.monotonic()
        r = self.mx("model", "download", "org/m", "-e", dead, "-s", "server-only",
                    "--cache-path", cache)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 1)
        self.assertLess(took, 5)
        self.assertIn("not reachable", r.stderr)
        self.assertFalse((cache / "models--org--m").exists())
        rep, r = self.download(None, cache, dead)
        self.assertEqual(rep["strategy"], "hub")
        self.assertEqual(r.stderr.count("warning:"), 1, r.stderr)
        self.assert_complete(cache, rep)
        # direct never contacts the server (none is running anyway) and finds it all in place.
        d = self.mx("model", "download", "org/m", "-s", "direct", "--cache-path", cache,
                    "-f", "json")
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertEqual(json.loads(d.stdout)["strategy"], "hub")

    def test_clear_removes_local_files_and_server_record(self):
        s = self.server()
        cache = self.client_cache()
        self.download(s, cache, "--no-shared-storage")
        st = json.loads(self.mx("model", "status", "org/m", "-e", s.address, "--cache-path",
                                cache, "-f", "json").stdout)
        self.assertEqual(st["server"]["status"], "DOWNLOADED")
        self.assertIsNotNone(st["local"])
        r = self.mx("model", "clear", "org/m", "-e", s.address, "--cache-path", cache, "-f", "json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout)
        self.assertTrue(out["local_removed"])
        self.assertTrue(out["server_removed"], out)
        self.assertFalse((cache / "models--org--m" / "snapshots").exists())
        self.assertFalse((self.cache / "models--org--m" / "snapshots").exists())
        st = json.loads(self.mx("model", "status", "org/m", "-e", s.address, "--cache-path",
                                cache, "-f", "json").stdout)
        self.assertEqual(st["server"]["status"], "NOT_FOUND")
        self.assertIsNone(st["local"])
        v = json.loads(self.mx("model", "validate", "org/m", "--cache-path", cache, "-f",
                               "json").stdout)
        self.assertFalse(v["exists"])
        # A model neither side has: nothing to do, not an error.
        r = self.mx("model", "clear", "org/never", "-e", s.address, "--cache-path", cache)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Server down: local files go, with a warning about the server's record.
        self.download(s, cache, "--no-shared-storage")
        s.stop()
        r = self.mx("model", "clear", "org/m", "-e", s.address, "--cache-path", cache)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("warning:", r.stderr)
        self.assertFalse((cache / "models--org--m" / "snapshots").exists())

    def test_health_api_list_stats_validate(self):
        s = self.server()
        h = self.mx("health", "-e", f"http://{s.address}", "-f", "json")
        self.assertEqual(h.returncode, 0, h.stderr)
        self.assertEqual(json.loads(h.stdout)["status"], "ok")
        p = self.mx("api", "send", "ping", "-e", s.address, "-f", "json")
        self.assertEqual(json.loads(p.stdout)["data"], {"message": "pong"})
        p = self.mx("api", "send", "nope", "-e", s.address, "--payload", "{}")
        self.assertEqual(p.returncode, 1)
        p = self.mx("api", "send", "ping", "-e", s.address, "--payload", "{bad")
        self.assertEqual(p.returncode, 2)
        cache = self.client_cache()
        self.download(s, cache, "--no-shared-storage")
        ls = json.loads(self.mx("model", "list", "--detailed", "--cache-path", cache, "-f",
                                "json").stdout)
        self.assertEqual([m["model"] for m in ls["models"]], ["org/m"])
        st = json.loads(self.mx("model", "stats", "--cache-path", cache, "-f", "json").stdout)
        self.assertEqual(st["models"], 1)
        v = self.mx("model", "validate", "org/m", "--cache-path", cache, "-f", "json")
        self.assertEqual(v.returncode, 0)
        self.assertTrue(json.loads(v.stdout)["exists"])
        # A corrupted blob makes validate fail.
        blob = next(p for p in (cache / "models--org--m" / "blobs").iterdir() if p.stat().st_size > MIB)
        with open(blob, "r+b") as f:
            f.write(b"XX")
        v = self.mx("model", "validate", "org/m", "--cache-path", cache, "-f", "json")
        self.assertEqual(v.returncode, 1)
        c = self.mx("model", "clear-all", "--cache-path", cache)
        self.assertEqual(c.returncode, 2)
        c = self.mx("model", "clear-all", "--yes", "--cache-path", cache)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertFalse((cache / "models--org--m" / "snapshots").exists())

    def test_bearer_token_file(self):
        token = self.tmp / "server-token"
        token.write_text("s3cret-token\n")
        s = self.server(args=["--auth-token-file", token])
        client_token = self.tmp / "client-token"
        p = self.mx("api", "send", "ping", "-e", s.address, env={"MX_AUTH_TOKEN_PATH": str(client_token)})
        self.assertEqual(p.returncode, 1)
        self.assertIn("bearer token", p.stderr)
        client_token.write_text("s3cret-token")
        p = self.mx("api", "send", "ping", "-e", s.address, env={"MX_AUTH_TOKEN_PATH": str(client_token)})
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("s3cret", p.stderr + p.stdout)

    def test_corrupt_bytes_from_the_server_are_refused(self):
        s = self.server()
        self.download(s, self.cache)  # the server has it
        shard = "model-00001-of-00002.safetensors"
        blob = (self.cache / "models--org--m" / "snapshots" / self.hub.commit("org/m") / shard).resolve()
        with open(blob, "r+b") as f:  # same size, one byte flipped
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0xFF]))
        cache = self.client_cache()
        _, r = self.download(s, cache, "--no-shared-storage", "-s", "server-only", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("hash mismatch", r.stderr)
        self.assertFalse((cache / "models--org--m" / "blobs" / blob.name).exists())
        self.assertFalse((cache / "models--org--m" / "refs" / "main").exists())
        # smart-fallback: the hub supplies what the server could not, the rest stays.
        rep, r = self.download(s, cache, "--no-shared-storage")
        self.assertEqual(rep["strategy"], "hub", r.stderr)
        self.assert_complete(cache, rep)

    def proxied(self, s):
        proxy = GrpcFaultProxy(("127.0.0.1", s.port))
        self.addCleanup(proxy.stop)
        return proxy

    def test_chunk_corrupted_in_flight_is_fetched_again(self):
        s = self.server()
        self.download(s, self.cache)  # the server has it
        proxy = self.proxied(s)
        proxy.flip_after(2 * MIB)  # inside a shard's bytes, past the metadata phase
        cache = self.client_cache()
        rep, r = self.download(None, cache, proxy.address, "--no-shared-storage",
                               "-s", "server-only", "-v")
        self.assertEqual(proxy.flipped, 1)
        self.assertIn("hash mismatch", r.stderr)
        self.assertEqual(rep["strategy"], "stream")
        total = sum(FILES.values())
        self.assertGreater(rep["bytes_streamed"], total)  # the damaged file came again
        self.assert_complete(cache, rep)

    def test_commit_change_mid_stream_is_refused(self):
        s = self.server()
        self.download(s, self.cache)
        commit = self.hub.commit("org/m")
        other = ("0" if commit[0] != "0" else "1") + commit[1:]
        proxy = self.proxied(s)
        # The server names the commit in the first chunk of each call. With 64 KiB chunks
        # only the shards' calls fill frames of 8 KiB or more: the metadata phase arrives
        # intact at the pinned commit, then the weights' calls claim another one.
        proxy.replace(commit.encode(), other.encode(), min_frame=8192)
        cache = self.client_cache()
        _, r = self.download(None, cache, proxy.address, "--no-shared-storage",
                             "--transfer-chunk-size", "64KiB", "-s", "server-only", ok=False)
        self.assertGreater(proxy.replaced, 0)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("refusing to mix two commits", r.stderr)
        repo = cache / "models--org--m"
        self.assertFalse((repo / "refs" / "main").exists())
        self.assertFalse((repo / "snapshots" / other).exists())
        snap = repo / "snapshots" / commit
        self.assertTrue((snap / "config.json").is_file())  # the metadata phase completed
        for name in FILES:  # what is in the snapshot is the pinned commit's, byte for byte
            if (snap / name).exists():
                self.assertEqual((snap / name).read_bytes(), (self.content / name).read_bytes())

    def test_tls_with_private_ca(self):
        cert, key = make_tls_cert(self.tmp, "worker")
        s = self.server(args=["--tls-cert", cert, "--tls-key", key], start=False)
        s.start(wait=False)
        url = f"https://127.0.0.1:{s.port}"
        deadline = time.monotonic() + 20
        while True:
            h = self.mx("health", "-e", url, "--tls-ca", cert, "-f", "json")
            if h.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(h.returncode, 0, h.stderr + s.log_text())
        self.assertEqual(json.loads(h.stdout)["status"], "ok")
        h = self.mx("health", "-e", url, env={"MX_TLS_CA": str(cert)})
        self.assertEqual(h.returncode, 0, h.stderr)
        h = self.mx("health", "-e", url)  # not signed by a CA the system knows
        self.assertEqual(h.returncode, 1)
        h = self.mx("health", "-e", f"127.0.0.1:{s.port}")  # plaintext to a TLS port
        self.assertEqual(h.returncode, 1)

    def test_keepalive_notices_a_frozen_server(self):
        s = self.server()
        self.assertEqual(self.mx("model", "download", "org/big", "-e", s.address,
                                 "--cache-path", self.cache).returncode, 0)
        cache = self.client_cache()
        env = base_env()
        env.update({"MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token")})
        proc = subprocess.Popen(
            [mx_binary(), "model", "download", "org/big", "-e", s.address, "--cache-path",
             str(cache), "--no-shared-storage", "-s", "server-only", "-v",
             "--transfer-chunk-size", "64KiB", "--streams", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        blobs = cache / "models--org--big" / "blobs"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and largest_temp(blobs) < MIB:
            time.sleep(0.001)
        # The server stops answering without closing anything (a partitioned node).
        os.killpg(s.proc.pid, signal.SIGSTOP)
        time.sleep(12)
        os.killpg(s.proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        # Keepalive broke the silent connection and the stream was resumed.
        self.assertIn("stream interrupted", err)
        self.assertIn("resuming", err)


class RedisWorkerClientTest(WorkerClientTest):
    """The same, with the servers' registry in Redis (a fresh one per test)."""

    PREFIX = "mx-worker-redis-"

    def setUp(self):
        super().setUp()
        self.redis = RedisServer(self.tmp).start()

    def tearDown(self):
        super().tearDown()
        self.redis.stop()

    def server(self, env=None, args=None, start=True, cache=None):
        e = {"MX_METADATA_BACKEND": "redis", "REDIS_URL": self.redis.url}
        e.update(env or {})
        return super().server(env=e, args=args, start=start, cache=cache)


if __name__ == "__main__":
    unittest.main()
