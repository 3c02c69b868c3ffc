"""`mx stream` end to end: the same model from a local dir, s3rver, azurite, nginx (HTTP)
and the HF cache gives byte-identical tensors; dropped connections, 503s, short bodies
and corrupted bytes through a fault proxy end in a correct result or a clear error; the
memory limit bounds peak RSS; bad files and bad credentials give clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from harness import MIB, HubStub, Nginx, mx_binary, run
from storage_peers import Azurite, FaultProxy, S3rver, write_model, write_safetensors


def digests(expected: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}


class StreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-stream-"))
        cls.model = cls.tmp / "model"
        cls.expected = digests(write_model(cls.model, shards=3, seed=5, big=3 * MIB))
        cls.s3 = S3rver(cls.tmp).start()
        cls.s3.upload_dir(cls.model, "org/model")
        cls.az = Azurite(cls.tmp).start()
        cls.az.upload_dir(cls.model, "org/model")

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()
        cls.az.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def stream(self, *args, env=None, ok=True):
        r = run([mx_binary(), "stream", "--json", "--tensor-digests", *args], env=env, timeout=600)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout.strip().splitlines()[-1])
        return r

    def check(self, report, expected=None):
        self.assertEqual(report["tensor_sha256"], expected or self.expected)
        self.assertEqual(report["tensors"], len(expected or self.expected))
        for key in ("files", "tensors", "bytes", "seconds", "first_tensor_seconds", "peak_rss_bytes"):
            self.assertIn(key, report)

    def test_same_tensors_from_every_source(self):
        self.check(self.stream(str(self.model)))
        self.check(self.stream(str(self.model), "--concurrency", "1", "--chunk-size", "65536"))
        self.check(self.stream(f"s3://{self.s3.bucket}/org/model", "--verify", env=self.s3.env()))
        self.check(self.stream(f"az://{self.az.container}/org/model", "--verify", env=self.az.env()))
        # Virtual-hosted style needs DNS; path style is what custom endpoints use.
        shard = "model-00002-of-00003.safetensors"
        only = {k: v for k, v in self.expected.items() if k.startswith(shard)}
        with Nginx(self.tmp, self.model) as ng:
            self.check(self.stream(f"{ng.base_url}/{shard}"), only)
        self.check(self.stream(f"s3://{self.s3.bucket}/org/model/{shard}", env=self.s3.env()), only)

    def test_cuda_device_or_a_clear_error(self):
        for bad in ("tpu", "cuda:", "cuda:x", "cuda:-1", "cuda:99999999999"):
            self.assertEqual(self.stream(str(self.model), "--device", bad, ok=False).returncode, 2, bad)
        r = self.stream(str(self.model), "--device", "cuda:0", ok=False)
        if r.returncode != 0:
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertTrue("no usable CUDA device" in r.stderr or "without CUDA" in r.stderr,
                            r.stderr)
            self.skipTest(f"no GPU present: {r.stderr.strip()}")
        # A GPU: the digests are of every tensor read back from device memory, so they match
        # only if each tensor really was uploaded.
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.check(report)
        self.assertEqual(report["device"], "cuda:0")
        self.assertEqual(report["device_bytes"], report["bytes"])

    def test_hub_id_from_the_local_cache(self):
        with HubStub(self.tmp, {"org/m": {"revisions": {"main": self.model}}}) as hub:
            cache = self.tmp / "hf-cache"
            r = run([mx_binary(), "download", "org/m", "--cache-dir", cache, "--quiet"],
                    env={"HF_ENDPOINT": hub.endpoint})
            self.assertEqual(r.returncode, 0, r.stderr)
        self.check(self.stream("org/m", env={"HF_HUB_CACHE": cache}))
        self.check(self.stream(env={"HF_HUB_CACHE": cache, "MX_MODEL_URI": "org/m"}))

    def test_faults_between_client_and_storage(self):
        for peer in (self.s3, self.az):
            faults = ["drop", "503", "short", "drop", "503", "short"]
            proxy = FaultProxy(peer.port, faults).start()
            try:
                if peer is self.s3:
                    report = self.stream(f"s3://{peer.bucket}/org/model", "--chunk-size", "1MiB",
                                         env=peer.env(proxy.endpoint))
                else:
                    report = self.stream(f"az://{peer.container}/org/model", "--chunk-size", "1MiB",
                                         env=peer.env(f"{proxy.endpoint}/devstoreaccount1"))
                self.check(report)
                self.assertEqual(len(proxy.triggered), 6, "every fault must have fired")
            finally:
                proxy.stop()
        # Corrupted bytes are caught by --verify (a second, plain read) with a clear error.
        proxy = FaultProxy(self.s3.port, ["corrupt_big"]).start()
        try:
            r = self.stream(f"s3://{self.s3.bucket}/org/model", "--verify", env=self.s3.env(proxy.endpoint), ok=False)
            self.assertEqual(r.returncode, 1)
            self.assertIn("differs", r.stderr)
        finally:
            proxy.stop()

    def test_clear_errors(self):
        # s3rver checks the key id (not the signature): a wrong one must say what to fix.
        env = dict(self.s3.env(), AWS_ACCESS_KEY_ID="WRONGKEY", AWS_SECRET_ACCESS_KEY="secret-value-xyz")
        r = self.stream(f"s3://{self.s3.bucket}/org/model", env=env, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("AWS_ACCESS_KEY_ID", r.stderr)
        self.assertIn(self.s3.bucket, r.stderr)
        self.assertNotIn("secret-value-xyz", r.stderr)
        r = self.stream("s3://no-such-bucket/x", env=self.s3.env(), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no-such-bucket", r.stderr)
        r = self.stream(f"az://{self.az.container}/org/model", env=dict(self.az.env(), AZURE_STORAGE_KEY="d3Jvbmc="),
                        ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("AZURE_STORAGE_KEY", r.stderr)
        bad = self.tmp / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ")
        r = self.stream(str(bad), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("x.safetensors", r.stderr)
        self.assertEqual(self.stream(str(self.tmp / "absent"), ok=False).returncode, 1)
        self.assertEqual(self.stream("ftp://x/y", ok=False).returncode, 2)

    def test_large_header_and_edge_tensors(self):
        d = self.tmp / "edge"
        d.mkdir(exist_ok=True)
        got = write_safetensors(d / "m.safetensors", {"w": ("F16", (1024, 1024)), "s": ("I64", ()),
                                                      "e": ("F32", (0,)), "z": ("U8", (0, 0))},
                                seed=3, header_pad=60_000_000)
        exp = {f"m.safetensors/{k}": hashlib.sha256(v).hexdigest() for k, v in got.items()}
        self.check(self.stream(str(d), "--memory-limit", "0"), exp)

    def test_memory_limit_bounds_peak_rss(self):
        d = self.tmp / "big"
        # 2 GiB in 8 shards of 4 x 64 MiB tensors.
        exp = {}
        for i in range(8):
            name = f"model-{i + 1:05d}-of-00008.safetensors"
            got = write_safetensors(d / name if d.exists() or d.mkdir() is None else d / name,
                                    {f"l{i}.{j}": ("BF16", (32 * MIB,)) for j in range(4)}, seed=i)
            exp.update({f"{name}/{k}": hashlib.sha256(v).hexdigest() for k, v in got.items()})
        report = self.stream(str(d), "--memory-limit", "256MiB")
        self.check(report, exp)
        # The same binary streaming a small model: what the process takes before any budget
        # (code, libraries, and under `make sanitize` ASan's own shadow memory).
        baseline = self.stream(str(self.model))["peak_rss_bytes"]
        limit = baseline + 256 * MIB + 32 * MIB
        print(f"\n2 GiB with --memory-limit 256MiB: peak RSS {report['peak_rss_bytes'] / MIB:.0f} MiB "
              f"(small model: {baseline / MIB:.0f} MiB), "
              f"{report['bytes'] / report['seconds'] / 1e9:.2f} GB/s")
        self.assertLessEqual(report["peak_rss_bytes"], limit)


if __name__ == "__main__":
    unittest.main()
