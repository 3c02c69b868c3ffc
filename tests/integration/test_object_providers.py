"""mx-server's S3 and GCS providers end to end: a real mx-server copies a model from a real
s3rver (through a recording proxy that counts and can corrupt object reads) into
<cache>/s3/<bucket>/<prefix> (and <cache>/gcs/... over the GCS XML API with HMAC keys,
pointed at the same s3rver), serves it with ListModelFiles/StreamModelFiles, copies it
once for concurrent ensures, refuses a copy whose MD5 does not match its ETag (leaving
nothing behind), refuses hostile names, and deletes it."""

from __future__ import annotations

import filecmp
import json
import http.client
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import grpc

from harness import base_env, mx_binary, run
from http_peers import LoopbackHttpServer, QuietHandler, read_body, relay_head
from server_harness import MxServer, stubs
from storage_peers import S3rver, write_model

S = stubs()
model_pb2, model_grpc = S["model_pb2"], S["model_pb2_grpc"]

BUCKET = "models"
PREFIX = "org/model"
NAME = f"s3://{BUCKET}/{PREFIX}"
MIB = 1 << 20


class RecordingProxy(LoopbackHttpServer):
    """Forwards everything to one upstream as is (Host included, so signatures verify);
    records every ranged GET as (path, bytes); `corrupt` holds path suffixes whose next
    GET gets one byte flipped; `delay` slows every ranged GET (to overlap callers).
    Listings give the keys in `multipart` the ETag of a multipart upload ("<hex>-2"), as
    S3 does (s3rver lists an MD5 even for multipart uploads)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.gets: list[tuple[str, int]] = []
        self.corrupt: list[str] = []
        self.delay = 0.0
        self.multipart: list[str] = []
        proxy = self

        class Handler(QuietHandler):
            def _forward(self):
                body = read_body(self) or None
                ranged = self.command == "GET" and "Range" in self.headers
                flip = False
                if ranged:
                    time.sleep(proxy.delay)
                    path = self.path.split("?")[0]
                    with proxy.lock:
                        for suffix in list(proxy.corrupt):
                            if path.endswith(suffix):
                                proxy.corrupt.remove(suffix)
                                flip = True
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                r = conn.getresponse()
                data = r.read()
                conn.close()
                if ranged:
                    with proxy.lock:
                        proxy.gets.append((path, len(data)))
                elif self.command == "GET" and "list-type=2" in self.path:
                    for key in proxy.multipart:
                        data = re.sub(rb"(<Key>" + re.escape(key.encode()) + rb"</Key>.*?<ETag>)(.*?)(</ETag>)",
                                      rb'\1"0123456789abcdef0123456789abcdef-2"\3', data, flags=re.S)
                relay_head(self, r, len(data))
                if self.command == "HEAD":
                    return
                if flip and data:
                    data = bytes([data[0] ^ 0x01]) + data[1:]
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        super().__init__(Handler)

    def reset(self):
        with self.lock:
            self.gets.clear()
            self.corrupt.clear()
        self.delay = 0.0

    def fetched(self) -> dict[str, int]:
        """Bytes read per object path."""
        out: dict[str, int] = {}
        with self.lock:
            for path, n in self.gets:
                out[path] = out.get(path, 0) + n
        return out


def channel(address):
    return grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])


def ensure(address, name, provider=0, ignore_weights=False, revision=None, metadata=None):
    with channel(address) as ch:
        req = model_pb2.ModelDownloadRequest(model_name=name, provider=provider,
                                             ignore_weights=ignore_weights)
        if revision:
            req.revision = revision
        return list(model_grpc.ModelServiceStub(ch).EnsureModelDownloaded(req, timeout=120,
                                                                          metadata=metadata))


def list_files(address, name, provider=0, ignore_weights=False):
    with channel(address) as ch:
        req = model_pb2.ModelFilesRequest(model_name=name, provider=provider,
                                          ignore_weights=ignore_weights)
        return model_grpc.ModelServiceStub(ch).ListModelFiles(req, timeout=60)


def stream(address, name, provider=0):
    with channel(address) as ch:
        req = model_pb2.ModelFilesRequest(model_name=name, provider=provider, chunk_size=MIB)
        chunks = list(model_grpc.ModelServiceStub(ch).StreamModelFiles(req, timeout=60))
    files: dict[str, bytearray] = {}
    for c in chunks:
        buf = files.setdefault(c.relative_path, bytearray())
        assert c.offset == len(buf), (c.relative_path, c.offset, len(buf))
        buf.extend(c.data)
    return chunks, {k: bytes(v) for k, v in files.items()}


def delete(address, name, provider=0):
    with channel(address) as ch:
        req = model_pb2.DeleteModelRequest(model_name=name, provider=provider)
        return model_grpc.ModelServiceStub(ch).DeleteModel(req, timeout=60)


def tree(root: Path) -> dict[str, int]:
    """Files under root (but the server's registry and locks in .locks/) and their sizes."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0] == ".locks"}


class ObjectProvidersTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-objprov-"))
        cls.src = cls.tmp / "src"
        write_model(cls.src, shards=2, big=2 * MIB)
        (cls.src / "tokenizer.json").write_bytes(os.urandom(150_000))
        (cls.src / "empty.txt").write_bytes(b"")
        (cls.src / "sub").mkdir()
        (cls.src / "sub" / "notes.md").write_text("notes\n")
        # Over the aws cli's 8 MiB multipart threshold: a multipart ETag ("...-2").
        (cls.src / "extra.bin").write_bytes(os.urandom(9 * MIB + 3))
        cls.s3 = S3rver(cls.tmp).start()
        cls.s3.upload_dir(cls.src, PREFIX)
        cls.proxy = RecordingProxy(cls.s3.port)
        cls.proxy.multipart = [f"{PREFIX}/extra.bin"]
        cls.proxy.start()

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.s3.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.proxy.reset()
        self.cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.tmp))
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.stop()

    def server(self, extra=None, args=None) -> MxServer:
        endpoint = f"http://127.0.0.1:{self.proxy.port}"
        env = self.s3.env(endpoint)
        env.update({"GCS_ENDPOINT_URL": endpoint, "GCS_HMAC_ACCESS_KEY_ID": "S3RVER",
                    "GCS_HMAC_SECRET_ACCESS_KEY": "S3RVER"})
        env.update(extra or {})
        s = MxServer(self.tmp, self.cache, env=env, args=args).start()
        self.servers.append(s)
        return s

    def model_dir(self, scheme_dir="s3"):
        return self.cache / scheme_dir / BUCKET / PREFIX

    def assert_copy(self, scheme_dir="s3"):
        d = self.model_dir(scheme_dir)
        self.assertTrue((d / ".mx-model").is_file(), "the copy's marker")
        want = tree(self.src)
        got = {k: v for k, v in tree(d).items() if k != ".mx-model"}
        self.assertEqual(got, want)
        for rel in want:
            self.assertTrue(filecmp.cmp(self.src / rel, d / rel, shallow=False), rel)

    def test_s3_ensure_list_stream_again_delete(self):
        srv = self.server()
        ups = ensure(srv.address, NAME)
        self.assertEqual([u.status for u in ups], [model_pb2.DOWNLOADING, model_pb2.DOWNLOADED], ups)
        commit = ups[-1].resolved_revision
        self.assertRegex(commit, r"^[0-9a-f]{40}$")
        self.assert_copy()
        self.assertEqual(self.proxy.fetched()[f"/{BUCKET}/{PREFIX}/extra.bin"], 9 * MIB + 3)
        # The multipart object could only be checked by size, and the log says so.
        self.assertIn("verified by size only", srv.log_text())

        listing = list_files(srv.address, NAME)
        self.assertEqual({f.relative_path: f.size for f in listing.files}, tree(self.src))
        self.assertEqual(listing.total_size, sum(tree(self.src).values()))
        chunks, files = stream(srv.address, NAME, provider=model_pb2.S3)
        self.assertEqual(chunks[0].commit_hash, commit)
        self.assertTrue(chunks[-1].is_last_file)
        self.assertEqual(set(files), set(tree(self.src)))
        for rel, data in files.items():
            self.assertEqual(data, (self.src / rel).read_bytes(), rel)

        # Again, spelled another way: nothing is read from the store.
        before = len(self.proxy.gets)
        again = ensure(srv.address, "S3://models/org/model/", provider=model_pb2.S3)
        self.assertEqual(again[-1].status, model_pb2.DOWNLOADED)
        self.assertEqual(again[-1].resolved_revision, commit)
        self.assertIn("already", again[0].message)
        self.assertEqual(len(self.proxy.gets), before)

        resp = delete(srv.address, NAME, provider=model_pb2.S3)
        self.assertTrue(resp.success, resp.message)
        self.assertFalse(self.model_dir().exists())
        with self.assertRaises(grpc.RpcError) as e:
            list_files(srv.address, NAME)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        # Deleted means fetched again on the next ensure.
        self.assertEqual(ensure(srv.address, NAME)[-1].status, model_pb2.DOWNLOADED)
        self.assertGreater(len(self.proxy.gets), before)
        self.assert_copy()

    def mx_model(self, *args, env=None):
        e = {"MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token")}
        e.update(env or {})
        return run([mx_binary(), "model", *args], env=e, timeout=120)

    def test_worker_installs_an_s3_model_both_ways_then_clears_it(self):
        srv = self.server()
        # Streamed into the worker's own cache, in ModelExpress's layout, marker last.
        client = Path(tempfile.mkdtemp(prefix="client-", dir=self.tmp))
        r = self.mx_model("download", NAME, "-p", "s3", "-e", srv.address, "--cache-path",
                          client, "--no-shared-storage", "-s", "server-only", "-f", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        local = client / "s3" / BUCKET / PREFIX
        self.assertEqual(rep["path"], str(local))
        self.assertEqual(rep["strategy"], "stream")
        self.assertEqual(rep["bytes_streamed"], sum(tree(self.src).values()))
        got = {k: v for k, v in tree(local).items() if k != ".mx-model"}
        self.assertEqual(got, tree(self.src))
        for rel in got:
            self.assertTrue(filecmp.cmp(self.src / rel, local / rel, shallow=False), rel)
        marker = json.loads((local / ".mx-model").read_text())
        self.assertEqual(marker["commit"], rep["commit"])
        self.assertEqual(marker["name"], NAME)
        # Shared storage: the server's copy is read in place (gs:// names the GCS one).
        r = self.mx_model("download", "S3://models/org/model/", "-p", "s3", "-e", srv.address,
                          "--cache-path", self.cache, "-f", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep2 = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(rep2["strategy"], "shared-storage")
        self.assertEqual(rep2["path"], str(self.model_dir()))
        self.assertEqual(rep2["commit"], rep["commit"])
        # A hostile name is refused before anything is written or asked.
        r = self.mx_model("download", "s3://models/../etc", "-p", "s3", "-e", srv.address,
                          "--cache-path", client)
        self.assertEqual(r.returncode, 2)  # a bad argument
        self.assertIn("bad object-store model name", r.stderr)
        # clear: the local copy and the server's.
        r = self.mx_model("clear", NAME, "-p", "s3", "-e", srv.address, "--cache-path", client,
                          "-f", "json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout)
        self.assertTrue(out["local_removed"] and out["server_removed"], out)
        self.assertFalse(local.exists())
        self.assertFalse(self.model_dir().exists())

    def test_concurrent_ensures_copy_once(self):
        srv = self.server()
        self.proxy.delay = 0.3
        results = [None, None]

        def go(i, name, provider):
            results[i] = ensure(srv.address, name, provider=provider)

        threads = [threading.Thread(target=go, args=(0, NAME, 0)),
                   threading.Thread(target=go, args=(1, "  s3://models/org/model//"[:-1], model_pb2.S3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            self.assertEqual(r[-1].status, model_pb2.DOWNLOADED, r)
        self.assertEqual(results[0][-1].resolved_revision, results[1][-1].resolved_revision)
        self.assertIn("download in progress", [u.message for r in results for u in r])
        # Every object read exactly once: bytes fetched per object == its size.
        sizes = {f"/{BUCKET}/{PREFIX}/{k}": v for k, v in tree(self.src).items() if v}
        self.assertEqual(self.proxy.fetched(), sizes)
        self.assert_copy()

    def test_corrupted_object_fails_and_leaves_nothing(self):
        srv = self.server()
        self.proxy.corrupt.append(f"/{PREFIX}/tokenizer.json")
        ups = ensure(srv.address, NAME)
        self.assertEqual(ups[-1].status, model_pb2.ERROR, ups)
        self.assertIn("does not match its ETag", ups[-1].message)
        self.assertNotIn(str(self.cache), ups[-1].message)
        self.assertEqual(tree(self.cache), {}, "a failed copy leaves no file in the cache")
        with self.assertRaises(grpc.RpcError) as e:
            list_files(srv.address, NAME)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        # The failure is retried by the next ensure, which now gets good bytes.
        ups = ensure(srv.address, NAME)
        self.assertEqual(ups[0].message, "previous download failed, retrying")
        self.assertEqual(ups[-1].status, model_pb2.DOWNLOADED, ups)
        self.assert_copy()

    def test_staging_left_by_a_dead_server_is_removed(self):
        host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
        dead = subprocess.Popen(["true"])
        dead.wait()
        orphan = self.cache / "s3" / f".staging-mx-{host}-{dead.pid}-0123456789abcdef"
        (orphan / "org").mkdir(parents=True)
        (orphan / "org" / "half.bin").write_bytes(b"x" * 100)
        srv = self.server()
        self.assertEqual(ensure(srv.address, NAME)[-1].status, model_pb2.DOWNLOADED)
        self.assertFalse(orphan.exists())
        self.assertEqual(sorted(p.name for p in (self.cache / "s3").iterdir()), [BUCKET])

    def test_etag_checks_can_be_switched_off(self):
        # For SSE-KMS / SSE-C objects, whose ETags are not MD5s: size only.
        srv = self.server({"MX_VERIFY_ETAG": "0"})
        self.proxy.corrupt.append(f"/{PREFIX}/tokenizer.json")
        ups = ensure(srv.address, NAME)
        self.assertEqual(ups[-1].status, model_pb2.DOWNLOADED, ups)
        self.assertNotEqual((self.model_dir() / "tokenizer.json").read_bytes(),
                            (self.src / "tokenizer.json").read_bytes())

    def test_metadata_only(self):
        srv = self.server()
        ups = ensure(srv.address, NAME, ignore_weights=True)
        self.assertEqual(ups[-1].status, model_pb2.DOWNLOADED, ups)
        got = set(tree(self.model_dir())) - {".mx-model"}
        self.assertEqual(got, {"config.json", "model.safetensors.index.json", "tokenizer.json",
                               "empty.txt", "sub/notes.md"})
        self.assertFalse(any(p.endswith((".safetensors", ".bin")) for p, _ in self.proxy.gets))
        names = {f.relative_path for f in list_files(srv.address, NAME, ignore_weights=True).files}
        self.assertEqual(names, got)
        # The full model was never copied: not served as if it were.
        with self.assertRaises(grpc.RpcError) as e:
            list_files(srv.address, NAME)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_gcs_over_the_xml_api(self):
        srv = self.server()
        ups = ensure(srv.address, f"gs://{BUCKET}/{PREFIX}", provider=model_pb2.GCS)
        self.assertEqual(ups[-1].status, model_pb2.DOWNLOADED, ups)
        self.assert_copy("gcs")
        self.assertFalse((self.cache / "s3").exists())
        _, files = stream(srv.address, f"gs://{BUCKET}/{PREFIX}/")
        self.assertEqual(files["config.json"], b"{}")
        self.assertTrue(delete(srv.address, f"gs://{BUCKET}/{PREFIX}", model_pb2.GCS).success)
        self.assertFalse(self.model_dir("gcs").exists())

    def test_gated_policy_keeps_anonymous_callers_out(self):
        # Under --gated-repos authenticated, anonymous callers get public hub repos only:
        # the server's cloud identity is not theirs to use.
        token = self.tmp / "token"
        token.write_text("sekrit-token\n")
        srv = self.server(args=["--auth-token-file", token, "--gated-repos", "authenticated"])
        with self.assertRaises(grpc.RpcError) as e:
            ensure(srv.address, NAME)
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.proxy.gets, [])
        ups = ensure(srv.address, NAME, metadata=[("authorization", "Bearer sekrit-token")])
        self.assertEqual(ups[-1].status, model_pb2.DOWNLOADED, ups)

    def test_hostile_names_refused(self):
        srv = self.server()
        bad = [(0, "s3://"), (0, "s3://models"), (0, "s3://models/"), (0, "s3://models//x"),
               (0, "s3://models/a/../b"), (0, "s3://models/./a"), (0, "s3://../x"),
               (0, "s3://models/org/.."), (0, "s3://models/a\x01b"), (0, "s3://models/a\\b"),
               (0, "s3://.hidden/x"), (0, "s3://a b/x"), (0, "gs:///x"),
               (model_pb2.S3, "models/org/model"), (model_pb2.S3, "gs://models/org/model"),
               (model_pb2.GCS, "s3://models/org/model"), (model_pb2.S3, "s3://models/" + "a" * 300),
               (model_pb2.S3, "s3://models/" + "a/" * 600 + "b")]
        for provider, name in bad:
            for call in (lambda: ensure(srv.address, name, provider=provider),
                         lambda: list_files(srv.address, name, provider=provider)):
                with self.assertRaises(grpc.RpcError, msg=repr(name)) as e:
                    call()
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, repr(name))
            self.assertFalse(delete(srv.address, name, provider=provider).success, repr(name))
        with self.assertRaises(grpc.RpcError) as e:
            ensure(srv.address, NAME, revision="v1")
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as e:
            ensure(srv.address, "nvidia/llama", provider=model_pb2.NGC)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("NGC", e.exception.details())
        self.assertEqual(self.proxy.gets, [])
        self.assertEqual(tree(self.cache), {})


if __name__ == "__main__":
    unittest.main()
