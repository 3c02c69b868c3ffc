"""First contact with `mx download` (issue 13, items 1, 2, 4, 5, 11): the real mx against the
hub stand-in (harness.HubStub) and a real mx-server mirror.

- the hub unreachable (connection refused, 5xx) and the revision complete in the cache or
  in a --local-dir: answered from there with one warning, as huggingface_hub does;
- a selection that matches nothing is an error; named files win over --include/--exclude;
- `mx cache verify --repair` and `mx download --force-download` repair a corrupt blob, and a
  plain rerun after a failed verify says how;
- the server's X-Error-Message is shown (escaped, bounded), from the stand-in and a mirror;
- progress lines on a non-terminal stderr, files-done moving as files complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import unittest
import urllib.error
import urllib.request
from pathlib import Path

from harness import MIB, HubStub, free_port, make_repo, mx_binary, run, sha256_file
from server_harness import HubAndServersCase

TOKEN = "hf_SECRETg1token0123456789"

FILES = {
    "config.json": 700,
    "tokenizer.json": 20_000,
    "model.safetensors": 3 * MIB + 17,
}

UNREACHABLE_WARNING = "cannot reach the hub"


def dead_endpoint() -> str:
    """An HTTP endpoint on which nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}"


class HubCase(unittest.TestCase):
    """One hub stand-in for the class, a fresh cache per test."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-g1-"))
        cls.content = make_repo(cls.tmp / "main", FILES, seed=11)
        cls.slow = make_repo(cls.tmp / "slow", {f"small-{i}.json": 1000 + i for i in range(6)}
                             | {"big.safetensors": 8 * MIB}, seed=12)
        cls.gated = make_repo(cls.tmp / "gated", {"config.json": 90}, seed=13)
        cls.hub = HubStub(cls.tmp, {
            "acme/m": {"revisions": {"main": cls.content}},
            "acme/slow": {"revisions": {"main": cls.slow}},
            "acme/gated": {"revisions": {"main": cls.gated}, "token": TOKEN},
        }).start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.hub.reset()
        self.cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.tmp))

    def mx(self, *args, env=None, cwd=None, timeout=300):
        full = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": str(self.cache)}
        full.update(env or {})
        return run([mx_binary(), *args], env=full, cwd=cwd, timeout=timeout)

    def ok(self, *args, **kw):
        r = self.mx(*args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def snapshot(self, repo="acme/m") -> Path:
        folder = "models--" + repo.replace("/", "--")
        return self.cache / folder / "snapshots" / self.hub.commit(repo)

    def blob_of(self, rel: str) -> Path:
        return (self.snapshot() / rel).resolve()


class HubOutageTest(HubCase):
    """Item 1: huggingface_hub's fallback to the cache when the hub cannot be reached."""

    def test_connection_refused_answers_from_a_complete_cache(self):
        self.ok("download", "acme/m", "--quiet")
        dead = {"HF_ENDPOINT": dead_endpoint()}
        r = self.ok("download", "acme/m", env=dead)
        self.assertEqual(r.stdout.strip().splitlines()[-1], str(self.snapshot()))
        self.assertEqual(r.stderr.count(UNREACHABLE_WARNING), 1, r.stderr)
        # A commit names its snapshot directly; --json reports the files from the listing.
        commit = self.hub.commit("acme/m")
        r = self.ok("download", "acme/m", "--revision", commit, "--json", env=dead)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((report["commit"], report["files"], report["bytes_fetched"]),
                         (commit, len(FILES), 0))
        self.assertEqual(report["bytes"], sum(FILES.values()))
        r = self.ok("download", "acme/m", "config.json", "--quiet", env=dead)
        self.assertEqual(r.stdout.strip(), str(self.snapshot()))
        # A cache without mx's listing (written by another tool) is taken as it is.
        shutil.rmtree(self.cache / "models--acme--m" / "trees")
        r = self.ok("download", "acme/m", "--quiet", env=dead)
        self.assertEqual(r.stdout.strip(), str(self.snapshot()))

    def test_dns_failure_and_timeout_answer_from_the_cache(self):
        self.ok("download", "acme/m", "--quiet")
        snapshot = str(self.snapshot())
        r = self.ok("download", "acme/m", env={"HF_ENDPOINT": "http://mx-g1-no-such-host.invalid"})
        self.assertEqual(r.stdout.strip().splitlines()[-1], snapshot)
        self.assertEqual(r.stderr.count(UNREACHABLE_WARNING), 1, r.stderr)
        # A listener that never answers: the metadata request times out.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            r = self.ok("download", "acme/m",
                        env={"HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
                             "MX_STALL_TIMEOUT_SECONDS": "1"})
        self.assertEqual(r.stdout.strip().splitlines()[-1], snapshot)
        self.assertEqual(r.stderr.count(UNREACHABLE_WARNING), 1, r.stderr)

    def test_server_errors_after_retries_answer_from_the_cache(self):
        self.ok("download", "acme/m", "--quiet")
        snapshot = str(self.snapshot())
        self.hub.set_faults([{"kind": "500", "on": "api", "count": -1}])
        r = self.ok("download", "acme/m")
        self.assertEqual(r.stdout.strip().splitlines()[-1], snapshot)
        self.assertEqual(r.stderr.count(UNREACHABLE_WARNING), 1, r.stderr)
        self.assertIn("HTTP 500", r.stderr)

    def test_incomplete_cache_keeps_the_hub_error(self):
        self.ok("download", "acme/m", "--include", "*.json", "--quiet")
        dead = {"HF_ENDPOINT": dead_endpoint()}
        r = self.mx("download", "acme/m", env=dead)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("lacks some of the requested files", r.stderr)
        self.assertIn("127.0.0.1", r.stderr)  # the hub's error comes first
        self.assertNotIn(UNREACHABLE_WARNING, r.stderr)
        # What is complete is still served: the JSON files alone.
        self.ok("download", "acme/m", "--include", "*.json", "--quiet", env=dead)
        r = self.mx("download", "acme/absent", env=dead)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not in the cache", r.stderr)
        # --force-download needs the hub.
        r = self.mx("download", "acme/m", "--include", "*.json", "--force-download", env=dead)
        self.assertEqual(r.returncode, 1)

    def test_local_dir_is_absolute_and_accepted_offline_when_complete(self):
        work = Path(tempfile.mkdtemp(prefix="work-", dir=self.tmp))
        r = self.ok("download", "acme/m", "--local-dir", "./model", "--quiet", cwd=work)
        local = os.path.realpath(work / "model")
        self.assertEqual(r.stdout.strip(), local)
        self.assertEqual((work / "model/config.json").read_bytes(),
                         (self.content / "config.json").read_bytes())
        dead = {"HF_ENDPOINT": dead_endpoint()}
        r = self.ok("download", "acme/m", "--local-dir", "./model", cwd=work, env=dead)
        self.assertEqual(r.stdout.strip().splitlines()[-1], local)
        self.assertEqual(r.stderr.count(UNREACHABLE_WARNING), 1, r.stderr)
        r = self.ok("download", "acme/m", "--local-dir", "./model", "--quiet", cwd=work,
                    env={"HF_HUB_OFFLINE": "1"})
        self.assertEqual(r.stdout.strip(), local)
        # A file that went missing (or changed) makes it incomplete: the hub's error.
        (work / "model/tokenizer.json").unlink()
        r = self.mx("download", "acme/m", "--local-dir", "./model", cwd=work, env=dead)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("lacks tokenizer.json", r.stderr)
        # The hub back: the missing file is fetched, the path is still absolute.
        r = self.ok("download", "acme/m", "--local-dir", "./model", "--quiet", cwd=work)
        self.assertEqual(r.stdout.strip(), local)
        self.assertTrue((work / "model/tokenizer.json").is_file())


