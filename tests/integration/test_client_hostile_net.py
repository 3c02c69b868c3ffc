"""A hostile hub or object store must not steal credentials, reach other services, exhaust
memory or keep mx busy forever (issue 14, items 2, 4, 5, 7, 8, 9, 15).

Each test runs `mx download` or `mx stream` against a small malicious loopback server of
its own and asserts the safe outcome: exit status 1 with a clear message, nothing (and no
credential) seen by the other host, bounded time and, where memory is the attack, a run
under RLIMIT_AS that ends cleanly instead of in bad_alloc."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import base_env, mx_binary
from test_client_edges import COMMIT, TOKEN, Handler, Recorder

SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
AS_LIMIT = 3 << 30  # the address-space cap of the memory cases


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_mx(args, env, timeout=120, limit=False):
    # ASan (make sanitize) reserves terabytes of shadow address space and cannot start under
    # an address-space cap: there the run must still end cleanly, the cap is for make test.
    if os.environ.get("ASAN_OPTIONS"):
        limit = False
    full = base_env()
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run([mx_binary(), *map(str, args)], env=full, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit_memory if limit else None)


class TcpSink:
    """A raw TCP listener that records whether anyone connected (any protocol)."""

    def __init__(self, host: str):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.sock.close()


def hub(revision=None, tree=None):
    """A hub whose revision and tree endpoints are the given handler methods."""

    class Hub(Handler):
        def do_GET(self):
            self.record()
            if self.path.startswith("/api/models/org/m/revision/"):
                if revision:
                    return revision(self)
                return self.send_json({"id": "org/m", "sha": COMMIT})
            if self.path.startswith(f"/api/models/org/m/tree/{COMMIT}") and tree:
                return tree(self)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Hub


def s3(handler_get):
    """A path-style S3 endpoint for bucket "b"; `handler_get(self)` answers every GET."""

    class S3(Handler):
        def do_GET(self):
            self.record()
            handler_get(self)

    return S3


def send_xml(h, body: str, status=200):
    data = body.encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/xml")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def listing(*objects) -> str:
    contents = "".join(f"<Contents><Key>{k}</Key><Size>{s}</Size></Contents>" for k, s in objects)
    return f"<ListBucketResult><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"


class HostileBase(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-hostile-net-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def download(self, srv, **kw):
        return run_mx(["download", "org/m", "--cache-dir", self.tmp / "cache", "--quiet"],
                      {"HF_ENDPOINT": srv.origin, "HF_TOKEN": TOKEN}, **kw)

    def stream_s3(self, srv, uri="s3://b/m", **kw):
        return run_mx(["stream", "--json", uri],
                      {"AWS_ENDPOINT_URL": srv.origin, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                       "AWS_SECRET_ACCESS_KEY": "secretsecret",
                       "AWS_SESSION_TOKEN": SESSION_TOKEN, "AWS_REGION": "us-east-1"}, **kw)

    def assert_clean_failure(self, r, *needles, code=1):
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        for secret in (TOKEN, SESSION_TOKEN, "secretsecret"):
            self.assertNotIn(secret, r.stderr)


class ProtocolTest(HostileBase):
    """Item 2: only http and https, on every handle, redirects included."""

    def test_redirect_to_ftp_is_not_followed(self):
        # libcurl 7.88 follows redirects to ftp:// by default.
        with TcpSink("127.0.0.2") as sink:
            def revision(h):
                h.send_response(302)
                h.send_header("Location", f"ftp://127.0.0.2:{sink.port}/x")
                h.send_header("Content-Length", "0")
                h.end_headers()
            with Recorder("127.0.0.1", hub(revision=revision)) as srv:
                r = self.download(srv)
            time.sleep(0.3)
            self.assertNotEqual(r.returncode, 0, r.stderr)
            self.assertEqual(sink.connections, 0, "mx followed a redirect to ftp://")


class MetadataBodyTest(HostileBase):
    """Item 4: an endless metadata body ends in a clean error, not bad_alloc."""

    def endless(self, h, prefix: bytes):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        chunk = b"a" * (1 << 20)
        try:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(prefix), prefix))
            for _ in range(8192):  # 8 GiB at most: far past the address-space cap
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass

    def test_endless_revision_body(self):
        rev = lambda h: self.endless(h, b'{"sha": "')
        with Recorder("127.0.0.1", hub(revision=rev)) as srv:
            start = time.monotonic()
            r = self.download(srv, limit=True)
            self.assert_clean_failure(r, "metadata limit")
            self.assertLess(time.monotonic() - start, 60)

    def test_endless_tree_body(self):
        tree = lambda h: self.endless(h, b'[{"type": "file", "path": "')
        with Recorder("127.0.0.1", hub(tree=tree)) as srv:
            r = self.download(srv, limit=True)
            self.assert_clean_failure(r, "metadata limit")

    def test_endless_s3_listing(self):
        def get(h):
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b"<Contents><Key>m/x</Key><Size>1</Size></Contents>" * 20000
            try:
                for _ in range(8192):
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
        with Recorder("127.0.0.1", s3(get)) as srv:
            r = self.stream_s3(srv, limit=True)
            self.assert_clean_failure(r, "metadata limit")


class NetworkSizeTest(HostileBase):
    """Item 5: sizes from the network are bounded before anything is allocated."""

    def index_listing(self, size):
        def get(h):
            if h.path.startswith("/b?"):
                return send_xml(h, listing(("m/model.safetensors.index.json", size),
                                           ("m/model.safetensors", 100)))
            send_xml(h, "<Error><Code>NoSuchKey</Code></Error>", 404)
        return get

    def test_listing_size_of_2_pow_64_minus_1(self):
        with Recorder("127.0.0.1", s3(self.index_listing(18446744073709551615))) as srv:
            r = self.stream_s3(srv, limit=True)
            self.assert_clean_failure(r, "bound")

    def test_index_too_big_to_read_into_memory(self):
        with Recorder("127.0.0.1", s3(self.index_listing(1 << 40))) as srv:
            r = self.stream_s3(srv, limit=True)
            self.assert_clean_failure(r, "64 MiB")
            self.assertEqual([p for _, p, _ in srv.seen if "index.json" in p], [])

    def test_content_range_total_of_2_pow_64_minus_1(self):
        class Obj(Handler):
            def do_GET(self):
                self.record()
                self.send_response(206)
                self.send_header("Content-Range", "bytes 0-0/18446744073709551615")
                self.send_header("Content-Length", "1")
                self.end_headers()
                self.wfile.write(b"x")
        with Recorder("127.0.0.1", Obj) as srv:
            r = run_mx(["stream", "--json", f"{srv.origin}/model.safetensors"], {}, limit=True)
            self.assert_clean_failure(r, "bound")


class PaginationBoundTest(HostileBase):
    """Item 8: a hub that pages forever (a new cursor every time) is cut off."""

    def test_endless_pagination_is_bounded(self):
        def tree(h):
            n = int(h.path.split("cursor=")[1]) if "cursor=" in h.path else 0
            h.send_json([], {"Link": f'</api/models/org/m/tree/{COMMIT}?cursor={n + 1}>; rel="next"'})
        with Recorder("127.0.0.1", hub(tree=tree)) as srv:
            start = time.monotonic()
            r = self.download(srv, timeout=300)
            self.assert_clean_failure(r, "10000 pages")
            self.assertLess(time.monotonic() - start, 240)
            self.assertLessEqual(len([p for _, p, _ in srv.seen if "/tree/" in p]), 10001)


class CrossOriginRedirectTest(HostileBase):
    """Item 9: a signed storage request never carries its session token to another host."""

    def check(self, redirect_listing: bool):
        with Recorder("127.0.0.2", Handler) as other:
            other.RequestHandlerClass = type("Other", (Handler,), {
                "do_GET": lambda h: (h.record(), h.send_json([]))})

            def get(h):
                if h.path.startswith("/b?") and not redirect_listing:
                    return send_xml(h, listing(("m/model.safetensors", 100)))
                h.send_response(302)
                h.send_header("Location", f"{other.origin}{h.path}")
                h.send_header("Content-Length", "0")
                h.end_headers()
            with Recorder("127.0.0.1", s3(get)) as srv:
                r = self.stream_s3(srv)
            self.assert_clean_failure(r, "302")
            leaked = [h for _, _, h in other.seen
                      if any(k.lower().startswith(("x-amz-", "authorization")) for k in h)]
            self.assertEqual(leaked, [], "a signed request followed a cross-host redirect")
            self.assertEqual(other.seen, [])

    def test_listing_redirect(self):
        self.check(redirect_listing=True)

    def test_object_range_redirect(self):
        self.check(redirect_listing=False)


class DotSegmentKeyTest(HostileBase):
    """Item 15: listed keys with dot segments, or outside the listed prefix, are refused."""

    def check(self, key):
        def get(h):
            if h.path.startswith("/b?"):
                return send_xml(h, listing((key, 100)))
            send_xml(h, "<Error><Code>NoSuchKey</Code></Error>", 404)
        with Recorder("127.0.0.1", s3(get)) as srv:
            r = self.stream_s3(srv)
            self.assert_clean_failure(r, "segment")
            self.assertEqual([p for _, p, _ in srv.seen if not p.startswith("/b?")], [])

    def test_dot_dot_key(self):
        self.check("m/../../etc/x.safetensors")

    def test_key_outside_prefix(self):
        self.check("other/x.safetensors")

    def test_user_key_with_dot_segments(self):
        with Recorder("127.0.0.1", s3(lambda h: send_xml(h, listing()))) as srv:
            r = self.stream_s3(srv, uri="s3://b/m/../etc")
            self.assert_clean_failure(r, "segment", code=2)  # a usage error
            self.assertEqual(srv.seen, [])


def dripping_hub(interval: float, size: int = 4096, piece: int = 1):
    """A hub whose one file answers every range correctly but sends `piece` bytes per
    `interval` seconds (the first at once)."""

    class Hub(Handler):
        def do_GET(self):
            self.record()
            if self.path.startswith("/api/models/org/m/revision/"):
                return self.send_json({"id": "org/m", "sha": COMMIT})
            if self.path.startswith(f"/api/models/org/m/tree/{COMMIT}"):
                return self.send_json([{"type": "file", "oid": "ab" * 20, "size": size,
                                        "path": "w.bin"}])
            if "/resolve/" not in self.path:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            spec = self.headers.get("Range", "bytes=0-").split("=", 1)[1]
            begin = int(spec.split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {begin}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - begin))
            self.end_headers()
            try:
                for _ in range(0, size - begin, piece):
                    self.wfile.write(b"x" * min(piece, size - begin))
                    self.wfile.flush()
                    time.sleep(interval)
            except OSError:
                pass  # mx hung up: what a drip should get
            self.close_connection = True

    return Hub


class SlowDripTest(HostileBase):
    """Item 7: a peer that drips bytes cannot keep a download alive: a transfer under the
    minimum rate counts as stalled, trivial progress does not reset the retry count, and
    each range has a deadline from its size and a floor rate."""

    def check(self, interval: float, env=None, *needles, **hub_kw):
        with Recorder("127.0.0.1", dripping_hub(interval, **hub_kw)) as srv:
            start = time.monotonic()
            r = run_mx(["download", "org/m", "--cache-dir", self.tmp / "cache", "--quiet"],
                       {"HF_ENDPOINT": srv.origin, "HF_TOKEN": TOKEN,
                        "MX_STALL_TIMEOUT_SECONDS": 2, **(env or {})}, timeout=150)
            elapsed = time.monotonic() - start
            self.assert_clean_failure(r, srv.origin.split("//")[1], *needles)
            self.assertLess(elapsed, 75, r.stderr)

    def test_two_bytes_per_second(self):
        # Never stalls by the old "no byte for 30 s" rule: ran for 35 minutes.
        self.check(0.5)

    def test_one_byte_every_twenty_seconds(self):
        # Each attempt got one byte and reset the retry count: about 19 hours.
        self.check(20)

    def test_trivial_progress_does_not_reset_retries(self):
        # A floor of 1 byte/s leaves only the retry count to stop the drip (the deadline
        # is then over an hour away).
        self.check(20, {"MX_MIN_RATE_BYTES_PER_SECOND": 1})

    def test_deadline_from_floor_rate(self):
        # 2 KiB/s passes the stall check (1 KiB/s at most) and would take 128 s for
        # 256 KiB, but the floor of 1 MiB/s gives the range 60.25 s.
        self.check(0.125, {"MX_MIN_RATE_BYTES_PER_SECOND": 1 << 20},
                   "MX_MIN_RATE_BYTES_PER_SECOND", size=256 << 10, piece=256)


if __name__ == "__main__":
    unittest.main()
