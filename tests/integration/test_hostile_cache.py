"""The cache-changing protocol (src/hub/cache.h) and the server's download error paths,
end to end: cleaners (`mx cache prune` / `mx cache rm`, DeleteModel, eviction on another
replica) running while a download or a stream uses the repo must leave it intact, and a
server whose download failed must neither leak descriptors nor refuse to resume its own
partial file.

Every test starts its own hub stand-in, nginx and mx-server on 127.0.0.x, in temp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import grpc

from harness import MIB, HubStub, Nginx, base_env, make_repo, mx_binary, run
from server_harness import HubAndServersCase, stubs
from test_download import assert_snapshot_matches

S = stubs()
model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]

FILES = {
    "config.json": 700,
    "tokenizer.json": 150_000,
    "sub/notes.md": 3000,
    "model-00001-of-00002.safetensors": 6 * MIB + 5,
    "model-00002-of-00002.safetensors": 3 * MIB,
}
BIG = "model-00001-of-00002.safetensors"


def all_links_resolve(test: unittest.TestCase, snapshot: Path):
    for p in snapshot.rglob("*"):
        if p.is_symlink():
            test.assertTrue(p.exists(), f"dangling symlink {p}")


class CleanupDuringDownloadTest(unittest.TestCase):
    """(a) A download running from a slow CDN while prune and rm run in a loop."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-hcache-"))
        self.content = make_repo(self.tmp / "content", FILES, seed=31)
        store = self.tmp / "store"
        store.mkdir()
        # Each connection capped: the download lasts several seconds.
        self.ng = Nginx(self.tmp, store, limit_rate="384k").start()
        self.hub = HubStub(self.tmp, {"org/m": {"revisions": {"main": self.content}}},
                           lfs_redirect_base=self.ng.base_url, lfs_store=store).start()
        self.cache = self.tmp / "cache"

    def tearDown(self):
        self.hub.stop()
        self.ng.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, **extra):
        e = base_env()
        e.update({"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)})
        e.update(extra)
        return e

    def download_while_cleaning(self, cleaners, **env):
        p = subprocess.Popen([mx_binary(), "download", "org/m", "--max-workers", "4"],
                             env=self.env(**env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        outcomes = []
        try:
            while p.poll() is None:
                for args in cleaners:
                    r = run([mx_binary(), "cache", *args, "--cache-dir", self.cache], env=env)
                    outcomes.append((args[0], r.returncode, r.stdout + r.stderr))
                time.sleep(0.05)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        return out, outcomes

    def assert_cache_whole(self):
        commit = self.hub.commit("org/m")
        snapshot = self.cache / "models--org--m" / "snapshots" / commit
        self.assertEqual((self.cache / "models--org--m" / "refs" / "main").read_text(), commit)
        all_links_resolve(self, snapshot)
        assert_snapshot_matches(self, str(snapshot), self.content, FILES)
        r = run([mx_binary(), "cache", "verify", "org/m", "--cache-dir", self.cache])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_prune_and_rm_in_a_loop_during_a_download(self):
        _, outcomes = self.download_while_cleaning(
            [["prune", "--grace", "0"], ["rm", "org/m"]])
        # The loop really overlapped the download: rm was refused while it ran.
        rms = [o for o in outcomes if o[0] == "rm"]
        refused = [o for o in rms if o[1] != 0 and "in use" in o[2]]
        self.assertTrue(refused, outcomes[:5])
        # An rm can win only once the download released the repo lock, i.e. after it
        # published everything: then no rm after it may have been refused.
        won = [i for i, o in enumerate(rms) if o[1] == 0]
        if won:
            self.assertFalse([o for o in rms[won[0]:] if o[1] != 0], rms)
            return  # the cache was legitimately removed after the download finished
        self.assert_cache_whole()

    def test_prune_without_working_locks(self):
        # flock a no-op (as on some NFS mounts): the grace period and the live temp files
        # alone must keep prune away from the download.
        _, outcomes = self.download_while_cleaning([["prune"]], MX_TEST_DISABLE_FLOCK="1")
        self.assertTrue(outcomes)
        self.assert_cache_whole()


def slow_stream(address, name, on_chunk, chunk_size=64 << 10, delay=0.02):
    """Streams `name`, sleeping `delay` after each chunk; a small flow-control window keeps
    the server reading the files while we read. Calls on_chunk(index) after each chunk."""
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0),
               ("grpc.http2.lookahead_bytes", 64 << 10)]
    files = {}
    with grpc.insecure_channel(address, options=options) as ch:
        stub = model_grpc.ModelServiceStub(ch)
        call = stub.StreamModelFiles(model_pb2.ModelFilesRequest(model_name=name,
                                                                 chunk_size=chunk_size),
                                     timeout=120)
        for i, c in enumerate(call):
            buf = files.setdefault(c.relative_path, bytearray())
            assert c.offset == len(buf), (c.relative_path, c.offset, len(buf))
            buf.extend(c.data)
            on_chunk(i)
            time.sleep(delay)
    return files


def delete_model(address, name):
    with grpc.insecure_channel(address) as ch:
        return model_grpc.ModelServiceStub(ch).DeleteModel(
            model_pb2.DeleteModelRequest(model_name=name), timeout=30)


def ensure(address, name):
    with grpc.insecure_channel(address) as ch:
        stub = model_grpc.ModelServiceStub(ch)
        return list(stub.EnsureModelDownloaded(model_pb2.ModelDownloadRequest(model_name=name),
                                               timeout=120))


class ServerCacheProtocolTest(HubAndServersCase):
    PREFIX = "mx-hcache-srv-"

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=32)
        cls.other = make_repo(tmp / "other", {"config.json": 100, "w.safetensors": MIB}, seed=33)
        return {"org/m": {"revisions": {"main": cls.content}},
                "org/other": {"revisions": {"main": cls.other}}}

    def assert_streamed_whole(self, files):
        self.assertEqual(set(files), set(FILES))
        for rel, data in files.items():
            self.assertEqual(bytes(data), (self.content / rel).read_bytes(), rel)

    def stream_with(self, address, action, at_chunk=20):
        """Streams org/m from `address`, running action() once mid-stream (inside the big
        file, with more files to open after it)."""
        results = {}

        def on_chunk(i):
            if i == at_chunk:
                results["action"] = action()

        files = slow_stream(address, "org/m", on_chunk)
        return files, results["action"]

    def test_delete_of_a_model_being_streamed_is_refused(self):
        # (c) DeleteModel while the same replica streams the model: FAILED_PRECONDITION
        # (success=false), never a broken stream; it succeeds once the stream is over.
        srv = self.server()
        self.assertEqual(ensure(srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)
        files, resp = self.stream_with(srv.address, lambda: delete_model(srv.address, "org/m"))
        self.assertFalse(resp.success, resp.message)
        self.assertIn("stream", resp.message)
        self.assert_streamed_whole(files)
        self.assertTrue((self.cache / "models--org--m").is_dir())
        resp = delete_model(srv.address, "org/m")
        self.assertTrue(resp.success, resp.message)
        self.assertFalse((self.cache / "models--org--m").exists())

    def test_other_replica_cannot_delete_or_evict_a_streamed_model(self):
        # (b) Two replicas on one cache: A streams, B is asked to delete, then to evict.
        a = self.server()
        b = self.server(args=["--max-models", "1"])
        self.assertEqual(ensure(a.address, "org/m")[-1].status, model_pb2.DOWNLOADED)

        def on_b():
            resp = delete_model(b.address, "org/m")
            # org/other on B puts B over --max-models 1: it tries to evict org/m (LRU).
            other = ensure(b.address, "org/other")
            return resp, other

        files, (resp, other) = self.stream_with(a.address, on_b)
        self.assertFalse(resp.success, resp.message)
        self.assertIn("in use", resp.message)
        self.assertEqual(other[-1].status, model_pb2.DOWNLOADED)
        self.assert_streamed_whole(files)
        self.assertTrue((self.cache / "models--org--m").is_dir())
        # Once nobody streams it, B may delete it.
        resp = delete_model(b.address, "org/m")
        self.assertTrue(resp.success, resp.message)


class ServerDownloadErrorPathTest(HubAndServersCase):
    PREFIX = "mx-hcache-err-"

    @classmethod
    def make_repos(cls, tmp):
        cls.content = make_repo(tmp / "content", FILES, seed=34)
        return {"org/m": {"revisions": {"main": cls.content}}}

    def setUp(self):
        super().setUp()
        self.srv = self.server()

    def test_failed_downloads_do_not_leak_descriptors(self):
        # Every file refused (403) or corrupt (hash mismatch, three attempts): each ensure
        # ends in ERROR; the server's descriptor count must not grow with the failures.
        self.hub.set_faults([{"kind": "403", "path": "*.safetensors", "count": -1},
                             {"kind": "corrupt", "path": "tokenizer.json", "count": -1}])
        self.assertEqual(ensure(self.srv.address, "org/m")[-1].status, model_pb2.ERROR)
        baseline = self.srv.fd_count()
        for _ in range(12):
            self.assertEqual(ensure(self.srv.address, "org/m")[-1].status, model_pb2.ERROR)
        self.assertLessEqual(self.srv.fd_count(), baseline + 3)
        # No blob lock stays held either: once the upstream heals, the same server finishes.
        self.hub.reset()
        self.assertEqual(ensure(self.srv.address, "org/m")[-1].status, model_pb2.DOWNLOADED)

    def test_retry_resumes_its_own_partial_file(self):
        # The first attempt gets part of every range of the big file, then 403s; the retry
        # by the same (still running) server must resume the temp file it left, not wait
        # 10 minutes for it to look abandoned and fetch everything again.
        size = FILES[BIG]
        self.hub.set_faults([{"kind": "drop", "path": BIG, "after_bytes": 400_000, "count": 7},
                             {"kind": "403", "path": BIG, "count": -1}])
        self.assertEqual(ensure(self.srv.address, "org/m")[-1].status, model_pb2.ERROR)
        first = self.hub.stats()["bytes_by_file"].get(BIG, 0)
        self.assertGreater(first, 400_000)
        partial = list((self.cache / "models--org--m" / "blobs").glob("*.incomplete"))
        self.assertEqual(len(partial), 1, partial)
        self.hub.reset()
        updates = ensure(self.srv.address, "org/m")
        self.assertEqual(updates[-1].status, model_pb2.DOWNLOADED, updates[-1].message)
        again = self.hub.stats()["bytes_by_file"].get(BIG, 0)
        self.assertLessEqual(again, size - 400_000, "the retry did not resume its own temp file")
        commit = self.hub.commit("org/m")
        assert_snapshot_matches(self, str(self.cache / "models--org--m" / "snapshots" / commit),
                                self.content, FILES)


if __name__ == "__main__":
    unittest.main()
