"""Adaptive connections against a server that cannot take a burst of connects.

The "CDN" here (slow_cdn.SlowCdn) serves 8 connections at a time with a listen backlog
of 8, keeps an idle keep-alive connection (and its worker) for 15 s, and caps each
connection at 4 MB/s, as a small prefork mirror or corporate proxy might: a connection
beyond the 8 waits in the accept queue with its request unanswered, and beyond the
backlog its SYN is dropped. mx at its defaults must finish with verified files well
inside the 30 s stall window, which used to be the only way out of such a wait (this mx
with the response timeout switched off and the old 20 s connect timeout took 50 s here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from harness import MIB, HubStub, base_env, make_repo, mx_binary, run
from slow_cdn import SlowCdn
from test_download import assert_snapshot_matches

FILES = {
    "model-00001-of-00002.safetensors": 24 * MIB,
    "model-00002-of-00002.safetensors": 24 * MIB,
    "config.json": 500,
}


class AdaptiveConnectionsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-adaptive-"))
        self.content = make_repo(self.tmp / "content", FILES, seed=11)
        self.store = self.tmp / "store"
        self.cdn = self.hub = None

    def serve(self, **cdn_options):
        self.cdn = SlowCdn(self.store, **cdn_options).start()
        self.hub = HubStub(self.tmp, {"org/m": {"revisions": {"main": self.content}}},
                           lfs_redirect_base=self.cdn.base_url, lfs_store=self.store).start()

    def tearDown(self):
        if self.hub:
            self.hub.stop()
        if self.cdn:
            self.cdn.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def download(self, *extra, env_extra=None):
        env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.tmp / "cache")}
        env.update(env_extra or {})
        started = time.monotonic()
        r = run([mx_binary(), "download", "org/m", *extra], env=env, timeout=120)
        return r, time.monotonic() - started

    def test_small_backlog_costs_no_stall(self):
        self.serve(backlog=8, workers=8, rate=4e6, idle_timeout=15.0)
        r, seconds = self.download()
        self.assertEqual(r.returncode, 0, r.stderr)
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        # 48 MiB at 8 x 4 MB/s is 1.6 s of transfer; one stall window alone is 30 s.
        self.assertLess(seconds, 25, f"took {seconds:.1f} s: a connection stalled")
        self.assertGreater(len(self.cdn.requests), 0, "the CDN was never used")

    def test_max_connections_caps_the_requests_in_flight(self):
        self.serve(rate=4e6)
        r, _ = self.download(env_extra={"MX_MAX_CONNECTIONS": "3"})
        self.assertEqual(r.returncode, 0, r.stderr)
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        self.assertLessEqual(self.cdn.max_in_flight, 3)
        self.assertGreater(len(self.cdn.requests), 3)

    def test_terminal_progress_shows_the_connections_in_use(self):
        self.serve(rate=4e6)
        env = dict(base_env(), HF_ENDPOINT=self.hub.endpoint, HF_HUB_CACHE=str(self.tmp / "tty"))
        master, slave = os.openpty()
        p = subprocess.Popen([str(mx_binary()), "download", "org/m"], env=env,
                             stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        p.stdout.read()
        p.stdout.close()
        self.assertEqual(p.wait(timeout=60), 0, seen[-500:])
        shown = [int(n) for n in re.findall(rb"conns (\d+)", seen)]
        self.assertTrue(shown, seen[-500:])
        self.assertGreater(max(shown), 0)

    def test_a_bad_max_connections_is_refused(self):
        self.serve()
        r, _ = self.download(env_extra={"MX_MAX_CONNECTIONS": "0"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("MX_MAX_CONNECTIONS", r.stderr)


if __name__ == "__main__":
    unittest.main()
