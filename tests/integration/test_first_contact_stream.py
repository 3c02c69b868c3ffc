"""First contact, `mx stream` side (issue 13 items 9 and 11): size settings take units and
say what is allowed, with the variable or flag named; off a terminal, a long stream logs a
progress line every few seconds."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import unittest
from pathlib import Path

from harness import MIB, Nginx, mx_binary, run
from storage_peers import write_safetensors


class StreamSettingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-first-stream-"))
        cls.model = cls.tmp / "model"
        cls.model.mkdir()
        tensors = write_safetensors(cls.model / "model.safetensors",
                                    {"w": ("F32", (MIB,)), "b": ("F32", (1000,))}, seed=3)
        cls.expected = {f"model.safetensors/{k}": hashlib.sha256(v).hexdigest()
                        for k, v in tensors.items()}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def stream(self, *args, env=None):
        return run([mx_binary(), "stream", "--json", "--tensor-digests", *args], env=env, timeout=300)

    def test_sizes_with_units_from_variables_and_flags(self):
        for env, args in (({"RUNAI_STREAMER_CHUNK_BYTESIZE": "1MiB",
                            "RUNAI_STREAMER_MEMORY_LIMIT": "64MiB"}, []),
                          ({}, ["--chunk-size", "256KiB", "--memory-limit", "1GiB"])):
            r = self.stream(str(self.model), *args, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout.splitlines()[-1])["tensor_sha256"], self.expected)

    def test_bad_sizes_name_their_source_and_the_range(self):
        cases = [({"RUNAI_STREAMER_CHUNK_BYTESIZE": "8x"}, [], "RUNAI_STREAMER_CHUNK_BYTESIZE ('8x')"),
                 ({"RUNAI_STREAMER_CHUNK_BYTESIZE": "2GiB"}, [], "RUNAI_STREAMER_CHUNK_BYTESIZE ('2GiB')"),
                 ({"RUNAI_STREAMER_MEMORY_LIMIT": "-5"}, [], "RUNAI_STREAMER_MEMORY_LIMIT ('-5')"),
                 ({}, ["--chunk-size", "0"], "--chunk-size ('0')")]
        for env, args, source in cases:
            r = self.stream(str(self.model), *args, env=env)
            self.assertNotEqual(r.returncode, 0, (env, args))
            self.assertIn(source, r.stderr)
            self.assertIn("must be a size", r.stderr)
            self.assertIn("with a unit: 16MiB", r.stderr)

    def test_progress_lines_off_a_terminal(self):
        # 4 MiB read one piece at a time through a connection capped at 1 MB/s: about 4 s,
        # so lines every second must show, with bytes counted as they arrive.
        nginx = Nginx(self.tmp, self.model, limit_rate="1m").start()
        try:
            url = f"{nginx.base_url}/model.safetensors"
            r = self.stream(url, "--concurrency", "1", "--chunk-size", "1MiB",
                            env={"MX_PROGRESS_INTERVAL_SECONDS": "1"})
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout.splitlines()[-1])["tensor_sha256"], self.expected)
            lines = [l for l in r.stderr.splitlines() if l.startswith("progress: ")]
            self.assertGreaterEqual(len(lines), 2, r.stderr)
            self.assertIn(" read, ", lines[-1])
            self.assertNotIn("0 B read", lines[-1])  # bytes count as they arrive, not per tensor
            self.assertIn("tensors", lines[-1])
            self.assertNotIn("progress: ", r.stdout)  # stdout stays the JSON summary alone
            bad = self.stream(url, env={"MX_PROGRESS_INTERVAL_SECONDS": "0"})
            self.assertNotEqual(bad.returncode, 0)
            self.assertIn("MX_PROGRESS_INTERVAL_SECONDS", bad.stderr)
        finally:
            nginx.stop()


if __name__ == "__main__":
    unittest.main()
