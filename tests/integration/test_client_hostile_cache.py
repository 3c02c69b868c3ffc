"""A shared cache whose neighbours may be hostile (issue 14, items 3, 10, 11, 12).

Symlinks and foreign files planted in the cache must never make mx write, chmod or delete
through them; a failed download must not leave reserved space or clutter behind; a repo
of many files must download under a small descriptor limit. Tests run as root, so
"another user's file" is made with os.chown to another uid."""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from harness import MIB, HubStub, base_env, git_blob_sha1_file, make_repo, mx_binary, run, sha256_file
from test_download import assert_snapshot_matches, lfs_like

FILES = {
    "config.json": 900,
    "model.safetensors": 2 * MIB + 3,
}
FOLDER = "models--org--m"
OTHER_UID = 54321
OLD = time.time() - 3600  # older than the 10-minute orphan rule


def etag(content: Path, rel: str) -> str:
    src = content / rel
    return sha256_file(src) if lfs_like(rel, src.stat().st_size) else git_blob_sha1_file(src)


class HostileCacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-hostile-cache-"))
        cls.content = make_repo(cls.tmp / "content", FILES, seed=14)
        cls.hub = HubStub(cls.tmp, {"org/m": {"revisions": {"main": cls.content}}}).start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.hub.reset()
        self.hub.set_faults([])
        self.work = Path(tempfile.mkdtemp(prefix="case-", dir=self.tmp))
        self.cache = self.work / "cache"
        self.victim = self.work / "victim.txt"
        self.victim.write_bytes(b"precious\n")
        os.chmod(self.victim, 0o600)

    def download(self, *extra):
        env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)}
        return run([mx_binary(), "download", "org/m", "--max-workers", "2", *extra], env=env,
                   timeout=300)

    def assert_victim_untouched(self):
        st = os.lstat(self.victim)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, "victim's mode was changed")
        self.assertEqual(self.victim.read_bytes(), b"precious\n", "victim was written")

    # -- item 3 ---------------------------------------------------------------

    def test_planted_lock_symlink_is_not_followed_or_chmodded(self):
        locks = self.cache / ".locks" / FOLDER
        locks.mkdir(parents=True)
        for rel in FILES:
            os.symlink(self.victim, locks / f"{etag(self.content, rel)}.lock")
        r = self.download()
        self.assert_victim_untouched()
        self.assertNotEqual(r.returncode, 0, "a symlinked lock file must be refused")

    def test_planted_orphan_symlink_is_not_adopted(self):
        blobs = self.cache / FOLDER / "blobs"
        blobs.mkdir(parents=True)
        for rel in FILES:
            link = blobs / f"{etag(self.content, rel)}.mx-otherhost-1-0123456789abcdef.incomplete"
            os.symlink(self.victim, link)
            os.utime(link, (OLD, OLD), follow_symlinks=False)
        r = self.download()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_victim_untouched()
        assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], self.content, FILES)
        for rel in FILES:
            blob = blobs / etag(self.content, rel)
            self.assertFalse(blob.is_symlink(), f"{rel}: blob became a symlink")

    def test_foreign_owned_orphan_is_not_adopted(self):
        blobs = self.cache / FOLDER / "blobs"
        blobs.mkdir(parents=True)
        for rel in FILES:
            size = (self.content / rel).stat().st_size
            orphan = blobs / f"{etag(self.content, rel)}.mx-otherhost-1-0123456789abcdef.incomplete"
            orphan.write_bytes(b"\0" * size)
            os.chown(orphan, OTHER_UID, OTHER_UID)
            os.utime(orphan, (OLD, OLD))
        r = self.download()
        self.assertEqual(r.returncode, 0, r.stderr)
        for rel in FILES:
            st = os.lstat(blobs / etag(self.content, rel))
            self.assertEqual(st.st_uid, os.geteuid(), f"{rel}: another user's file became the blob")

    def test_symlinked_blobs_dir_is_refused(self):
        elsewhere = self.work / "elsewhere"
        elsewhere.mkdir()
        (self.cache / FOLDER).mkdir(parents=True)
        os.symlink(elsewhere, self.cache / FOLDER / "blobs")
        r = self.download()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(str(self.cache / FOLDER / "blobs"), r.stderr)
        self.assertEqual(list(elsewhere.iterdir()), [], "wrote through a symlinked blobs/")

    def test_symlinked_snapshots_dir_is_refused(self):
        elsewhere = self.work / "elsewhere"
        elsewhere.mkdir()
        (self.cache / FOLDER).mkdir(parents=True)
        os.symlink(elsewhere, self.cache / FOLDER / "snapshots")
        r = self.download()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(str(self.cache / FOLDER / "snapshots"), r.stderr)
        self.assertEqual(list(elsewhere.iterdir()), [], "wrote through a symlinked snapshots/")

    # -- item 10 --------------------------------------------------------------

    def prune(self):
        return run([mx_binary(), "cache", "prune", "--grace", "0"],
                   env={"HF_HUB_CACHE": str(self.cache)}, timeout=120)

    def test_prune_never_deletes_through_symlinked_blobs(self):
        home = self.work / "home"
        home.mkdir()
        (home / "thesis.tex").write_text("chapter 1")
        (home / ("ab" * 20)).write_text("looks like a blob")  # 40-hex name
        (self.cache / FOLDER / "snapshots").mkdir(parents=True)
        (self.cache / FOLDER / "refs").mkdir()
        os.symlink(home, self.cache / FOLDER / "blobs")
        self.prune()
        self.assertTrue((home / "thesis.tex").exists(), "prune deleted through a symlink")
        self.assertTrue((home / ("ab" * 20)).exists(), "prune deleted through a symlink")

    def test_prune_deletes_only_blob_and_temp_names(self):
        r = self.download()
        self.assertEqual(r.returncode, 0, r.stderr)
        blobs = self.cache / FOLDER / "blobs"
        keep = ["notes.txt", "id_ed25519", "ABCDEF" + "0" * 34, "ab" * 19]
        for name in keep:
            (blobs / name).write_text("not a blob")
            os.utime(blobs / name, (OLD, OLD))
        gone = ["cd" * 20, "ef" * 32]  # unreferenced, blob-shaped: prune's to remove
        for name in gone:
            (blobs / name).write_text("unreferenced blob")
            os.utime(blobs / name, (OLD, OLD))
        p = self.prune()
        self.assertEqual(p.returncode, 0, p.stderr)
        for name in keep:
            self.assertTrue((blobs / name).exists(), f"prune deleted {name}")
        for name in gone:
            self.assertFalse((blobs / name).exists(), f"prune kept unreferenced blob {name}")

    # -- item 11 --------------------------------------------------------------

    def test_failed_download_leaves_no_reservation(self):
        self.hub.set_faults([{"kind": "403", "path": "model.safetensors", "count": -1}])
        r = self.download("model.safetensors")
        self.assertNotEqual(r.returncode, 0)
        self.assertGreater(sum(self.hub.stats()["faults_triggered"].values()), 0)
        blobs = self.cache / FOLDER / "blobs"
        allocated = sum(os.lstat(p).st_blocks * 512 for p in blobs.iterdir()) if blobs.exists() else 0
        self.assertLess(allocated, 256 * 1024, f"space stayed reserved: {allocated} bytes")
        left = [p.name for p in blobs.iterdir()] if blobs.exists() else []
        self.assertFalse([n for n in left if ".incomplete" in n],
                         f"temp files with nothing to resume were left: {left}")


class ManyFilesUnderFdLimitTest(unittest.TestCase):
    """Item 12: 400 files under RLIMIT_NOFILE 256."""

    def test_many_files_small_fd_limit(self):
        tmp = Path(tempfile.mkdtemp(prefix="mx-many-files-"))
        try:
            files = {f"d{i % 7}/f{i:03d}.txt": 100 + i for i in range(400)}
            content = make_repo(tmp / "content", files, seed=12)
            cache = tmp / "cache"
            with HubStub(tmp, {"org/m": {"revisions": {"main": content}}}, page_size=1000) as hub:
                env = base_env()
                env.update({"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache)})

                def limit():
                    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

                r = subprocess.run([mx_binary(), "download", "org/m"], env=env, text=True,
                                   capture_output=True, timeout=600, preexec_fn=limit)
                self.assertEqual(r.returncode, 0, r.stderr[-3000:])
                assert_snapshot_matches(self, r.stdout.strip().splitlines()[-1], content, files)
                left = [p.name for p in (cache / FOLDER / "blobs").iterdir()
                        if ".incomplete" in p.name]
                self.assertEqual(left, [])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
