"""What the mx CLI prints must not let a server or a file drive the terminal, and a
revision must never become a path outside the cache (issue 14, items 13 and 14).

Item 13: a hostile hub answers with escape sequences in the commit sha and in
X-Error-Code, a model has a tensor / file name with ESC and invalid UTF-8: mx's stdout and
stderr must hold no raw control character (ESC, BEL) and mx must not crash on them.
Item 14: `--revision ../../../../tmp/x` is refused at the CLI entry, exit 2, before any
request reaches the hub, for `mx download`, `mx cache path`, `mx cache verify`, `mx cache rm`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from harness import base_env, mx_binary
from storage_peers import write_safetensors
from test_client_edges import Handler, Recorder

EVIL = "\x1b]0;PWNED\x07\x1b[2J"
BAD_REVISION = "../../../../tmp/x"


def run_mx(args, env=None, timeout=60):
    full = base_env()
    full.update({k: str(v) for k, v in (env or {}).items()})
    return subprocess.run([mx_binary(), *map(str, args)], env=full, capture_output=True,
                          timeout=timeout)


def evil_hub(mode: str):
    class Hub(Handler):
        def do_GET(self):
            self.record()
            if mode == "sha":
                return self.send_json({"id": "org/m", "sha": EVIL + "a" * 30})
            self.send_response(404)
            # Raw bytes on the wire: http.server encodes header values as latin-1.
            self.send_header("X-Error-Code", EVIL)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Hub


class CliTestBase(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-hostile-cli-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assert_no_controls(self, r):
        for stream in (r.stdout, r.stderr):
            for c in (b"\x1b", b"\x07", b"\x9b"):
                self.assertNotIn(c, stream, stream)


class TerminalInjectionTest(CliTestBase):
    """Item 13."""

    def download(self, mode):
        with Recorder("127.0.0.1", evil_hub(mode)) as srv:
            return run_mx(["download", "org/m", "--cache-dir", self.tmp / "cache"],
                          {"HF_ENDPOINT": srv.origin})

    def test_commit_sha_with_escapes_is_escaped(self):
        r = self.download("sha")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assert_no_controls(r)
        self.assertIn(b"\\x1b]0;PWNED\\x07", r.stderr)

    def test_error_code_with_escapes_is_escaped(self):
        r = self.download("error-code")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assert_no_controls(r)
        self.assertIn(b"HTTP 404", r.stderr)

    def test_tensor_and_file_names_with_escapes(self):
        model = self.tmp / "model"
        model.mkdir()
        write_safetensors(model / "a.safetensors", {EVIL + "w": ("F32", [2])})
        # A file name with ESC and a byte that is not UTF-8.
        odd = os.fsencode(str(model)) + b"/b\x1b[2J\xff.safetensors"
        write_safetensors(os.fsdecode(odd), {"x": ("F32", [2])}, seed=1)
        r = run_mx(["stream", "--tensor-digests", model])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_no_controls(r)
        summary = json.loads(r.stdout)
        self.assertEqual(summary["tensors"], 2)
        # nlohmann writes ESC as \u001b, which json.loads turns back into ESC.
        self.assertTrue(any(k.endswith("a.safetensors/" + EVIL + "w")
                            for k in summary["tensor_sha256"]), summary)

    def test_cache_listing_of_odd_directory_names(self):
        cache = self.tmp / "cache"
        repo = os.fsencode(str(cache)) + b"/models--org--m\x1b[2J\xff"
        os.makedirs(repo + b"/snapshots/" + b"b" * 40)
        os.makedirs(repo + b"/refs")
        with open(repo + b"/refs/main", "wb") as f:
            f.write(b"b" * 40)
        for extra in ([], ["--revisions"], ["--json"]):
            r = run_mx(["cache", "ls", "--cache-dir", cache, *extra])
            self.assertIn(r.returncode, (0, 1), r.stderr)
            self.assert_no_controls(r)


class RevisionAsPathTest(CliTestBase):
    """Item 14: refused at the CLI entry, exit 2, no request made."""

    def test_download_refuses_before_any_request(self):
        with Recorder("127.0.0.1", evil_hub("sha")) as srv:
            r = run_mx(["download", "org/m", "--revision", BAD_REVISION, "--cache-dir",
                        self.tmp / "cache"], {"HF_ENDPOINT": srv.origin})
            seen = list(srv.seen)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"invalid revision", r.stderr)
        self.assertEqual(seen, [])
        self.assertFalse((self.tmp / "cache").exists())

    def test_cache_commands_refuse(self):
        cache = self.tmp / "cache"
        for args in (["cache", "path", "org/m", "--revision", BAD_REVISION],
                     ["cache", "verify", "org/m", "--revision", BAD_REVISION],
                     ["cache", "verify", "org/m@" + BAD_REVISION],
                     ["cache", "rm", "org/m@" + BAD_REVISION]):
            r = run_mx([*args, "--cache-dir", cache])
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(b"invalid revision", r.stderr, args)


if __name__ == "__main__":
    unittest.main()
