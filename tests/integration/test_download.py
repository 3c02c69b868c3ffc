"""End-to-end tests of `mx download` and `mx cache` against the hub stand-in and nginx.

Every test starts its own servers on 127.0.0.x, in temp dirs, and stops them by PID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import hf_reader
from harness import MIB, HubStub, Nginx, git_blob_sha1_file, make_repo, mx_binary, run, sha256_file

TOKEN = "hf_SECRETtoken0123456789"

FILES = {
    "config.json": 700,
    "tokenizer.json": 200_000,
    "empty.txt": 0,
    "nested/deeper/notes.md": 3000,
    "model-00001-of-00002.safetensors": 9 * MIB + 123,
    "model-00002-of-00002.safetensors": 5 * MIB,
    "dup_a.bin": 1234,  # LFS by extension
}


def lfs_like(path: str, size: int) -> bool:
    return path.endswith((".safetensors", ".bin", ".pt", ".gguf", ".h5", ".msgpack")) or size >= MIB


def assert_snapshot_matches(test: unittest.TestCase, snapshot: str, content: Path, files=None):
    """Every expected file is in the snapshot as a relative symlink to the right blob with
    the source's exact bytes."""
    files = files if files is not None else FILES
    for rel in files:
        src = content / rel
        dst = Path(snapshot) / rel
        test.assertTrue(dst.is_symlink(), f"{rel} is not a symlink")
        target = os.readlink(dst)
        depth = rel.count("/")
        expected_etag = sha256_file(src) if lfs_like(rel, src.stat().st_size) else git_blob_sha1_file(src)
        test.assertEqual(target, "../" * (depth + 2) + "blobs/" + expected_etag, rel)
        test.assertEqual(dst.read_bytes(), src.read_bytes(), rel)


def nginx_bytes(ng: Nginx) -> int:
    total = 0
    for line in ng.access_log_lines():
        parts = line.split('"')
        fields = parts[2].split()
        total += int(fields[1])
    return total


