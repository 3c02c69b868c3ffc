"""First contact (issue 13, items 3, 7 and 8), with the real mx and mx-server binaries
against the hub stand-in.

Item 3: `mx stream NAME` reads an existing directory or file NAME as a path; only a name
that exists nowhere here is a hub id; `-v` says which it picked.
Item 7: unknown commands are named with the nearest one; --version of both binaries;
`serve` in `mx --help`; `--token TOKEN` in help; `mx cache path REPO@REV`; plural
--repo-type; `cache rm`/`prune` report what they freed, and empty repos disappear.
Item 8: `mx completion bash|zsh` and `mx doctor`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from harness import HubStub, base_env, free_port, make_repo, mx_binary
from server_harness import MxServer, server_binary
from storage_peers import write_safetensors
from test_client_edges import Handler, Recorder

TOKEN = "hf_g2SecretTokenValue1234"


def run_mx(args, env=None, cwd=None, timeout=120):
    full = base_env()
    full.pop("MX_LOG_LEVEL", None)
    full.update({k: str(v) for k, v in (env or {}).items()})
    return subprocess.run([mx_binary(), *map(str, args)], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def write_model(dir_: Path, n_tensors: int, seed: int) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    write_safetensors(dir_ / "model.safetensors",
                      {f"t{i}": ("F32", [4 + i]) for i in range(n_tensors)}, seed=seed)


def blobs_on_disk(repo_dir: Path) -> tuple[int, int]:
    """(number of blob files, their total size) under repo_dir/blobs, measured directly."""
    blobs = repo_dir / "blobs"
    if not blobs.is_dir():
        return 0, 0
    files = [p for p in blobs.iterdir() if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def format_bytes(n: float) -> str:
    """mx's FormatBytes (src/common/env.cc)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    u = 0
    while n >= 1024 and u < 4:
        n /= 1024
        u += 1
    return f"{n:.0f} {units[u]}" if u == 0 else f"{n:.1f} {units[u]}"


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-g2-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Item 3
# --------------------------------------------------------------------------------------


