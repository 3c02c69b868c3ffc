"""Crash safety and many writers: kill -9 mid-download then rerun; four processes on one
cache with working locks (each blob fetched once) and with locking disabled (still valid)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import hf_reader
from harness import MIB, HubStub, Nginx, base_env, make_repo, mx_binary, run
from test_download import assert_snapshot_matches, nginx_bytes

FILES = {
    "config.json": 1000,
    "tokenizer.json": 400_000,
    "model-00001-of-00004.safetensors": 40 * MIB,
    "model-00002-of-00004.safetensors": 40 * MIB + 3,
    "model-00003-of-00004.safetensors": 40 * MIB,
    "model-00004-of-00004.safetensors": 24 * MIB,
}
REPO_BYTES = sum(FILES.values())


class CrashAndConcurrencyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-crash-"))
        self.content = make_repo(self.tmp / "content", FILES, seed=11)
        store = self.tmp / "store"
        store.mkdir()
        # A CDN that caps each connection, so downloads last long enough to interrupt.
        self.ng = Nginx(self.tmp, store, limit_rate="4m").start()
        self.hub = HubStub(self.tmp, {"org/big": {"revisions": {"main": self.content}}},
                           lfs_redirect_base=self.ng.base_url, lfs_store=store).start()
        self.cache = self.tmp / "cache"
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.hub.stop()
        self.ng.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, **extra):
        e = base_env()
        e.update({"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)})
        e.update(extra)
        return e

    def spawn(self, **extra_env):
        p = subprocess.Popen([mx_binary(), "download", "org/big", "--json", "--max-workers", "8"],
                             env=self.env(**extra_env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def origin_bytes(self):
        return nginx_bytes(self.ng) + self.hub.stats()["bytes_total"]

    def assert_valid_cache(self, snapshot):
        assert_snapshot_matches(self, snapshot, self.content, FILES)
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])
        r = run([mx_binary(), "cache", "verify", "org/big", "--cache-dir", self.cache])
        self.assertEqual(r.returncode, 0, r.stderr)

    def partial_bytes_on_disk(self):
        blobs = self.cache / "models--org--big" / "blobs"
        return sum(p.stat().st_size for p in blobs.glob("*") if "." not in p.name) if blobs.exists() else 0

    def test_kill_9_then_rerun_refetches_little(self):
        p = self.spawn()
        # 8 connections x 4 MB/s: let it get well into the shards, then kill it hard.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.origin_bytes() < REPO_BYTES * 0.3:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        time.sleep(0.5)  # let nginx log the aborted requests
        first = self.origin_bytes()
        self.assertGreater(first, REPO_BYTES * 0.2)
        self.assertLess(first, REPO_BYTES * 0.95, "the download finished before the kill")
        # The half-written cache is still one every reader accepts.
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])
        r = run([mx_binary(), "download", "org/big", "--json"], env=self.env(), timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        total = self.origin_bytes()
        refetched = total - REPO_BYTES
        print(f"\nkill -9 resume: first run {first} B, rerun {total - first} B, "
              f"refetched {refetched} B = {100.0 * refetched / first:.2f}% of the first run")
        self.assertLess(refetched, 0.10 * first)
        self.assertLess(report["bytes_fetched"], REPO_BYTES - first + 0.10 * first)
        self.assert_valid_cache(report["path"])
        leftovers = [q.name for q in (self.cache / "models--org--big/blobs").iterdir() if "." in q.name]
        self.assertEqual(leftovers, [])

    def run_four(self, **env):
        procs = [self.spawn(**env) for _ in range(4)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err)
        paths = {json.loads(out.strip().splitlines()[-1])["path"] for out, _ in outs}
        self.assertEqual(len(paths), 1)
        return paths.pop()

    def test_four_processes_fetch_each_blob_once(self):
        path = self.run_four()
        served = self.origin_bytes()
        print(f"\n4 concurrent processes: origin served {served / REPO_BYTES:.3f}x the repo")
        self.assertLessEqual(served, 1.05 * REPO_BYTES)
        self.assert_valid_cache(path)

    def test_four_processes_without_locks_stay_correct(self):
        path = self.run_four(MX_TEST_DISABLE_FLOCK="1")
        self.assert_valid_cache(path)
        leftovers = [q.name for q in (self.cache / "models--org--big/blobs").iterdir() if "." in q.name]
        self.assertEqual(leftovers, [])


if __name__ == "__main__":
    unittest.main()
