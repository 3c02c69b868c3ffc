"""Self-test of the test peers: hub_stub.py (via harness.HubStub) and
harness.Nginx. If these fail, mx's integration tests cannot be trusted.

Run: cd tests/integration && python3 -m unittest -v test_stub_selftest
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import harness
from harness import MIB

REPO = "org/model"
TOKEN = "hf_secret_token"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"

MAIN_FILES = {
    "config.json": '{"model_type": "test"}\n',
    "README.md": "# test model\n",
    "naïve name.txt": "needs URL quoting\n",
    "data.txt": 300_000,  # regular file (below lfs_min_size): served by the hub
    "big.txt": MIB + MIB // 2,  # LFS by size
    "tiny.bin": 100,  # LFS by suffix
    SHARD1: 2 * MIB + 3,
    SHARD2: MIB + 7,
    "tokenizer/tokenizer.json": 50_000,
    "tokenizer/deep/vocab.txt": 1000,
    **{f"extra/f{i}.txt": 10 + i for i in range(5)},
}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # surface the 302 as an HTTPError


NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def fetch(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 10):
    """One request on a fresh connection: (status, headers, body, error).

    error is the exception raised while reading the body (dropped or short
    responses), with body holding what arrived before it."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""),
                     headers=headers or {})
        resp = conn.getresponse()
        # Read in pieces, as a streaming client would, so bytes that arrived
        # before a reset are kept.
        chunks, err = [], None
        try:
            while chunk := resp.read1(65536):
                chunks.append(chunk)
        except http.client.IncompleteRead as e:
            chunks.append(e.partial)
            err = e
        except OSError as e:
            err = e
        body = b"".join(chunks)
        expected = resp.headers.get("Content-Length")
        if err is None and method != "HEAD" and expected and len(body) < int(expected):
            err = http.client.IncompleteRead(body, int(expected) - len(body))
        return resp.status, resp.headers, body, err
    finally:
        conn.close()


def api_json(url: str, headers: dict | None = None):
    with NO_REDIRECT.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return r.status, r.headers, json.loads(r.read())


class StubSelfTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="stub-selftest-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.main_dir = harness.make_repo(cls.tmp / "main", MAIN_FILES, seed=1)
        cls.v1_dir = harness.make_repo(cls.tmp / "v1", {"config.json": "{}", SHARD1: MIB}, seed=2)
        cls.gated_dir = harness.make_repo(cls.tmp / "gated", {"config.json": "{}"}, seed=3)
        cls.ds_dir = harness.make_repo(cls.tmp / "ds", {"data/train.csv": 5000}, seed=4)
        repos = {
            f"model/{REPO}": {"revisions": {"main": cls.main_dir, "v1.0": cls.v1_dir,
                                            "refs/pr/1": cls.v1_dir},
                              "renamed_from": ["old-org/old-name"]},
            "model/org/gated": {"revisions": {"main": cls.gated_dir}, "token": TOKEN},
            "dataset/org/ds": {"revisions": {"main": cls.ds_dir}},
        }
        cls.hub = harness.HubStub(cls.tmp, repos, page_size=4).start()
        cls.addClassCleanup(cls.hub.stop)

        # Second hub whose LFS redirects go to nginx over its --lfs-store.
        cls.store = cls.tmp / "lfs-store"
        cls.store.mkdir()
        cls.nginx = harness.Nginx(cls.tmp, cls.store, limit_rate="1m").start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.cdn_hub = harness.HubStub(cls.tmp, {REPO: {"revisions": {"main": cls.main_dir}}},
                                      lfs_redirect_base=cls.nginx.base_url,
                                      lfs_store=cls.store).start()
        cls.addClassCleanup(cls.cdn_hub.stop)

    def setUp(self):
        self.hub.reset()

    # -- helpers --------------------------------------------------------------

    def url(self, path: str, rev: str = "main", repo: str = REPO) -> str:
        return (f"{self.hub.endpoint}/{repo}/resolve/{urllib.parse.quote(rev, safe='')}/"
                f"{urllib.parse.quote(path)}")

    def content(self, path: str) -> bytes:
        return (self.main_dir / path).read_bytes()

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.content(path)).hexdigest()

    def lfs_url(self, path: str) -> str:
        status, headers, _, _ = fetch(self.url(path), "HEAD")
        self.assertEqual(status, 302)
        return headers["Location"]

    def assertHttpError(self, url, status, code, headers=None):
        with self.assertRaises(urllib.error.HTTPError) as cm:
            api_json(url, headers)
        self.assertEqual(cm.exception.code, status)
        self.assertEqual(cm.exception.headers.get("X-Error-Code"), code)
        self.assertIn("error", json.loads(cm.exception.read()))

    # -- metadata -------------------------------------------------------------

    def test_revision_api(self):
        api = f"{self.hub.endpoint}/api/models/{REPO}/revision"
        status, _, info = api_json(f"{api}/main")
        self.assertEqual(status, 200)
        self.assertRegex(info["sha"], r"^[0-9a-f]{40}$")
        self.assertEqual(info["id"], REPO)
        self.assertEqual(sorted(s["rfilename"] for s in info["siblings"]), sorted(MAIN_FILES))
        self.assertEqual(self.hub.commit(REPO), info["sha"])

        # By commit sha, by tag, by an encoded PR ref; all distinct commits.
        self.assertEqual(api_json(f"{api}/{info['sha']}")[2]["sha"], info["sha"])
        v1 = api_json(f"{api}/v1.0")[2]["sha"]
        pr = api_json(f"{api}/refs%2Fpr%2F1")[2]["sha"]
        self.assertEqual(len({info["sha"], v1, pr}), 3)
        self.assertEqual(self.hub.commit(REPO, "refs/pr/1"), pr)
        # Deterministic across restarts: same content and name, same commit.
        self.assertEqual(self.cdn_hub.commit(REPO), info["sha"])

        self.assertHttpError(f"{api}/refs/pr/1", 404, "RevisionNotFound")  # unencoded
        self.assertHttpError(f"{api}/nope", 404, "RevisionNotFound")
        self.assertHttpError(f"{self.hub.endpoint}/api/models/org/missing/revision/main",
                             404, "RepoNotFound")
        gated = f"{self.hub.endpoint}/api/models/org/gated/revision/main"
        self.assertHttpError(gated, 401, "GatedRepo")
        self.assertHttpError(gated, 403, "GatedRepo", {"Authorization": "Bearer wrong"})
        self.assertEqual(api_json(gated, {"Authorization": f"Bearer {TOKEN}"})[0], 200)
        self.assertRegex(self.hub.commit("org/gated"), r"^[0-9a-f]{40}$")

        ds = api_json(f"{self.hub.endpoint}/api/datasets/org/ds/revision/main")[2]
        self.assertEqual([s["rfilename"] for s in ds["siblings"]], ["data/train.csv"])
        self.assertEqual(self.hub.commit("dataset/org/ds"), ds["sha"])

    def test_tree_pagination(self):
        url = f"{self.hub.endpoint}/api/models/{REPO}/tree/main?recursive=true"
        items, pages = [], 0
        while url:
            status, headers, page = api_json(url)
            self.assertEqual(status, 200)
            self.assertLessEqual(len(page), 4)
            items += page
            pages += 1
            link = headers.get("Link")
            url = None
            if link:
                self.assertTrue(link.endswith('>; rel="next"'), link)
                url = link[1:link.index(">")]
                self.assertTrue(url.startswith(self.hub.endpoint + "/api/"), url)
        dirs = {"tokenizer", "tokenizer/deep", "extra"}
        self.assertEqual(len(items), len(MAIN_FILES) + len(dirs))
        self.assertEqual(pages, -(-len(items) // 4))
        by_path = {i["path"]: i for i in items}
        self.assertEqual(len(by_path), len(items), "duplicate items across pages")
        self.assertEqual({p for p, i in by_path.items() if i["type"] == "directory"}, dirs)
        for path in MAIN_FILES:
            item = by_path[path]
            self.assertEqual(item["size"], len(self.content(path)))
            self.assertRegex(item["oid"], r"^[0-9a-f]{40}$")
            if path in ("big.txt", "tiny.bin", SHARD1, SHARD2):
                self.assertEqual(item["lfs"]["oid"], self.sha256(path))
                self.assertEqual(item["lfs"]["size"], item["size"])
                self.assertGreater(item["lfs"]["pointerSize"], 120)
            else:
                self.assertNotIn("lfs", item)
                self.assertEqual(item["oid"], harness.git_blob_sha1_file(self.main_dir / path))

        # recursive=1 is accepted too; without recursion only the top level.
        _, _, page = api_json(f"{self.hub.endpoint}/api/models/{REPO}/tree/main?recursive=1")
        self.assertEqual(len(page), 4)
        top, url = [], f"{self.hub.endpoint}/api/models/{REPO}/tree/main"
        while url:
            _, headers, page = api_json(url)
            top += page
            url = headers.get("Link", "")[1:headers.get("Link", "").find(">")] or None
        self.assertFalse(any("/" in i["path"] for i in top))
        self.assertIn("tokenizer", {i["path"] for i in top})

    def test_head_regular_file(self):
        status, headers, body, _ = fetch(self.url("data.txt"), "HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")
        self.assertEqual(headers["ETag"],
                         f'"{harness.git_blob_sha1_file(self.main_dir / "data.txt")}"')
        self.assertEqual(headers["Content-Length"], "300000")
        self.assertEqual(headers["X-Repo-Commit"], self.hub.commit(REPO))
        self.assertEqual(headers["Accept-Ranges"], "bytes")
        self.assertIsNone(headers.get("X-Linked-Etag"))

        status, headers, body, _ = fetch(self.url("config.json"))
        self.assertEqual((status, body), (200, self.content("config.json")))

        # Subdirectory path, another revision, a dataset, a missing file.
        self.assertEqual(fetch(self.url("tokenizer/deep/vocab.txt"))[2],
                         self.content("tokenizer/deep/vocab.txt"))
        status, headers, body, _ = fetch(self.url("config.json", rev="refs/pr/1"))
        self.assertEqual((status, body), (200, b"{}"))
        self.assertEqual(headers["X-Repo-Commit"], self.hub.commit(REPO, "refs/pr/1"))
        ds = fetch(f"{self.hub.endpoint}/datasets/org/ds/resolve/main/data/train.csv")
        self.assertEqual(ds[2], (self.ds_dir / "data/train.csv").read_bytes())
        status, headers, _, _ = fetch(self.url("missing.txt"), "HEAD")
        self.assertEqual((status, headers["X-Error-Code"]), (404, "EntryNotFound"))
        self.assertEqual(headers["X-Repo-Commit"], self.hub.commit(REPO))
        status, headers, _, _ = fetch(self.url("config.json", repo="org/gated"), "HEAD")
        self.assertEqual((status, headers["X-Error-Code"]), (401, "GatedRepo"))
        status, _, _, _ = fetch(self.url("config.json", repo="org/gated"), "HEAD",
                                {"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(status, 200)

    def test_renamed_repo_and_quoting(self):
        status, headers, _, _ = fetch(
            f"{self.hub.endpoint}/old-org/old-name/resolve/main/config.json", "HEAD")
        self.assertEqual(status, 307)
        self.assertEqual(headers["Location"], f"/{REPO}/resolve/main/config.json")
        status, headers, _, _ = fetch(
            f"{self.hub.endpoint}/api/models/old-org/old-name/tree/main?recursive=true")
        self.assertEqual(status, 307)
        self.assertEqual(headers["Location"], f"/api/models/{REPO}/tree/main?recursive=true")

        status, _, body, _ = fetch(self.url("naïve name.txt"))
        self.assertEqual((status, body), (200, self.content("naïve name.txt")))
        status, headers, _, _ = fetch(self.url("naïve missing.txt"), "HEAD")
        self.assertEqual((status, headers["X-Error-Code"]), (404, "EntryNotFound"))

    def test_lfs_redirect(self):
        with self.assertRaises(urllib.error.HTTPError) as cm:
            NO_REDIRECT.open(urllib.request.Request(self.url(SHARD1), method="HEAD"), timeout=10)
        e = cm.exception
        sha = self.sha256(SHARD1)
        self.assertEqual(e.code, 302)
        self.assertEqual(e.headers["X-Linked-Etag"], f'"{sha}"')
        self.assertEqual(e.headers["X-Linked-Size"], str(2 * MIB + 3))
        self.assertEqual(e.headers["X-Repo-Commit"], self.hub.commit(REPO))
        loc = e.headers["Location"]
        self.assertTrue(loc.startswith(f"http://127.0.0.2:{self.hub.lfs_port}/lfs/{sha}"), loc)

        status, headers, body, _ = fetch(loc)
        self.assertEqual(status, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), sha)
        self.assertEqual(fetch(loc, "HEAD")[1]["Content-Length"], str(2 * MIB + 3))
        self.assertEqual(self.hub.stats()["lfs_auth_headers_seen"], 0)
        fetch(loc, "HEAD", {"Authorization": "Bearer leaked"})
        stats = self.hub.stats()
        self.assertEqual(stats["lfs_auth_headers_seen"], 1)
        self.assertEqual(stats["bytes_by_path"][sha], 2 * MIB + 3)
        self.assertEqual(stats["bytes_by_file"][SHARD1], 2 * MIB + 3)

    def test_range(self):
        data = self.content("data.txt")
        for rng, (a, b) in {"bytes=10-19": (10, 19), "bytes=299990-": (299990, 299999),
                            "bytes=-5": (299995, 299999),
                            "bytes=299998-400000": (299998, 299999)}.items():
            status, headers, body, _ = fetch(self.url("data.txt"), headers={"Range": rng})
            self.assertEqual(status, 206, rng)
            self.assertEqual(headers["Content-Range"], f"bytes {a}-{b}/300000")
            self.assertEqual(body, data[a:b + 1])
        for bad in ("bytes=300000-", "bytes=20-10", "bytes=abc"):
            status, headers, _, _ = fetch(self.url("data.txt"), headers={"Range": bad})
            self.assertEqual(status, 416, bad)
            self.assertEqual(headers["Content-Range"], "bytes */300000")

        loc = self.lfs_url(SHARD2)
        status, headers, body, _ = fetch(loc, headers={"Range": f"bytes={MIB}-{MIB + 6}"})
        self.assertEqual(status, 206)
        self.assertEqual(headers["Content-Range"], f"bytes {MIB}-{MIB + 6}/{MIB + 7}")
        self.assertEqual(body, self.content(SHARD2)[MIB:])

    def test_keepalive_and_parallel_ranges(self):
        # Many requests on one connection (HTTP/1.1 keep-alive) ...
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=10)
        for _ in range(5):
            conn.request("GET", f"/{REPO}/resolve/main/config.json")
            r = conn.getresponse()
            self.assertEqual(r.read(), self.content("config.json"))
        conn.close()
        # ... and 16 parallel ranged downloads reassembling one LFS file.
        loc, data = self.lfs_url(SHARD1), self.content(SHARD1)
        size, n = len(data), 16
        parts, errors = [None] * n, []

        def worker(i):
            a, b = i * size // n, (i + 1) * size // n - 1
            try:
                st, h, body, err = fetch(loc, headers={"Range": f"bytes={a}-{b}"})
                assert st == 206 and err is None and h["Content-Range"] == f"bytes {a}-{b}/{size}"
                parts[i] = body
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(b"".join(parts), data)
        self.assertEqual(self.hub.stats()["bytes_by_file"][SHARD1], size)

    # -- faults ---------------------------------------------------------------

    def test_fault_status_codes(self):
        self.hub.set_faults([{"kind": "429", "path": "data.txt", "retry_after": 2},
                             {"kind": "503", "path": SHARD2}])
        status, headers, _, _ = fetch(self.url("data.txt"))
        self.assertEqual((status, headers["Retry-After"]), (429, "2"))
        self.assertEqual(fetch(self.url("data.txt"))[0], 200)  # count defaults to 1
        loc = self.lfs_url(SHARD2)  # a HEAD on the hub must not consume it
        self.assertEqual(fetch(loc)[0], 503)
        self.assertEqual(fetch(loc)[2], self.content(SHARD2))
        self.assertEqual(self.hub.stats()["faults_triggered"], {"429": 1, "503": 1})

        # count: N times, then clean; -1: forever; reset clears.
        self.hub.set_faults([{"kind": "503", "path": "*.txt", "count": 2}])
        self.assertEqual([fetch(self.url("data.txt"))[0] for _ in range(3)], [503, 503, 200])
        self.hub.set_faults([{"kind": "500", "path": "data.txt", "count": -1}])
        self.assertEqual([fetch(self.url("data.txt"))[0] for _ in range(3)], [500] * 3)
        self.assertEqual(self.hub.faults()[0]["triggered"], 3)
        self.hub.reset()
        self.assertEqual(fetch(self.url("data.txt"))[0], 200)

        # Other scopes: resolve (HEADs and LFS 302s) and the JSON API.
        self.hub.set_faults([{"kind": "429", "path": SHARD1, "on": "resolve"},
                             {"kind": "503", "path": "*/tree/*", "on": "api"}])
        self.assertEqual(fetch(self.url(SHARD1), "HEAD")[0], 429)
        self.assertEqual(fetch(self.url(SHARD1), "HEAD")[0], 302)
        tree = f"{self.hub.endpoint}/api/models/{REPO}/tree/main?recursive=true"
        self.assertEqual(fetch(tree)[0], 503)
        self.assertEqual(fetch(tree)[0], 200)

    def test_fault_drop_and_short_body(self):
        data = self.content("data.txt")
        for kind in ("drop", "short_body"):
            self.hub.reset()
            self.hub.set_faults([{"kind": kind, "path": "data.txt", "after_bytes": 1000}])
            status, headers, body, err = fetch(self.url("data.txt"))
            self.assertEqual((status, headers["Content-Length"]), (200, "300000"), kind)
            # drop resets the connection (RST); short_body closes it cleanly.
            self.assertIsInstance(err, ConnectionResetError if kind == "drop"
                                  else http.client.IncompleteRead, kind)
            self.assertEqual(body, data[:1000], kind)
            self.assertEqual(self.hub.stats()["bytes_by_path"]["data.txt"], 1000)
            self.assertEqual(fetch(self.url("data.txt"))[2], data)

        # Default after_bytes is half of the body; LFS files are targeted by
        # their repo path on the LFS host.
        self.hub.reset()
        loc = self.lfs_url(SHARD1)
        self.hub.set_faults([{"kind": "short_body", "path": SHARD1}])
        status, _, body, err = fetch(loc, headers={"Range": "bytes=0-1999"})
        self.assertEqual(status, 206)
        self.assertIsInstance(err, http.client.IncompleteRead)
        self.assertEqual(body, self.content(SHARD1)[:1000])
        sha = self.sha256(SHARD1)
        self.assertEqual(self.hub.stats()["bytes_by_path"][sha], 1000)

        self.hub.set_faults([{"kind": "stall", "path": sha, "after_bytes": 10, "seconds": 0.3}])
        t0 = time.monotonic()
        _, _, body, err = fetch(loc)
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        self.assertEqual((len(body), type(err)), (10, http.client.IncompleteRead))

    def test_fault_range_kinds(self):
        data = self.content("data.txt")
        self.hub.set_faults([{"kind": "200_for_range", "path": "data.txt"}])
        # A request without Range neither triggers nor consumes it.
        self.assertEqual(fetch(self.url("data.txt"))[0], 200)
        status, headers, body, _ = fetch(self.url("data.txt"), headers={"Range": "bytes=100-199"})
        self.assertEqual((status, body), (200, data))
        self.assertIsNone(headers.get("Content-Range"))
        status, _, body, _ = fetch(self.url("data.txt"), headers={"Range": "bytes=100-199"})
        self.assertEqual((status, body), (206, data[100:200]))

        loc = self.lfs_url(SHARD1)
        self.hub.set_faults([{"kind": "wrong_content_range", "path": "model-00001-*"}])
        status, headers, body, _ = fetch(loc, headers={"Range": "bytes=100-199"})
        self.assertEqual(status, 206)
        self.assertNotEqual(headers["Content-Range"], f"bytes 100-199/{2 * MIB + 3}")
        self.assertEqual(len(body), 100)
        self.assertEqual(self.hub.stats()["faults_triggered"]["wrong_content_range"], 1)

    def test_fault_corrupt(self):
        for url, path in ((self.url("data.txt"), "data.txt"), (self.lfs_url(SHARD2), SHARD2)):
            self.hub.set_faults([{"kind": "corrupt", "path": path}])
            status, headers, body, err = fetch(url)
            self.assertEqual((status, err), (200, None))
            self.assertEqual(int(headers["Content-Length"]), len(self.content(path)))
            self.assertEqual(len(body), len(self.content(path)))
            self.assertNotEqual(body, self.content(path))
            self.assertEqual(fetch(url)[2], self.content(path))

    def test_bad_fault_rejected(self):
        with self.assertRaises(urllib.error.HTTPError) as cm:
            self.hub.set_faults([{"kind": "explode"}])
        self.assertEqual(cm.exception.code, 400)

    # -- nginx as the CDN -----------------------------------------------------

    def test_nginx_cdn(self):
        sha = self.sha256(SHARD1)
        self.assertEqual(os.stat(self.store / sha).st_ino, os.stat(self.main_dir / SHARD1).st_ino)
        status, headers, _, _ = fetch(
            f"{self.cdn_hub.endpoint}/{REPO}/resolve/main/{SHARD1}", "HEAD")
        self.assertEqual(status, 302)
        self.assertEqual(headers["Location"], f"{self.nginx.base_url}/{sha}")

        # limit_rate 1m allows about 1 MiB in the first second, so 2 MiB + 3
        # bytes cannot arrive in under a second.
        t0 = time.monotonic()
        status, _, body, err = fetch(headers["Location"], timeout=20)
        elapsed = time.monotonic() - t0
        self.assertEqual((status, err), (200, None))
        self.assertEqual(hashlib.sha256(body).hexdigest(), sha)
        self.assertGreaterEqual(elapsed, 0.9)

        status, headers, body, _ = fetch(f"{self.nginx.base_url}/{self.sha256('tiny.bin')}",
                                         headers={"Range": "bytes=0-9"})
        self.assertEqual((status, body), (206, self.content("tiny.bin")[:10]))
        self.assertEqual(headers["Content-Range"], "bytes 0-9/100")
        # A leaked token is refused loudly.
        self.assertEqual(fetch(f"{self.nginx.base_url}/{self.sha256('tiny.bin')}",
                               headers={"Authorization": "Bearer x"})[0], 400)
        # nginx logs after answering: poll briefly.
        deadline = time.monotonic() + 5
        while not any(" 400 " in line and "auth=1" in line
                      for line in self.nginx.access_log_lines()):
            self.assertLess(time.monotonic(), deadline, self.nginx.access_log_lines())
            time.sleep(0.05)


if __name__ == "__main__":
    unittest.main()
