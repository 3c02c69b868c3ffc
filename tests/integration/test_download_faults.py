"""Faults between mx and the hub/CDN: each ends in a verified cache or a clear non-zero
exit, never a wrong byte under snapshots/. Also hostile listings."""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import MIB, HubStub, make_repo, mx_binary, run
from test_download import assert_snapshot_matches

FILES = {
    "config.json": 900,
    "vocab.txt": 300_000,
    "model-00001-of-00002.safetensors": 6 * MIB + 17,
    "model-00002-of-00002.safetensors": 3 * MIB,
}
SHARD = "model-00001-of-00002.safetensors"


class FaultTest(unittest.TestCase):
    """The stand-in serves LFS files from its own second host so faults hit them too."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-faults-"))
        cls.content = make_repo(cls.tmp / "content", FILES, seed=7)
        cls.hub = HubStub(cls.tmp, {"org/m": {"revisions": {"main": cls.content}}}).start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.hub.reset()
        self.cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.tmp))

    def download(self, faults, extra_env=None):
        self.hub.set_faults(faults)
        env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)}
        env.update(extra_env or {})
        started = time.monotonic()
        r = run([mx_binary(), "download", "org/m", "--max-workers", "4"], env=env, timeout=300)
        return r, time.monotonic() - started

    def assert_recovers(self, faults):
        r, seconds = self.download(faults)
        self.assertEqual(r.returncode, 0, r.stderr)
        snapshot = r.stdout.strip().splitlines()[-1]
        assert_snapshot_matches(self, snapshot, self.content, FILES)
        triggered = sum(self.hub.stats()["faults_triggered"].values())
        self.assertGreater(triggered, 0, "the fault never fired: the test proves nothing")
        return seconds

    def assert_nothing_wrong_visible(self):
        """Whatever is under snapshots/ is byte-identical to the source."""
        for snap in (self.cache / "models--org--m" / "snapshots").glob("*"):
            for p in snap.rglob("*"):
                if p.is_file():
                    rel = p.relative_to(snap)
                    self.assertEqual(p.read_bytes(), (self.content / rel).read_bytes(), rel)

    def test_connection_dropped_mid_body(self):
        self.assert_recovers([{"kind": "drop", "path": SHARD, "count": 3},
                              {"kind": "drop", "path": "vocab.txt", "count": 1}])

    def test_short_body(self):
        self.assert_recovers([{"kind": "short_body", "path": "*", "count": 4}])

    def test_429_with_retry_after_is_honoured(self):
        seconds = self.assert_recovers([{"kind": "429", "path": SHARD, "count": 1, "retry_after": 2}])
        self.assertGreaterEqual(seconds, 2.0)

    def test_burst_of_503(self):
        self.assert_recovers([{"kind": "503", "path": "*", "count": 6}])

    def test_200_for_a_range_request(self):
        self.assert_recovers([{"kind": "200_for_range", "path": SHARD, "count": 2}])

    def test_wrong_content_range(self):
        self.assert_recovers([{"kind": "wrong_content_range", "path": "*", "count": 3}])

    def test_corrupted_bytes_are_refetched(self):
        self.assert_recovers([{"kind": "corrupt", "path": SHARD, "count": 1}])

    def test_persistent_corruption_fails_clearly(self):
        r, _ = self.download([{"kind": "corrupt", "path": SHARD, "count": -1}])
        self.assertEqual(r.returncode, 1)
        self.assertIn("hash mismatch", r.stderr)
        self.assertIn(SHARD, r.stderr)
        self.assert_nothing_wrong_visible()
        blobs = self.cache / "models--org--m" / "blobs"
        self.assertEqual([p.name for p in blobs.iterdir() if "incomplete" in p.name], [])

    def test_persistent_503_gives_up_with_a_clear_error(self):
        r, _ = self.download([{"kind": "503", "path": SHARD, "count": -1}])
        self.assertEqual(r.returncode, 1)
        self.assertIn(SHARD, r.stderr)
        self.assertIn("503", r.stderr)
        self.assert_nothing_wrong_visible()

    def test_stalled_server_is_detected_and_resumed(self):
        # A peer that stops sending mid-body is declared dead after MX_STALL_TIMEOUT_SECONDS
        # and its range resumed elsewhere, long before the peer would wake up.
        self.hub.set_faults([{"kind": "stall", "path": SHARD, "count": 1, "seconds": 60}])
        env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache),
               "MX_STALL_TIMEOUT_SECONDS": "2"}
        started = time.monotonic()
        r = run([mx_binary(), "download", "org/m", "--max-workers", "4"], env=env, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(time.monotonic() - started, 30)
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        self.assertGreater(sum(self.hub.stats()["faults_triggered"].values()), 0)


class HostileHub(http.server.BaseHTTPRequestHandler):
    """A hub whose listing is hostile; anything else is 404."""
    listing: list = []

    def do_GET(self):  # noqa: N802
        if "/revision/" in self.path:
            self.reply({"sha": "1" * 40, "siblings": []})
        elif "/tree/" in self.path:
            self.reply(self.listing)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HostileListingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-hostile-"))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileHub)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_hostile_entries_are_refused_before_touching_disk(self):
        oid = "a" * 40
        for path in ["../escape.txt", "/etc/passwd_mx", "a/../../escape.txt", "dir\\evil.txt",
                     "nul\u0000byte", "a//b"]:
            HostileHub.listing = [{"type": "file", "path": path, "size": 3, "oid": oid}]
            cache = self.tmp / "cache"
            r = run([mx_binary(), "download", "org/x", "--cache-dir", cache],
                    env={"HF_ENDPOINT": f"http://127.0.0.1:{self.server.server_port}"})
            self.assertEqual(r.returncode, 1, path)
            self.assertIn("hostile", r.stderr, path)
            self.assertFalse((self.tmp / "escape.txt").exists())
            self.assertFalse(Path("/etc/passwd_mx").exists())
        for bad, why in [({"type": "file", "path": "f", "size": -5, "oid": oid}, "size"),
                         ({"type": "file", "path": "f", "size": 2 ** 64, "oid": oid}, "size"),
                         ({"type": "file", "path": "f", "size": 3, "oid": "zz"}, "oid"),
                         ({"type": "file", "path": "f", "size": 3, "oid": oid,
                           "lfs": {"oid": "b" * 64, "size": 4}}, "size")]:
            HostileHub.listing = [bad]
            r = run([mx_binary(), "download", "org/x", "--cache-dir", self.tmp / "cache"],
                    env={"HF_ENDPOINT": f"http://127.0.0.1:{self.server.server_port}"})
            self.assertEqual(r.returncode, 1, bad)
            self.assertIn(why, r.stderr, bad)


if __name__ == "__main__":
    unittest.main()
