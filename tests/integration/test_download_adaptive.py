"""Adaptive connections against a server that cannot take a burst of connects.

The "CDN" here (slow_cdn.SlowCdn) serves 8 connections at a time with a listen backlog
of 8, keeps an idle keep-alive connection (and its worker) for 5 s, and caps each
connection at 4 MB/s, as a small prefork mirror or corporate proxy might: a connection
beyond the 8 waits in the accept queue with its request unanswered, and beyond the
backlog its SYN is dropped. mx at its defaults must finish with verified files well
inside the 30 s stall window, which used to be the only way out of such a wait (mx with
16 fixed connections, a 20 s connect timeout and no response timeout took 32-46 s here).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import unittest
from pathlib import Path

from harness import MIB, HubStub, make_repo, mx_binary, run
from slow_cdn import SlowCdn
from test_download import assert_snapshot_matches

FILES = {
    "model-00001-of-00002.safetensors": 24 * MIB,
    "model-00002-of-00002.safetensors": 24 * MIB,
    "config.json": 500,
}


class SmallBacklogTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-adaptive-"))
        self.content = make_repo(self.tmp / "content", FILES, seed=11)
        self.store = self.tmp / "store"
        self.cdn = SlowCdn(self.store, backlog=8, workers=8, rate=4e6, idle_timeout=5.0).start()
        self.hub = HubStub(self.tmp, {"org/m": {"revisions": {"main": self.content}}},
                           lfs_redirect_base=self.cdn.base_url, lfs_store=self.store).start()

    def tearDown(self):
        self.hub.stop()
        self.cdn.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def download(self, *extra, env_extra=None):
        env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.tmp / "cache")}
        env.update(env_extra or {})
        started = time.monotonic()
        r = run([mx_binary(), "download", "org/m", *extra], env=env, timeout=120)
        return r, time.monotonic() - started

    def test_defaults_finish_without_a_stall(self):
        r, seconds = self.download()
        self.assertEqual(r.returncode, 0, r.stderr)
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        # 48 MiB at 8 x 4 MB/s is 1.6 s of transfer; one stall window alone is 30 s.
        self.assertLess(seconds, 25, f"took {seconds:.1f} s: a connection stalled")
        self.assertGreater(len(self.cdn.requests), 0, "the CDN was never used")

    def test_max_connections_caps_the_requests_in_flight(self):
        r, _ = self.download(env_extra={"MX_MAX_CONNECTIONS": "3"})
        self.assertEqual(r.returncode, 0, r.stderr)
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        self.assertLessEqual(self.cdn.max_in_flight, 3)
        self.assertGreater(len(self.cdn.requests), 3)

    def test_a_bad_max_connections_is_refused(self):
        r, _ = self.download(env_extra={"MX_MAX_CONNECTIONS": "0"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("MX_MAX_CONNECTIONS", r.stderr)


if __name__ == "__main__":
    unittest.main()