class StreamPathOrHubIdTest(Base):
    """A directory origin/acme/m with 3 tensors, and the hub id acme/m in the HF cache with
    5: the tensor count tells which one mx read."""

    def setUp(self):
        super().setUp()
        self.origin = self.tmp / "origin"
        write_model(self.origin / "acme" / "m", 3, seed=1)
        self.cache = self.tmp / "cache"
        commit = "c" * 40
        repo = self.cache / "models--acme--m"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        write_model(repo / "snapshots" / commit, 5, seed=2)
        self.env = {"HF_HUB_CACHE": self.cache}

    def stream(self, args, cwd):
        r = run_mx(["stream", "--json", *args], self.env, cwd=cwd)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["tensors"], r.stderr

    def test_existing_directory_is_a_path(self):
        n, err = self.stream(["-v", "acme/m"], cwd=self.origin)
        self.assertEqual(n, 3, err)
        self.assertIn("'acme/m' is an existing directory here: reading it as a path", err)
        n, _ = self.stream(["origin/acme/m"], cwd=self.tmp)
        self.assertEqual(n, 3)

    def test_existing_file_is_a_path(self):
        n, err = self.stream(["-v", "acme/m/model.safetensors"], cwd=self.origin)
        self.assertEqual(n, 3, err)
        self.assertIn("is an existing file here", err)

    def test_name_not_on_disk_is_the_hub_id(self):
        n, err = self.stream(["acme/m", "--verbose"], cwd=self.tmp)
        self.assertEqual(n, 5, err)
        self.assertIn("'acme/m' is no file or directory here: the hub id acme/m@main", err)

    def test_without_v_it_stays_quiet(self):
        n, err = self.stream(["acme/m"], cwd=self.origin)
        self.assertEqual(n, 3)
        self.assertNotIn("reading it as a path", err)

    def test_missing_everywhere_says_both(self):
        r = run_mx(["stream", "acme/other"], self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("is no file or directory here, nor in the local HF cache", r.stderr)
        self.assertIn("mx download acme/other", r.stderr)


# --------------------------------------------------------------------------------------
# Item 7
# --------------------------------------------------------------------------------------


class CliBasicsTest(Base):
    def test_unknown_command_suggests_the_nearest(self):
        r = run_mx(["donwload", "acme/m"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("unknown command 'donwload'; did you mean 'download'?", r.stderr)
        r = run_mx(["cache", "lss"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("unknown command 'lss'; did you mean 'ls'?", r.stderr)
        r = run_mx(["zzzzzzzz"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("unknown command 'zzzzzzzz'", r.stderr)
        self.assertNotIn("did you mean", r.stderr)
        # A misplaced option's value is not taken for a command: CLI11 names the option.
        r = run_mx(["cache", "--cache-dir", "/tmp", "ls"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertNotIn("unknown command", r.stderr)
        self.assertIn("--cache-dir", r.stderr)
        # A control character in the word is shown escaped.
        r = run_mx(["dow\x1bnload"])
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("\x1b", r.stderr)

    def test_version_of_both_binaries(self):
        for binary, name in ((mx_binary(), "mx"), (server_binary(), "mx-server")):
            r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                               env=base_env())
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout.strip(),
                             rf"^{name} \d+\.\d+\.\d+ \(commit [0-9a-f]{{12}}(\+dirty)?, "
                             r"CUDA (yes|no), UCX (yes|no)\)$")

    def test_serve_is_listed_and_shows_the_server_options(self):
        r = run_mx(["--help"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"\n  serve +Run mx-server")
        for cmd in ("download", "cache", "stream", "doctor", "completion"):
            self.assertRegex(r.stdout, rf"\n  {cmd} ")
        self.assertIn("-v,--verbose", r.stdout)
        r = run_mx(["serve", "--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        for opt in ("--port", "--mirror-port", "--cache-dir", "--validate-config"):
            self.assertIn(opt, r.stdout)
        # Behind a global flag, serve still hands its words to the server's parser.
        r = run_mx(["-v", "serve", "--version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("mx-server "), r.stdout)

    def test_token_shows_its_argument(self):
        for cmd in (["download"], ["doctor"]):
            r = run_mx([*cmd, "--help"])
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"--token TOKEN ")


class CacheCommandsTest(Base):
    """A real cache filled by mx download from the hub stand-in: acme/m at main and v1
    (different files), and acme/solo at main."""

    def setUp(self):
        super().setUp()
        main = make_repo(self.tmp / "src-main", {"config.json": '{"a": 1}',
                                                 "model.safetensors": 300_000,
                                                 "shared.bin": 200_000}, seed=1)
        v1 = make_repo(self.tmp / "src-v1", {"config.json": '{"a": 2}',
                                             "model.safetensors": 500_000}, seed=2)
        shutil.copy(main / "shared.bin", v1 / "shared.bin")  # one blob both revisions use
        solo = make_repo(self.tmp / "src-solo", {"w.bin": 100_000}, seed=3)
        self.hub = HubStub(self.tmp, {"acme/m": {"revisions": {"main": main, "v1": v1}},
                                      "acme/solo": {"revisions": {"main": solo}}}).start()
        self.addCleanup(self.hub.stop)
        self.cache = self.tmp / "cache"
        self.env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": self.cache}
        for repo, rev in (("acme/m", "main"), ("acme/m", "v1"), ("acme/solo", "main")):
            r = run_mx(["download", repo, "--revision", rev, "--quiet"], self.env)
            self.assertEqual(r.returncode, 0, r.stderr)

    def mx(self, *args, code=0):
        r = run_mx(args, self.env)
        self.assertEqual(r.returncode, code, (args, r.stdout, r.stderr))
        return r

    def listed(self):
        return {e["repo_id"]: e for e in json.loads(self.mx("cache", "ls", "--json").stdout)}

    def test_path_takes_repo_at_revision(self):
        for rev in ("main", "v1"):
            out = self.mx("cache", "path", f"acme/m@{rev}").stdout.strip()
            self.assertEqual(out, str(self.cache / "models--acme--m" / "snapshots" /
                                      self.hub.commit("acme/m", rev)))
        # --revision wins over @REV, as for verify.
        out = self.mx("cache", "path", "acme/m@main", "--revision", "v1").stdout.strip()
        self.assertTrue(out.endswith(self.hub.commit("acme/m", "v1")))
        r = self.mx("cache", "path", "acme/m@nope", code=1)
        self.assertIn("error:", r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertIn("invalid revision", self.mx("cache", "path", "acme/m@../x", code=2).stderr)

    def test_repo_type_accepts_what_ls_json_prints(self):
        printed = self.listed()["acme/m"]["repo_type"]
        self.assertEqual(printed, "models")
        for spelling in (printed, "model"):
            out = self.mx("cache", "path", "acme/m", "--repo-type", spelling).stdout.strip()
            self.assertTrue(out.endswith(self.hub.commit("acme/m")), out)
            self.mx("cache", "verify", "acme/m", "--repo-type", spelling)
        # datasets/dataset are accepted too: a clean "not in the cache", not a usage error.
        for spelling in ("datasets", "dataset"):
            r = self.mx("cache", "path", "acme/m", "--repo-type", spelling, code=1)
            self.assertIn("error:", r.stderr)
        r = run_mx(["download", "acme/solo", "--repo-type", "models", "--quiet"], self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.mx("cache", "path", "acme/m", "--repo-type", "modelz", code=2)

    def check_report(self, out: str, revisions: int, before, after):
        blobs = before[0] - after[0]
        freed = before[1] - after[1]
        self.assertGreater(blobs, 0)
        self.assertIn(f"removed {revisions} revision(s), {blobs} blob(s), freed "
                      f"{format_bytes(freed)}", out)

    def test_rm_revision_reports_what_it_freed(self):
        repo = self.cache / "models--acme--m"
        before = blobs_on_disk(repo)
        out = self.mx("cache", "rm", "acme/m@v1").stdout
        self.check_report(out, 1, before, blobs_on_disk(repo))
        self.assertTrue((repo / "snapshots" / self.hub.commit("acme/m")).is_dir())
        self.assertIn("acme/m", self.listed())

    def test_rm_whole_repo_reports_every_blob(self):
        repo = self.cache / "models--acme--m"
        before = blobs_on_disk(repo)
        out = self.mx("cache", "rm", "acme/m").stdout
        self.check_report(out, 2, before, (0, 0))
        self.assertNotIn("acme/m", self.listed())

    def test_rm_of_the_last_revision_removes_the_repo(self):
        repo = self.cache / "models--acme--solo"
        before = blobs_on_disk(repo)
        out = self.mx("cache", "rm", "acme/solo@main").stdout
        self.check_report(out, 1, before, (0, 0))
        self.assertNotIn("acme/solo", self.listed())
        self.assertFalse(repo.exists())
        self.assertIn("acme/m", self.listed())

    def test_prune_reports_what_it_freed_and_drops_empty_repos(self):
        # Unreferenced: v1 of acme/m (its ref removed) and all of acme/solo.
        (self.cache / "models--acme--m" / "refs" / "v1").unlink()
        (self.cache / "models--acme--solo" / "refs" / "main").unlink()
        m, solo = self.cache / "models--acme--m", self.cache / "models--acme--solo"
        before = [blobs_on_disk(m), blobs_on_disk(solo)]
        out = self.mx("cache", "prune", "--grace", "0").stdout
        after = [blobs_on_disk(m), (0, 0)]
        total_before = (before[0][0] + before[1][0], before[0][1] + before[1][1])
        total_after = (after[0][0], after[0][1])
        self.check_report(out, 2, total_before, total_after)
        listed = self.listed()
        self.assertNotIn("acme/solo", listed)
        self.assertFalse(solo.exists())
        self.assertEqual(len(listed["acme/m"]["revisions"]), 1)


# --------------------------------------------------------------------------------------
# Item 8: completion
# --------------------------------------------------------------------------------------


class CompletionTest(Base):
    def complete_bash(self, *words):
        """COMPREPLY of the generated function for `mx WORDS...` (the last word is the one
        being completed)."""
        script = self.tmp / "mx.bash"
        script.write_text(run_mx(["completion", "bash"]).stdout)
        words_q = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("mx", *words))
        prog = (f"source {script}; COMP_WORDS=({words_q}); COMP_CWORD={len(words)}; "
                "_mx_completion; printf '%s\\n' \"${COMPREPLY[@]}\"")
        r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30,
                           cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        return set(r.stdout.split())

    def test_bash_completes_subcommands_options_and_values(self):
        self.assertTrue({"download", "cache", "stream", "doctor", "completion", "serve"}
                        <= self.complete_bash(""))
        self.assertEqual(self.complete_bash("do"), {"download", "doctor"})
        self.assertEqual(self.complete_bash("cache", ""), {"ls", "path", "verify", "rm", "prune"})
        self.assertEqual(self.complete_bash("download", "acme/m", "--re"),
                         {"--revision", "--repo-type"})
        self.assertEqual(self.complete_bash("cache", "ls", "--repo-type", ""),
                         {"model", "dataset", "space"})
        self.assertEqual(self.complete_bash("completion", ""), {"bash", "zsh"})
        self.assertIn("--mirror-port", self.complete_bash("serve", "--mir"))
        self.assertIn("--verbose", self.complete_bash("stream", "--ve"))
        (self.tmp / "models-dir").mkdir()
        self.assertEqual(self.complete_bash("download", "acme/m", "--cache-dir", "models-"),
                         {"models-dir"})

    def test_bash_script_follows_the_command_tree(self):
        """Every command in `mx --help` and every option in its --help is offered."""
        help_text = run_mx(["--help"]).stdout
        commands = re.findall(r"^  ([a-z][a-z0-9]*) {2,}", help_text.split("Subcommands:")[1], re.M)
        self.assertGreaterEqual(len(commands), 6)
        self.assertEqual(self.complete_bash(""), set(commands))
        for cmd in commands:
            if cmd in ("cache", "serve"):
                continue
            opts = set(re.findall(r"(--[a-z][a-z0-9-]*)", run_mx([cmd, "--help"]).stdout))
            self.assertTrue(opts, cmd)
            self.assertTrue(opts <= self.complete_bash(cmd, "--"), (cmd, opts))

    def test_zsh_script(self):
        text = run_mx(["completion", "zsh"]).stdout
        self.assertTrue(text.startswith("#compdef mx\n"))
        self.assertIn("compdef _mx mx", text)
        zsh = shutil.which("zsh")
        if not zsh:
            self.skipTest("zsh is not installed: only the script's text was checked")
        script = self.tmp / "_mx"
        script.write_text(text)
        r = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        # Run the function with compadd mocked: words/CURRENT are plain arrays here.
        prog = (f"compadd() {{ shift; print -l -- \"$@\"; }}; _files() {{ :; }}; "
                f"source {script}; words=(mx cache ''); CURRENT=3; _mx")
        r = subprocess.run([zsh, "-f", "-c", prog], capture_output=True, text=True)
        self.assertEqual(set(r.stdout.split()), {"ls", "path", "verify", "rm", "prune"}, r.stderr)

    def test_bad_shell_is_a_usage_error(self):
        r = run_mx(["completion", "fish"])
        self.assertEqual(r.returncode, 2)


# --------------------------------------------------------------------------------------
# Item 8: doctor
# --------------------------------------------------------------------------------------


class DoctorTest(Base):
    def setUp(self):
        super().setUp()
        repo = make_repo(self.tmp / "src", {"config.json": "{}"})
        self.hub = HubStub(self.tmp, {"acme/gated": {"revisions": {"main": repo},
                                                     "token": TOKEN}}).start()
        self.addCleanup(self.hub.stop)
        self.cache = self.tmp / "cache"
        self.env = {"HF_ENDPOINT": self.hub.endpoint, "HF_HUB_CACHE": self.cache}

    def doctor(self, *args, env=None, code=0):
        e = dict(self.env)
        e.update(env or {})
        r = run_mx(["doctor", *args], e)
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        lines = {}
        for line in r.stdout.splitlines():
            m = re.match(r"^(ok  |warn|FAIL|--  )  ([a-z ]+): +(.*)$", line)
            self.assertIsNotNone(m, line)
            lines[m.group(2)] = (m.group(1).strip(), m.group(3))
        self.assertEqual(set(lines), {"endpoint", "token", "cache", "flock", "free space",
                                      "server"}, r.stdout)
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        self.assertNotIn(TOKEN[-8:], r.stdout + r.stderr)
        return lines

    def test_all_good_with_a_server(self):
        with MxServer(self.tmp, self.tmp / "server-cache",
                      env={"HF_ENDPOINT": self.hub.endpoint}) as server:
            lines = self.doctor(env={"HF_TOKEN": TOKEN, "MODEL_EXPRESS_URL":
                                     f"http://{server.address}"})
        self.assertEqual(lines["endpoint"][0], "ok")
        self.assertIn(f"{self.hub.endpoint} reachable (HTTP", lines["endpoint"][1])
        self.assertEqual(lines["token"], ("ok", "present, accepted as stub-user"))
        self.assertEqual(lines["cache"][0], "ok")
        self.assertIn("does not exist yet", lines["cache"][1])
        self.assertFalse(self.cache.exists())  # the doctor only looks
        self.assertEqual(lines["flock"], ("ok", "works: several mx processes may share this "
                                                "cache"))
        free = os.statvfs(self.tmp)
        self.assertEqual(lines["free space"][0], "ok")
        self.assertIn(format_bytes(free.f_bavail * free.f_frsize).split()[1],
                      lines["free space"][1])
        self.assertEqual(lines["server"][0], "ok")
        self.assertRegex(lines["server"][1],
                         r"\(MODEL_EXPRESS_URL\): mx-server \d+\.\d+\.\d+, status ok, up \d+s")
        self.assertEqual(list(self.tmp.glob(".mx-doctor-*")), [])

    def test_bad_token_fails_and_is_never_printed(self):
        lines = self.doctor("--token", TOKEN[:-4] + "XXXX", code=1)
        self.assertEqual(lines["token"][0], "FAIL")
        self.assertIn("present, refused by the hub (HTTP 401)", lines["token"][1])
        lines = self.doctor(env={"HF_TOKEN": TOKEN})
        self.assertEqual(lines["token"][0], "ok")

    def test_no_token_is_fine(self):
        lines = self.doctor()
        self.assertEqual(lines["token"][0], "ok")
        self.assertIn("absent", lines["token"][1])
        self.assertEqual(lines["server"][0], "--")
        self.assertIn("not configured", lines["server"][1])

    def test_hub_unreachable_fails(self):
        lines = self.doctor("--timeout", "2",
                            env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                                 "HF_TOKEN": TOKEN}, code=1)
        self.assertEqual(lines["endpoint"][0], "FAIL")
        self.assertIn("unreachable", lines["endpoint"][1])
        self.assertEqual(lines["token"][0], "--")

    def test_hub_5xx_fails(self):
        class Down(Handler):
            def do_GET(self):
                self.record()
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

        with Recorder("127.0.0.1", Down) as srv:
            lines = self.doctor("--timeout", "2", env={"HF_ENDPOINT": srv.origin}, code=1)
        self.assertEqual(lines["endpoint"][0], "FAIL")
        self.assertIn("answers with an error (HTTP 503", lines["endpoint"][1])

    def test_cache_that_cannot_be_created_fails(self):
        (self.tmp / "afile").write_text("x")
        lines = self.doctor("--cache-dir", self.tmp / "afile" / "cache", code=1)
        self.assertEqual(lines["cache"][0], "FAIL")
        self.assertIn("is not a directory", lines["cache"][1])

    def test_flock_that_does_not_work_is_a_warning(self):
        self.cache.mkdir()
        lines = self.doctor(env={"MX_TEST_DISABLE_FLOCK": "1"})
        self.assertEqual(lines["cache"], ("ok", f"{self.cache} is writable"))
        self.assertEqual(lines["flock"][0], "warn")
        self.assertIn("does not work on this filesystem", lines["flock"][1])
        self.assertIn("use one writer per cache", lines["flock"][1])

    def test_too_little_free_space_fails(self):
        lines = self.doctor("--min-free", "100000TiB", code=1)
        self.assertEqual(lines["free space"][0], "FAIL")
        self.assertIn("below --min-free", lines["free space"][1])

    def test_server_that_does_not_answer_fails(self):
        lines = self.doctor("--endpoint", f"127.0.0.1:{free_port()}", "--timeout", "2", code=1)
        self.assertEqual(lines["server"][0], "FAIL")
        self.assertIn("did not answer", lines["server"][1])


if __name__ == "__main__":
    unittest.main()