class SelectionTest(HubCase):
    """Item 2: an empty selection is an error; named files win over patterns."""

    def test_selection_that_matches_nothing_is_an_error(self):
        for args in (["--include", "*.gguf"], ["--include", "*.json", "--exclude", "*.json"]):
            r = self.mx("download", "acme/m", *args)
            self.assertEqual(r.returncode, 1, (args, r.stdout, r.stderr))
            self.assertIn("no file of acme/m@main matches", r.stderr)
            self.assertIn("3 file(s)", r.stderr)
            self.assertEqual(r.stdout.strip(), "")
        # Offline (and answered from the cache) the same rule holds.
        self.ok("download", "acme/m", "--quiet")
        r = self.mx("download", "acme/m", "--include", "*.gguf", env={"HF_HUB_OFFLINE": "1"})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("matches", r.stderr)

    def test_named_files_win_over_include_with_one_warning(self):
        r = self.ok("download", "acme/m", "config.json", "--include", "*.safetensors",
                    "--exclude", "config.json", "--json")
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(report["files"], 1)
        self.assertEqual(report["bytes"], FILES["config.json"])
        self.assertEqual(r.stderr.count("ignoring --include/--exclude"), 1, r.stderr)
        self.assertTrue((self.snapshot() / "config.json").is_file())
        self.assertFalse((self.snapshot() / "model.safetensors").exists())