class DownloadTest(unittest.TestCase):
    """The happy paths and the user-visible errors, one shared hub + CDN."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-dl-"))
        cls.content = make_repo(cls.tmp / "main", FILES, seed=1)
        cls.pr = make_repo(cls.tmp / "pr", {"config.json": 50, "w.safetensors": 2 * MIB}, seed=2)
        cls.gated = make_repo(cls.tmp / "gated", {"config.json": 80, "w.safetensors": MIB}, seed=3)
        store = cls.tmp / "store"
        store.mkdir()
        cls.ng = Nginx(cls.tmp, store).start()
        cls.hub = HubStub(cls.tmp, {
            "org/model": {"revisions": {"main": cls.content, "refs/pr/1": cls.pr}},
            "org/gated": {"revisions": {"main": cls.gated}, "token": TOKEN},
            "dataset/org/data": {"revisions": {"main": cls.pr}},
            "org/renamed": {"revisions": {"main": cls.pr}, "renamed_from": ["org/old-name"]},
        }, page_size=3, lfs_redirect_base=cls.ng.base_url, lfs_store=store).start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        cls.ng.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.tmp))

    def mx(self, *args, env=None, timeout=300):
        full = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)}
        full.update(env or {})
        return run([mx_binary(), *args], env=full, timeout=timeout)

    def download(self, *args, env=None):
        r = self.mx("download", *args, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def test_full_download_matches_huggingface_layout(self):
        r = self.download("org/model", env={"HF_TOKEN": TOKEN, "MX_LOG_LEVEL": "debug"})
        commit = self.hub.commit("org/model")
        repo = self.cache / "models--org--model"
        snapshot = str(repo / "snapshots" / commit)
        self.assertEqual(r.stdout.strip().splitlines()[-1], snapshot)
        self.assertEqual((repo / "refs" / "main").read_text(), commit)
        assert_snapshot_matches(self, snapshot, self.content)
        tree = json.loads((repo / "trees" / f"{commit}.json").read_text())
        self.assertEqual(tree["format_version"], 1)
        self.assertEqual(set(tree["files"]), set(FILES))
        shard = tree["files"]["model-00001-of-00002.safetensors"]
        self.assertEqual(shard["lfs_sha256"], sha256_file(self.content / "model-00001-of-00002.safetensors"))
        self.assertEqual(shard["size"], FILES["model-00001-of-00002.safetensors"])
        self.assertEqual(tree["files"]["config.json"]["blob_id"], git_blob_sha1_file(self.content / "config.json"))
        # Offline readers as huggingface_hub implements them.
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])
        for rel in FILES:
            self.assertEqual(hf_reader.try_to_load_from_cache(str(self.cache), "org/model", rel),
                             f"{snapshot}/{rel}")
        self.assertEqual(hf_reader.snapshot_path_offline(str(self.cache), "org/model"), snapshot)
        # No temp files, no progress records left behind; blobs have normal file modes.
        leftovers = [p.name for p in (repo / "blobs").iterdir() if "." in p.name]
        self.assertEqual(leftovers, [])
        for blob in (repo / "blobs").iterdir():
            self.assertEqual(blob.stat().st_mode & 0o777, 0o644)
        # The token reached neither the CDN nor any output.
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        self.assertTrue(self.ng.access_log_lines())
        self.assertFalse([l for l in self.ng.access_log_lines() if "auth=1" in l])
        self.assertEqual(self.hub.stats()["lfs_auth_headers_seen"], 0)

    def test_rerun_fetches_nothing_and_offline_needs_no_network(self):
        self.download("org/model")
        r = self.download("org/model", "--json")
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(report["bytes_fetched"], 0)
        self.assertEqual(report["files"], len(FILES))
        self.assertEqual(report["bytes"], sum(FILES.values()))
        self.assertEqual(report["commit"], self.hub.commit("org/model"))
        dead = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
        r = self.mx("download", "org/model", "--quiet", env=dead)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), report["path"])
        r = self.mx("download", "org/model", "config.json", "--quiet", env=dead)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.mx("download", "org/other", env=dead)
        self.assertEqual(r.returncode, 1)
        self.assertIn("offline", r.stderr)

    def test_include_exclude_and_named_files(self):
        r = self.download("org/model", "--include", "*.json", "--exclude", "tokenizer*", "--quiet")
        snapshot = Path(r.stdout.strip())
        present = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if not p.is_dir())
        self.assertEqual(present, ["config.json"])
        r = self.download("org/model", "nested/deeper/notes.md", "--quiet")
        self.assertTrue((snapshot / "nested/deeper/notes.md").is_file())
        r = self.mx("download", "org/model", "missing.txt")
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.txt", r.stderr)
        commit = self.hub.commit("org/model")
        self.assertTrue((self.cache / "models--org--model/.no_exist" / commit / "missing.txt").is_file())
        self.assertEqual(hf_reader.try_to_load_from_cache(str(self.cache), "org/model", "missing.txt"),
                         "_CACHED_NO_EXIST")

    def test_pr_revision_writes_nested_ref(self):
        r = self.download("org/model", "--revision", "refs/pr/1", "--quiet")
        commit = self.hub.commit("org/model", "refs/pr/1")
        self.assertEqual((self.cache / "models--org--model/refs/refs/pr/1").read_text(), commit)
        self.assertEqual(r.stdout.strip(), str(self.cache / "models--org--model/snapshots" / commit))
        # Asking by commit writes no ref of that name.
        self.download("org/model", "--revision", commit, "--quiet")
        self.assertFalse((self.cache / "models--org--model/refs" / commit).exists())
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])

    def test_errors_are_clear_and_secret_free(self):
        r = self.mx("download", "org/nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn("does not exist", r.stderr)
        r = self.mx("download", "org/model", "--revision", "v9")
        self.assertEqual(r.returncode, 1)
        self.assertIn("revision", r.stderr)
        r = self.mx("download", "org/gated")
        self.assertEqual(r.returncode, 1)
        self.assertIn("HF_TOKEN", r.stderr)
        r = self.mx("download", "org/gated", env={"HF_TOKEN": "hf_wrong_token_value"})
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("hf_wrong_token_value", r.stdout + r.stderr)
        r = self.mx("download", "org/gated", "--token", TOKEN, "--quiet")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        # The token file under HF_HOME works too.
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        (home / "token").write_text(TOKEN + "\n")
        r = self.mx("download", "org/gated", "--quiet", env={"HF_HOME": str(home)})
        self.assertEqual(r.returncode, 0, r.stderr)
        # Bad arguments exit 2.
        self.assertEqual(self.mx("download").returncode, 2)
        self.assertEqual(self.mx("download", "org/model", "--max-workers", "0").returncode, 2)
        self.assertEqual(self.mx("download", "../etc").returncode, 2)

    def test_local_dir_and_no_symlinks(self):
        local = self.tmp / "local"
        r = self.download("org/model", "--local-dir", str(local), "--quiet")
        self.assertEqual(r.stdout.strip(), str(local))
        for rel in FILES:
            self.assertFalse((local / rel).is_symlink())
            self.assertEqual((local / rel).read_bytes(), (self.content / rel).read_bytes())
        meta = (local / ".cache/huggingface/download/config.json.metadata").read_text().split("\n")
        self.assertEqual(meta[0], self.hub.commit("org/model"))
        # Up-to-date local files are not fetched again; a modified one is.
        (local / "config.json").write_bytes(b"x" * FILES["config.json"])
        (local / ".cache/huggingface/download/config.json.metadata").write_text("c\nstale-etag\n0\n")
        r = self.download("org/model", "--local-dir", str(local), "--json")
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["bytes_fetched"], FILES["config.json"])
        self.assertEqual((local / "config.json").read_bytes(), (self.content / "config.json").read_bytes())
        r = self.download("org/model", "--quiet", env={"HF_HUB_DISABLE_SYMLINKS": "1"})
        snapshot = Path(r.stdout.strip())
        for rel in FILES:
            self.assertFalse((snapshot / rel).is_symlink(), rel)
            self.assertEqual((snapshot / rel).read_bytes(), (self.content / rel).read_bytes())
        r = self.mx("cache", "verify", "org/model")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_dataset_and_renamed_repo(self):
        r = self.download("org/data", "--repo-type", "dataset", "--quiet")
        commit = self.hub.commit("dataset/org/data")
        self.assertEqual(r.stdout.strip(), str(self.cache / "datasets--org--data/snapshots" / commit))
        assert_snapshot_matches(self, r.stdout.strip(), self.pr, {"config.json": 0, "w.safetensors": 0})
        # A renamed repo answers with a relative redirect that the client follows.
        r = self.download("org/old-name", "--quiet")
        assert_snapshot_matches(self, r.stdout.strip(), self.pr, {"config.json": 0, "w.safetensors": 0})

    def test_disk_full_is_a_clear_error(self):
        mount = self.tmp / "small"
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True).returncode != 0:
            self.skipTest("cannot mount a small tmpfs here (needs root)")
        try:
            r = self.mx("download", "org/model", "--cache-dir", str(mount / "cache"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("disk full", r.stderr)
            # The error names the file that did not fit (which one depends on the order the
            # pool finishes them in: small files start first).
            self.assertRegex(r.stderr, r"write [\w./-]+: No space left on device")
            # Nothing half-written is visible.
            for p in (mount / "cache").rglob("*"):
                if p.is_symlink() or (p.is_file() and "snapshots" in p.parts):
                    self.assertTrue(p.exists(), f"broken link {p}")
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)

    def test_cache_commands(self):
        self.download("org/model")
        self.download("org/model", "--revision", "refs/pr/1")
        commit = self.hub.commit("org/model")
        r = self.mx("cache", "ls", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = json.loads(r.stdout)
        self.assertEqual([x["repo_id"] for x in listed], ["org/model"])
        self.assertEqual(len(listed[0]["revisions"]), 2)
        self.assertEqual(self.mx("cache", "ls", "--revisions").returncode, 0)
        r = self.mx("cache", "path", "org/model")
        self.assertEqual(r.stdout.strip(), str(self.cache / "models--org--model/snapshots" / commit))
        self.assertEqual(self.mx("cache", "verify", "org/model").returncode, 0)
        # Flip one byte of a blob: verify must name it and fail.
        blob = self.cache / "models--org--model/blobs" / sha256_file(self.content / "model-00002-of-00002.safetensors")
        data = bytearray(blob.read_bytes())
        data[12345] ^= 0xFF
        blob.write_bytes(bytes(data))
        r = self.mx("cache", "verify", "org/model")
        self.assertEqual(r.returncode, 1)
        self.assertIn("model-00002-of-00002.safetensors", r.stderr)
        # Removing the PR revision frees its blobs and keeps main intact.
        r = self.mx("cache", "rm", "org/model@refs/pr/1")
        self.assertEqual(r.returncode, 0, r.stderr)
        pr_blob = self.cache / "models--org--model/blobs" / sha256_file(self.pr / "w.safetensors")
        self.assertFalse(pr_blob.exists())
        self.assertTrue((self.cache / "models--org--model/snapshots" / commit).is_dir())
        self.assertEqual(hf_reader.scan_cache_warnings(str(self.cache)), [])
        # prune drops a detached revision and stale temp files of dead writers.
        self.download("org/model", "--revision", self.hub.commit("org/model", "refs/pr/1"))
        stale = self.cache / "models--org--model/blobs" / ("a" * 64 + ".mx-nohost-1-0000000000000000.incomplete")
        stale.write_bytes(b"x")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        r = self.mx("cache", "prune")  # the default grace period keeps a fresh revision
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(stale.exists())
        self.assertEqual(len(list((self.cache / "models--org--model/snapshots").iterdir())), 2)
        r = self.mx("cache", "prune", "--grace", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(list((self.cache / "models--org--model/snapshots").iterdir())), 1)
        r = self.mx("cache", "rm", "org/model")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse((self.cache / "models--org--model").exists())


if __name__ == "__main__":
    unittest.main()
