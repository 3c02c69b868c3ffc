"""Client-side edges against tiny loopback HTTP servers written here:

- tree pagination never sends the hub token to another origin: a Link header naming
  another host or port makes `mx download` fail clearly, and that server sees nothing;
- the HTTP storage backend probes an object's size with a 1-byte ranged GET (presigned
  S3/GCS URLs are signed for GET and answer HEAD with 403), and refuses a server that
  ignores Range without pulling the whole object."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import tempfile
import threading
import unittest
from pathlib import Path

from harness import mx_binary, run
from storage_peers import write_safetensors

COMMIT = "a" * 40
TOKEN = "hf_edge_secret_token"


class Recorder(http.server.ThreadingHTTPServer):
    """A loopback server whose handler is given; records every request it sees."""

    daemon_threads = True

    def __init__(self, host: str, handler):
        super().__init__((host, 0), handler)
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers)))

    def send_json(self, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def hub_handler(next_link: str):
    """A hub whose first tree page names `next_link` as the next page."""

    class Hub(Handler):
        def do_GET(self):
            self.record()
            if self.path.startswith("/api/models/org/m/revision/"):
                return self.send_json({"id": "org/m", "sha": COMMIT})
            if self.path.startswith(f"/api/models/org/m/tree/{COMMIT}"):
                if "cursor=" in self.path:
                    return self.send_json([])
                return self.send_json([], {"Link": f'<{next_link}>; rel="next"'})
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Hub


class Elsewhere(Handler):
    def do_GET(self):
        self.record()
        self.send_json([])


class TreePaginationTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-edges-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def download(self, hub):
        return run([mx_binary(), "download", "org/m", "--cache-dir", self.tmp / "cache", "--quiet"],
                   env={"HF_ENDPOINT": hub.origin, "HF_TOKEN": TOKEN}, timeout=120)

    def check_refused(self, other_host: str):
        with Recorder(other_host, Elsewhere) as other:
            link = f"{other.origin}/api/models/org/m/tree/{COMMIT}?cursor=2"
            with Recorder("127.0.0.1", hub_handler(link)) as hub:
                r = self.download(hub)
                self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("origin", r.stderr)
                self.assertNotIn(TOKEN, r.stderr)
                self.assertEqual(other.seen, [], "a next-page link on another origin was followed")
                # The hub's own pages did carry the token: the refusal is about the origin.
                tree = [h for m, p, h in hub.seen if "/tree/" in p]
                self.assertEqual(len(tree), 1)
                self.assertEqual(tree[0].get("Authorization"), f"Bearer {TOKEN}")

    def test_next_page_on_another_host_is_refused(self):
        self.check_refused("127.0.0.2")

    def test_next_page_on_another_port_is_refused(self):
        self.check_refused("127.0.0.1")

    def test_next_page_on_the_same_origin_is_followed_with_the_token(self):
        # The control: the same pagination on the hub's own origin works.
        with Recorder("127.0.0.1", hub_handler(f"/api/models/org/m/tree/{COMMIT}?cursor=2")) as hub:
            r = self.download(hub)
            tree = [(p, h) for m, p, h in hub.seen if "/tree/" in p]
            self.assertEqual(len(tree), 2, (r.stderr, tree))
            self.assertIn("cursor=2", tree[1][0])
            self.assertEqual(tree[1][1].get("Authorization"), f"Bearer {TOKEN}")


def object_handler(data: bytes, head_status: int, honour_range: bool):
    """Serves one object: HEAD answers `head_status` (403 like a presigned GET URL)."""

    class Obj(Handler):
        def do_HEAD(self):
            self.record()
            self.send_response(head_status)
            self.send_header("Content-Length", "0" if head_status != 200 else str(len(data)))
            self.end_headers()

        def do_GET(self):
            self.record()
            rng = self.headers.get("Range")
            if rng and honour_range:
                first, last = rng.removeprefix("bytes=").split("-")
                first, last = int(first), min(int(last), len(data) - 1)
                body = data[first:last + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the client hung up: what a client that stops reading does

    return Obj


class HttpStorageProbeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-edges-"))
        path = cls.tmp / "model.safetensors"
        tensors = write_safetensors(path, {"w": ("F32", (512, 600)), "b": ("BF16", (77,))}, seed=3)
        cls.data = path.read_bytes()
        cls.expected = {f"model.safetensors/{k}": hashlib.sha256(v).hexdigest()
                        for k, v in tensors.items()}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def stream(self, url):
        return run([mx_binary(), "stream", "--json", "--tensor-digests", url], timeout=120)

    def test_presigned_url_that_refuses_head(self):
        with Recorder("127.0.0.1", object_handler(self.data, 403, True)) as srv:
            r = self.stream(f"{srv.origin}/bucket/model.safetensors?X-Amz-Signature=abc&X-Amz-Expires=60")
            self.assertEqual(r.returncode, 0, r.stderr)
            report = json.loads(r.stdout.strip().splitlines()[-1])
            self.assertEqual(report["tensor_sha256"], self.expected)
            self.assertEqual([m for m, _, _ in srv.seen if m == "HEAD"], [])
            probe = srv.seen[0]
            self.assertEqual((probe[0], probe[2].get("Range")), ("GET", "bytes=0-0"))
            self.assertNotIn("abc", r.stderr)  # the signature is never echoed

    def test_server_ignoring_range_is_refused_clearly(self):
        big = self.data * 40  # several MB: the probe must not pull all of it
        with Recorder("127.0.0.1", object_handler(big, 200, False)) as srv:
            r = self.stream(f"{srv.origin}/model.safetensors")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("ignores Range", r.stderr)


if __name__ == "__main__":
    unittest.main()