class RepairTest(HubCase):
    """Item 4: --force-download, verify --repair, and what a plain rerun says."""

    def corrupt(self, rel: str) -> Path:
        blob = self.blob_of(rel)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size: only a hash can tell
        os.chmod(blob, 0o644)
        blob.write_bytes(bytes(data))
        return blob

    def test_verify_repair_fetches_exactly_the_bad_blob(self):
        self.ok("download", "acme/m", "--quiet")
        blob = self.corrupt("model.safetensors")
        r = self.mx("cache", "verify", "acme/m")
        self.assertEqual(r.returncode, 1)
        self.assertIn("hash mismatch", r.stderr)
        self.assertIn("mx cache verify --repair acme/m", r.stderr)
        # A plain rerun does not trust the bad blob: it says so, and how to fix it.
        r = self.mx("download", "acme/m")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("bad blob for model.safetensors", r.stderr)
        self.assertIn("mx cache verify --repair acme/m", r.stderr)
        self.assertIn("--force-download", r.stderr)
        self.hub.reset()
        r = self.ok("cache", "verify", "--repair", "acme/m")
        self.assertIn("repaired: ", r.stderr)
        self.assertIn("model.safetensors", r.stderr)
        self.assertIn("1 bad, 1 repaired, 0 still bad", r.stdout)
        self.assertEqual(sha256_file(blob), blob.name)
        fetched = self.hub.stats()["bytes_by_file"]
        self.assertEqual(fetched, {"model.safetensors": FILES["model.safetensors"]})
        # Clean again: a rerun fetches nothing and verify passes.
        r = self.ok("download", "acme/m", "--json")
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["bytes_fetched"], 0)
        self.ok("cache", "verify", "acme/m")

    def test_force_download_refetches_and_replaces(self):
        self.ok("download", "acme/m", "--quiet")
        r = self.ok("download", "acme/m", "--force-download", "--json")
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["bytes_fetched"],
                         sum(FILES.values()))
        blob = self.corrupt("config.json")
        self.assertEqual(self.mx("cache", "verify", "acme/m").returncode, 1)
        self.assertEqual(self.mx("download", "acme/m", "config.json").returncode, 1)
        r = self.ok("download", "acme/m", "--force-download", "--json")
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["bytes_fetched"],
                         sum(FILES.values()))
        self.assertEqual(blob.read_bytes(), (self.content / "config.json").read_bytes())
        self.ok("cache", "verify", "acme/m")
        self.ok("download", "acme/m", "--quiet")
        # A blob of the wrong size is simply fetched again by a plain download.
        blob = self.blob_of("tokenizer.json")
        os.chmod(blob, 0o644)
        blob.write_bytes(b"short")
        r = self.ok("download", "acme/m", "--json")
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["bytes_fetched"],
                         FILES["tokenizer.json"])
        self.ok("cache", "verify", "acme/m")


class ServerMessageTest(HubCase):
    """Item 5 against the stand-in: X-Error-Message is shown, escaped and bounded."""

    def test_hub_message_replaces_the_guess(self):
        r = self.mx("download", "acme/gated", env={"HF_TOKEN": "hf_wrong_token_value"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("Token not authorized for acme/gated", r.stderr)  # the stand-in's words
        self.assertNotIn("the token was refused", r.stderr)
        self.assertNotIn("hf_wrong_token_value", r.stdout + r.stderr)
        r = self.mx("download", "acme/gated")
        self.assertEqual(r.returncode, 1)
        self.assertIn("Access to acme/gated requires a token", r.stderr)
        self.assertIn("HF_TOKEN", r.stderr)

    def test_hostile_message_is_escaped_and_bounded(self):
        hostile = "\x1b[31mpwned\x07 " + "A" * 2000
        self.hub.set_faults([{"kind": "418", "on": "api", "count": -1,
                              "error_code": "Teapot", "error_message": hostile}])
        r = self.mx("download", "acme/m")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("(Teapot): \\x1b[31mpwned\\x07 AAAA", r.stderr)
        self.assertNotIn("\x1b", r.stderr)
        self.assertNotIn("\x07", r.stderr)
        self.assertLess(r.stderr.count("A"), 400)
        self.assertIn("AAA...", r.stderr)


class ProgressTest(HubCase):
    """Item 11: progress lines for logs when stderr is not a terminal."""

    LINE = re.compile(r"^progress: .+ / .+ \(\d+%\), .+/s, files (\d+)/(\d+), ETA \S+, \d+s elapsed$")

    def test_progress_lines_every_interval_with_files_moving(self):
        # One range of the big file stalls for 4 s; the small files finish meanwhile.
        self.hub.set_faults([{"kind": "stall", "path": "*big.safetensors", "count": 1,
                              "after_bytes": 4096, "seconds": 4}])
        r = self.ok("download", "acme/slow", env={"MX_PROGRESS_INTERVAL_SECONDS": "1",
                                                  "HF_TOKEN": TOKEN})
        lines = [m for m in (self.LINE.match(l) for l in r.stderr.splitlines()) if m]
        self.assertGreaterEqual(len(lines), 2, r.stderr)
        counts = [(int(m.group(1)), int(m.group(2))) for m in lines]
        self.assertTrue(all(total == 7 for _, total in counts), counts)
        # Files are counted as they complete, not when the whole batch is over.
        self.assertTrue(any(0 < done < 7 for done, _ in counts), counts)
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        self.assertNotIn("\r", r.stderr)  # no redrawn terminal bar in a log
        # --quiet stays quiet; a bad interval is refused by name.
        r = self.ok("download", "acme/slow", "--quiet", "--force-download",
                    env={"MX_PROGRESS_INTERVAL_SECONDS": "1"})
        self.assertNotIn("progress:", r.stderr)
        r = self.mx("download", "acme/slow", env={"MX_PROGRESS_INTERVAL_SECONDS": "0"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("MX_PROGRESS_INTERVAL_SECONDS", r.stderr)


class MirrorMessageTest(HubAndServersCase):
    """Item 5 against a real mx-server mirror: the client shows the mirror's own words."""

    PREFIX = "mx-g1-mirror-"

    @classmethod
    def make_repos(cls, tmp: Path) -> dict:
        m = make_repo(tmp / "m", {"config.json": 60}, seed=21)
        return {"org/m": {"revisions": {"main": m}},
                "org/gated": {"revisions": {"main": m}, "token": TOKEN},
                "dataset/org/data": {"revisions": {"main": m}}}

    def mirror_message(self, url: str, headers=None) -> str:
        req = urllib.request.Request(url, headers=headers or {})
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(req, timeout=30)
        message = ctx.exception.headers.get("X-Error-Message")
        self.assertTrue(message)
        return message

    def client(self, srv, *args, env=None):
        full = {"HF_ENDPOINT": srv.mirror,
                "HF_HUB_CACHE": str(Path(tempfile.mkdtemp(prefix="client-", dir=self.tmp)))}
        full.update(env or {})
        return run([mx_binary(), "download", *args], env=full, timeout=120)

    def test_dataset_and_gated_messages_come_from_the_mirror(self):
        srv = self.server()  # no HF_TOKEN: the server cannot read org/gated
        said = self.mirror_message(f"{srv.mirror}/api/datasets/org/data/revision/main")
        r = self.client(srv, "org/data", "--repo-type", "dataset")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(said, r.stderr)
        self.assertIn("model repos only", r.stderr)
        # The client has a (good) token; the server has none: no "your token was refused".
        said = self.mirror_message(f"{srv.mirror}/api/models/org/gated/revision/main",
                                   {"Authorization": f"Bearer {TOKEN}"})
        r = self.client(srv, "org/gated", env={"HF_TOKEN": TOKEN})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(said, r.stderr)
        self.assertNotIn("the token was refused", r.stderr)
        self.assertNotIn(TOKEN, r.stderr)

    def test_missing_mirror_token_is_named(self):
        token_file = self.tmp / "mirror-token"
        token_file.write_text("mirror-secret-token\n")
        srv = self.server(args=["--auth-token-file", token_file])
        r = self.client(srv, "org/m")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("this mirror needs its bearer token", r.stderr)
        r = self.client(srv, "org/m", "--quiet", env={"HF_TOKEN": "mirror-secret-token"})
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
