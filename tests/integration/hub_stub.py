#!/usr/bin/env python3
"""A stand-in for the Hugging Face Hub HTTP API, for mx's integration tests.

Two HTTP/1.1 keep-alive servers run in one process:

* the hub (``--host``/``--port``): revision and tree APIs, ``resolve`` URLs,
  regular files served with Range support, LFS files answered with a 302 to
  the LFS host, and the ``/_control/*`` endpoints tests use to inject faults
  and read statistics;
* the LFS host (``--lfs-host``/``--lfs-port``): ``GET/HEAD /lfs/{sha256}``
  blobs, standing in for the CDN. It counts requests that carry an
  ``Authorization`` header because a client must never leak its token there.

Repositories come from a JSON config (see ``load_config``); each revision is a
plain directory tree whose hashes are computed at startup. Python 3.11
stdlib only, so the tests need nothing but an interpreter.

Control API (hub port only):

* ``POST /_control/faults`` ``{"faults": [FAULT, ...]}`` replaces the fault
  list. FAULT fields: ``kind`` (see ``Fault``), ``path`` (fnmatch glob, default
  ``*``), ``count`` (default 1, -1 = forever), ``retry_after`` (seconds,
  default 1), ``after_bytes`` (default: half the body), ``seconds`` (stall
  length, default 10), ``on`` (``data`` default, ``resolve`` or ``api``).
* ``GET /_control/faults`` lists faults with ``remaining``/``triggered``.
* ``GET /_control/stats`` and ``POST /_control/reset`` (zero stats, clear
  faults).
* ``GET /_control/files`` lists every repo/revision/file with its hashes, so
  tests can compute expectations without re-hashing.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import fnmatch
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import sys
import termios
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".h5", ".msgpack")
DEFAULT_LFS_MIN_SIZE = 1 << 20
IO_CHUNK = 1 << 20
HASH_CHUNK = 4 << 20
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_TYPES = {"model": "models", "dataset": "datasets"}


# --------------------------------------------------------------------------
# Repository model
# --------------------------------------------------------------------------


def git_blob_sha1_bytes(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    # The exact text git-lfs stores in git; the real hub reports the git oid
    # and size of this pointer (not of the content) for LFS files.
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{sha256}\nsize {size}\n"
    ).encode()


@dataclass
class FileEntry:
    path: str  # repo-relative, '/'-separated
    abspath: str
    size: int
    lfs: bool
    git_sha1: str | None = None  # git blob sha1 of the content (regular files)
    sha256: str | None = None  # content sha256 (LFS files)

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def tree_oid(self) -> str:
        """The ``oid`` the tree API reports: the git blob this path points at.

        For LFS files that blob is the pointer, exactly as on the real hub, so
        a client must not verify LFS content against it."""
        return git_blob_sha1_bytes(self.pointer) if self.lfs else self.git_sha1


@dataclass
class Revision:
    name: str
    commit: str
    files: dict[str, FileEntry]
    tree: list[dict]  # every file and directory item, sorted by path


@dataclass
class Repo:
    repo_type: str  # "model" | "dataset"
    repo_id: str  # "org/name"
    token: str | None
    renamed_from: list[str] = field(default_factory=list)
    revisions: dict[str, Revision] = field(default_factory=dict)
    by_commit: dict[str, Revision] = field(default_factory=dict)
    # Like the real hub's gated repos: the API answers without a token, files need one.
    open_api: bool = False

    def find_revision(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return self.by_commit.get(rev) if SHA1_RE.match(rev) else None


def walk_files(root: str) -> list[tuple[str, str]]:
    """(repo path, absolute path) for every file under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in filenames:
            ap = os.path.join(dirpath, fn)
            if os.path.isfile(ap):
                rel = os.path.relpath(ap, root).replace(os.sep, "/")
                out.append((rel, ap))
    out.sort()
    return out


class HashCache:
    """Optional persistent cache so multi-GB fixtures are hashed once.

    Keyed by absolute path and validated by (size, mtime_ns, inode)."""

    def __init__(self, path: str | None):
        self.path = path
        self.data: dict[str, dict] = {}
        self.lock = threading.Lock()
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    @staticmethod
    def _stamp(st: os.stat_result) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def get(self, abspath: str, st: os.stat_result) -> dict:
        with self.lock:
            e = self.data.get(abspath)
            return dict(e["h"]) if e and e["s"] == self._stamp(st) else {}

    def put(self, abspath: str, st: os.stat_result, hashes: dict) -> None:
        with self.lock:
            self.data[abspath] = {"s": self._stamp(st), "h": hashes}

    def save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


def hash_file(abspath: str, want_sha1: bool, want_sha256: bool, cache: HashCache) -> dict:
    st = os.stat(abspath)
    have = cache.get(abspath, st)
    need_sha1 = want_sha1 and "sha1" not in have
    need_sha256 = want_sha256 and "sha256" not in have
    if need_sha1 or need_sha256:
        h1 = hashlib.sha1(b"blob %d\0" % st.st_size) if need_sha1 else None
        h2 = hashlib.sha256() if need_sha256 else None
        # Large reads: hashlib releases the GIL, so a thread pool hashes
        # several files in parallel.
        with open(abspath, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                if h1:
                    h1.update(chunk)
                if h2:
                    h2.update(chunk)
        if h1:
            have["sha1"] = h1.hexdigest()
        if h2:
            have["sha256"] = h2.hexdigest()
        cache.put(abspath, st, have)
    return have


def build_tree(files: dict[str, FileEntry]) -> list[dict]:
    items: dict[str, dict] = {}
    children: dict[str, list[str]] = {}
    for p, fe in files.items():
        item = {"type": "file", "oid": fe.tree_oid, "size": fe.size, "path": p}
        if fe.lfs:
            item["lfs"] = {"oid": fe.sha256, "size": fe.size,
                           "pointerSize": len(fe.pointer)}
        items[p] = item
        parts = p.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            children.setdefault(d, []).append("/".join(parts[: i + 1]))
    # Directory oids only need to be deterministic and content-dependent;
    # deepest first so a parent can hash its children's oids.
    for d in sorted(children, key=lambda s: -s.count("/")):
        h = hashlib.sha1(b"tree\0")
        for c in sorted(set(children[d])):
            h.update(f"{c}\0{items[c]['oid']}\n".encode())
        items[d] = {"type": "directory", "oid": h.hexdigest(), "size": 0, "path": d}
    return [items[k] for k in sorted(items)]


def compute_commit(rev_name: str, files: dict[str, FileEntry]) -> str:
    h = hashlib.sha1()
    for p in sorted(files):
        h.update(f"{p}\0{files[p].tree_oid}\n".encode())
    h.update(f"revision\0{rev_name}".encode())
    return h.hexdigest()


def load_config(config: dict, hash_cache: HashCache) -> dict[tuple[str, str], Repo]:
    """Parse ``{"repos": {"model/org/name": {"revisions": {rev: dir},
    "token": str|null, "lfs_min_size": int, "renamed_from": ["org/old"]}}}``
    and hash every file."""
    repos: dict[tuple[str, str], Repo] = {}
    jobs: dict[tuple[str, bool], list[FileEntry]] = {}  # one hash per distinct file
    pending: list[tuple[Repo, str, dict[str, FileEntry]]] = []
    for key, rc in config["repos"].items():
        rtype, _, repo_id = key.partition("/")
        if rtype not in REPO_TYPES or not repo_id:
            raise ValueError(f"bad repo key {key!r}: want model/ORG/NAME or dataset/ORG/NAME")
        repo = Repo(rtype, repo_id, rc.get("token"), list(rc.get("renamed_from", [])),
                    open_api=bool(rc.get("open_api")))
        min_size = int(rc.get("lfs_min_size", DEFAULT_LFS_MIN_SIZE))
        for rev_name, root in rc["revisions"].items():
            files = {}
            for rel, ap in walk_files(root):
                size = os.path.getsize(ap)
                is_lfs = rel.endswith(LFS_SUFFIXES) or size >= min_size
                fe = FileEntry(rel, ap, size, is_lfs)
                files[rel] = fe
                jobs.setdefault((ap, is_lfs), []).append(fe)
            pending.append((repo, rev_name, files))
        repos[(rtype, repo_id)] = repo

    def work(key: tuple[str, bool]) -> None:
        abspath, is_lfs = key
        h = hash_file(abspath, not is_lfs, is_lfs, hash_cache)
        for fe in jobs[key]:
            fe.git_sha1, fe.sha256 = h.get("sha1"), h.get("sha256")

    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 2))) as ex:
        list(ex.map(work, list(jobs)))
    hash_cache.save()

    for repo, rev_name, files in pending:
        rev = Revision(rev_name, compute_commit(rev_name, files), files, build_tree(files))
        repo.revisions[rev_name] = rev
        repo.by_commit[rev.commit] = rev
    return repos


# --------------------------------------------------------------------------
# Faults and statistics (shared by both servers, guarded by one lock)
# --------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected failure.

    kinds, for scope ``data`` (body-serving GETs on hub regular files and on
    the LFS host):
      drop                 headers + after_bytes of body, then TCP RST
      short_body           headers + after_bytes of body, then a clean close
      stall                headers + after_bytes, then sleep ``seconds``, close
      corrupt              correct headers and length, flipped body bytes
      200_for_range        a Range request answered 200 with the whole file
      wrong_content_range  206 whose Content-Range is not what was asked
      "429", "5xx", "408"  that status (429/503 carry Retry-After)
    In scopes ``resolve`` (any hub resolve HEAD/GET, LFS 302s included) and
    ``api`` (revision/tree/info; glob matched against the URL path) only the
    status kinds and ``drop`` (close with no response) apply.
    200_for_range and wrong_content_range only match Range requests.
    A status fault may carry ``error_code`` and ``error_message``: they are sent
    as X-Error-Code / X-Error-Message (the message as given, control
    characters included, to test how a client shows a hostile one)."""

    kind: str
    path: str = "*"
    count: int = 1
    retry_after: float = 1
    after_bytes: int | None = None
    seconds: float = 10
    on: str = "data"
    triggered: int = 0
    error_code: str | None = None
    error_message: str | None = None

    RANGE_ONLY = ("200_for_range", "wrong_content_range")
    BODY_KINDS = ("drop", "short_body", "stall", "corrupt") + RANGE_ONLY

    @classmethod
    def from_json(cls, d: dict) -> "Fault":
        kind = str(d["kind"])
        if kind not in cls.BODY_KINDS and not (kind.isdigit() and len(kind) == 3):
            raise ValueError(f"unknown fault kind {kind!r}")
        on = d.get("on", "data")
        if on not in ("data", "resolve", "api"):
            raise ValueError(f"unknown fault scope {on!r}")
        return cls(kind=kind, path=d.get("path", "*"), count=int(d.get("count", 1)),
                   retry_after=d.get("retry_after", 1), after_bytes=d.get("after_bytes"),
                   seconds=float(d.get("seconds", 10)), on=on,
                   error_code=d.get("error_code"), error_message=d.get("error_message"))

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "remaining": self.count,
                "triggered": self.triggered, "retry_after": self.retry_after,
                "after_bytes": self.after_bytes, "seconds": self.seconds, "on": self.on}

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None


class State:
    def __init__(self, repos: dict[tuple[str, str], Repo], page_size: int,
                 lfs_host: str, lfs_redirect_base: str | None):
        self.repos = repos
        self.page_size = page_size
        self.lfs_host = lfs_host
        self.lfs_port = 0  # known once the LFS server is bound
        self.lfs_redirect_base = lfs_redirect_base.rstrip("/") if lfs_redirect_base else None
        # (type, former repo id) -> current repo id
        self.aliases = {(r.repo_type, old): r.repo_id
                        for r in repos.values() for old in r.renamed_from}
        # sha256 -> (one FileEntry holding the bytes, every repo path using it)
        self.lfs_objects: dict[str, tuple[FileEntry, set[str]]] = {}
        for repo in repos.values():
            for rev in repo.revisions.values():
                for fe in rev.files.values():
                    if fe.lfs:
                        self.lfs_objects.setdefault(fe.sha256, (fe, set()))[1].add(fe.path)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.reset_stats()

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = {
                "requests": 0,
                "requests_by_method": {},
                "requests_by_path": {},  # URL path (no query) -> count
                "range_requests": 0,
                "bytes_total": 0,
                "bytes_by_path": {},  # hub: repo path; LFS host: sha256
                "bytes_by_file": {},  # repo path, whichever host served it
                "lfs_requests": 0,
                "lfs_auth_headers_seen": 0,
                "faults_triggered": {},
                "max_concurrent": 0,
            }
            self.inflight = 0

    def lfs_location(self, sha256: str) -> str:
        if self.lfs_redirect_base:
            return f"{self.lfs_redirect_base}/{sha256}"
        return f"http://{self.lfs_host}:{self.lfs_port}/lfs/{sha256}?sig=x"

    def begin_request(self, method: str, url_path: str, lfs: bool, auth: bool, ranged: bool) -> None:
        with self.lock:
            s = self.stats
            s["requests"] += 1
            s["requests_by_method"][method] = s["requests_by_method"].get(method, 0) + 1
            s["requests_by_path"][url_path] = s["requests_by_path"].get(url_path, 0) + 1
            if ranged:
                s["range_requests"] += 1
            if lfs:
                s["lfs_requests"] += 1
                if auth:
                    s["lfs_auth_headers_seen"] += 1
            self.inflight += 1
            s["max_concurrent"] = max(s["max_concurrent"], self.inflight)

    def end_request(self) -> None:
        with self.lock:
            self.inflight -= 1

    def add_bytes(self, key: str, repo_paths: list[str], n: int) -> None:
        if n <= 0:
            return
        with self.lock:
            s = self.stats
            s["bytes_total"] += n
            s["bytes_by_path"][key] = s["bytes_by_path"].get(key, 0) + n
            for p in repo_paths:
                s["bytes_by_file"][p] = s["bytes_by_file"].get(p, 0) + n

    def set_faults(self, faults: list[Fault]) -> None:
        with self.lock:
            self.faults = faults

    def take_fault(self, scope: str, names: list[str], ranged: bool, allowed=None) -> Fault | None:
        """Consume and return the first live fault matching this request."""
        with self.lock:
            for f in self.faults:
                if f.on != scope or f.count == 0:
                    continue
                if f.kind in Fault.RANGE_ONLY and not ranged:
                    continue
                if allowed is not None and not allowed(f):
                    continue
                if not any(fnmatch.fnmatchcase(n, f.path) for n in names):
                    continue
                if f.count > 0:
                    f.count -= 1
                f.triggered += 1
                ft = self.stats["faults_triggered"]
                ft[f.kind] = ft.get(f.kind, 0) + 1
                return f
        return None


# --------------------------------------------------------------------------
# HTTP handlers
# --------------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class Dropped(Exception):
    """The connection was deliberately killed; nothing more may be written."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range -> inclusive
    (start, end), or None when unsatisfiable or malformed (-> 416)."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    a, b = m.group(1), m.group(2)
    if a == "":  # suffix range: the last n bytes
        n = int(b)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if start >= size or (b != "" and int(b) < start):
        return None
    return start, end


class BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-stub/1.0"
    is_lfs_host = False

    @property
    def state(self) -> State:
        return self.server.state

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write(f"[{'lfs' if self.is_lfs_host else 'hub'}] "
                             f"{self.address_string()} {fmt % args}\n")

    # -- plumbing ---------------------------------------------------------

    def do_GET(self):
        self._dispatch(head=False)

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            self.route_post(body)
        except HttpError as e:
            self.send_error_json(e, head=False)

    def _dispatch(self, head: bool):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_control/") and not self.is_lfs_host:
            try:
                return self.route_control_get(url)
            except HttpError as e:
                return self.send_error_json(e, head)
        self.state.begin_request(self.command, url.path, self.is_lfs_host,
                                 "Authorization" in self.headers, "Range" in self.headers)
        try:
            self.route(url, head)
        except HttpError as e:
            self.send_error_json(e, head)
        except Dropped:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.state.end_request()

    def send_json(self, status: int, obj, head: bool, headers: dict | None = None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error_json(self, e: HttpError, head: bool):
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
            # Header values must be latin-1; paths may not be.
            headers["X-Error-Message"] = e.message.encode("ascii", "backslashreplace").decode()
        self.send_json(e.status, {"error": e.message}, head, headers)

    def status_fault(self, f: Fault, head: bool):
        headers = {}
        if f.status in (429, 503):
            headers["Retry-After"] = f"{f.retry_after:g}"
        if f.status == 429:
            # RateLimit-style headers some hub deployments send as well.
            headers["RateLimit"] = f'"fault";r=0;t={f.retry_after:g}'
        if f.error_code is not None:
            headers["X-Error-Code"] = f.error_code
            headers["X-Error-Message"] = f.error_message or ""
        self.send_error_json(HttpError(f.status, None, f"injected {f.kind}", headers), head)

    def abort_connection(self):
        """Reset the TCP connection (RST, not FIN) so the client sees an
        abrupt failure rather than a clean end of stream."""
        self.close_connection = True
        # A reset discards whatever is still in our send queue; wait (briefly)
        # until the peer has acked it so "after_bytes" really reach the client.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                queued = struct.unpack("i", fcntl.ioctl(self.connection.fileno(),
                                                        termios.TIOCOUTQ, b"\0" * 4))[0]
            except OSError:
                break
            if queued == 0:
                break
            time.sleep(0.002)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # rfile holds a reference to the socket; drop it so close() is real.
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass
        raise Dropped()

    def route_post(self, body: bytes):
        raise HttpError(404, None, "not found")

    def route_control_get(self, url):
        raise HttpError(404, None, "not found")

    # -- file bodies --------------------------------------------------------

    def serve_file(self, fe: FileEntry, key: str, repo_paths: list[str], head: bool,
                   headers: dict):
        """Serve fe's bytes (200 or 206), applying any matching data fault.

        key and repo_paths are what faults match and stats are counted by."""
        size = fe.size
        range_hdr = self.headers.get("Range")
        fault = None
        if not head:
            fault = self.state.take_fault("data", [key] + repo_paths, range_hdr is not None)
        if fault and fault.status:
            return self.status_fault(fault, head)

        if range_hdr is not None:
            rng = parse_range(range_hdr, size)
            if rng is None:
                raise HttpError(416, None, f"unsatisfiable range {range_hdr!r}",
                                dict(headers, **{"Content-Range": f"bytes */{size}"}))
        else:
            rng = None

        status, start, end = 200, 0, size - 1
        content_range = None
        if rng is not None and not (fault and fault.kind == "200_for_range"):
            status, (start, end) = 206, rng
            content_range = f"bytes {start}-{end}/{size}"
            if fault and fault.kind == "wrong_content_range":
                # Shift the declared window by a byte and send the bytes it
                # describes, so only a client checking the header notices.
                if end + 1 < size:
                    start, end = start + 1, end + 1
                elif start >= 1:
                    start, end = start - 1, end - 1
                content_range = (f"bytes {start}-{end}/{size}" if (start, end) != rng
                                 else f"bytes {start}-{end}/{size + 1}")
        length = end - start + 1 if size else 0

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if content_range:
            self.send_header("Content-Range", content_range)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head or length == 0:
            return

        kind = fault.kind if fault else None
        limit = length
        if kind in ("drop", "short_body", "stall"):
            ab = fault.after_bytes
            limit = min(length, length // 2 if ab is None else max(0, int(ab)))
        sent = 0
        try:
            if kind == "corrupt":
                sent = self._send_corrupt(fe.abspath, start, length)
            else:
                sent = self._sendfile(fe.abspath, start, limit)
        finally:
            self.state.add_bytes(key, repo_paths, sent)

        if kind == "drop":
            self.abort_connection()
        elif kind == "stall":
            time.sleep(fault.seconds)
            self.close_connection = True
        elif kind == "short_body":
            self.close_connection = True

    def _sendfile(self, abspath: str, offset: int, count: int) -> int:
        sent = 0
        out_fd = self.connection.fileno()
        with open(abspath, "rb") as f:
            while sent < count:
                try:
                    n = os.sendfile(out_fd, f.fileno(), offset + sent, min(count - sent, 8 << 20))
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                if n == 0:
                    break
                sent += n
        return sent

    def _send_corrupt(self, abspath: str, offset: int, count: int) -> int:
        sent = 0
        with open(abspath, "rb") as f:
            f.seek(offset)
            while sent < count:
                buf = bytearray(f.read(min(IO_CHUNK, count - sent)))
                if not buf:
                    break
                # Flip the first and middle byte of every chunk: same length,
                # wrong hash.
                buf[0] ^= 0xFF
                buf[len(buf) // 2] ^= 0xFF
                try:
                    self.wfile.write(buf)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                sent += len(buf)
        return sent


class HubHandler(BaseHandler):
    # -- control ------------------------------------------------------------

    def route_control_get(self, url):
        st = self.state
        if url.path == "/_control/stats":
            with st.lock:
                snap = json.loads(json.dumps(st.stats))
            return self.send_json(200, snap, self.command == "HEAD")
        if url.path == "/_control/faults":
            with st.lock:
                faults = [f.to_json() for f in st.faults]
            return self.send_json(200, {"faults": faults}, self.command == "HEAD")
        if url.path == "/_control/files":
            return self.send_json(200, self._files_listing(), self.command == "HEAD")
        raise HttpError(404, None, "unknown control endpoint")

    def route_post(self, body: bytes):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_control/faults":
            try:
                data = json.loads(body or b"{}")
                faults = [Fault.from_json(d) for d in data.get("faults", [])]
            except (ValueError, KeyError, TypeError) as e:
                raise HttpError(400, None, f"bad faults: {e}")
            self.state.set_faults(faults)
            return self.send_json(200, {"ok": True, "faults": len(faults)}, False)
        if path == "/_control/reset":
            self.state.set_faults([])
            self.state.reset_stats()
            return self.send_json(200, {"ok": True}, False)
        raise HttpError(404, None, "not found")

    def _files_listing(self) -> dict:
        out = {}
        for (rtype, rid), repo in self.state.repos.items():
            revs = {}
            for name, rev in repo.revisions.items():
                revs[name] = {
                    "commit": rev.commit,
                    "files": {p: {"size": fe.size, "lfs": fe.lfs, "git_sha1": fe.git_sha1,
                                  "sha256": fe.sha256, "tree_oid": fe.tree_oid,
                                  "abspath": fe.abspath}
                              for p, fe in rev.files.items()},
                }
            out[f"{rtype}/{rid}"] = {"token": repo.token, "revisions": revs}
        return out

    # -- routing ------------------------------------------------------------

    def route(self, url, head: bool):
        segs = url.path.split("/")[1:]
        if segs and segs[0] == "api":
            return self.route_api(url, segs, head)
        rtype = "model"
        if segs and segs[0] == "datasets":
            rtype, segs = "dataset", segs[1:]
        # The repo id is one ("gpt2") or two ("org/name") segments, followed
        # by the "resolve" keyword.
        for n in (2, 1):
            if len(segs) > n + 1 and segs[n] == "resolve":
                prefix = "/datasets/" if rtype == "dataset" else "/"
                repo = self.find_repo(rtype, segs[:n], url, prefix)
                return self.resolve(repo, segs[n + 1], segs[n + 2:], head)
        raise HttpError(404, None, f"no route for {url.path}")

    def find_repo(self, rtype: str, id_segs: list[str], url, prefix: str) -> Repo:
        """The repo named by id_segs (raw URL segments following prefix),
        after the auth check. A former name (config "renamed_from") answers
        307 with a relative Location, as the hub does for renamed repos."""
        repo_id = "/".join(urllib.parse.unquote(s) for s in id_segs)
        new_id = self.state.aliases.get((rtype, repo_id))
        if new_id is not None:
            tail = url.path[len(prefix) + len("/".join(id_segs)):]
            loc = prefix + urllib.parse.quote(new_id, safe="/") + tail
            raise HttpError(307, None, f"{repo_id} was renamed to {new_id}",
                            {"Location": loc + (f"?{url.query}" if url.query else "")})
        repo = self.state.repos.get((rtype, repo_id))
        if repo is None:
            raise HttpError(404, "RepoNotFound", f"Repository Not Found for {rtype} {repo_id}")
        auth = self.headers.get("Authorization")
        if repo.token and not (repo.open_api and not auth and url.path.startswith("/api/")):
            if not auth:
                raise HttpError(401, "GatedRepo", f"Access to {repo_id} requires a token")
            if auth != f"Bearer {repo.token}":
                raise HttpError(403, "GatedRepo", f"Token not authorized for {repo_id}")
        return repo

    def find_revision(self, repo: Repo, raw_rev: str) -> Revision:
        # Revisions containing '/' must arrive percent-encoded as a single
        # segment; an unencoded "refs/pr/1" lands here as "refs" and fails.
        rev_name = urllib.parse.unquote(raw_rev)
        rev = repo.find_revision(rev_name)
        if rev is None:
            raise HttpError(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
        return rev

    def api_fault(self, url, head: bool) -> bool:
        f = self.state.take_fault("api", [urllib.parse.unquote(url.path)], False,
                                  allowed=lambda f: f.status or f.kind == "drop")
        if not f:
            return False
        if f.kind == "drop":
            self.abort_connection()
        self.status_fault(f, head)
        return True

    def route_api(self, url, segs: list[str], head: bool):
        if self.api_fault(url, head):
            return
        if segs == ["api", "whoami-v2"]:
            return self.api_whoami(head)
        # /api/{models|datasets}/{repo_id}[/revision/{rev} | /tree/{rev}[/{path}]]
        if len(segs) < 3 or segs[1] not in ("models", "datasets"):
            raise HttpError(404, None, f"no route for {url.path}")
        rtype = "model" if segs[1] == "models" else "dataset"
        rest = segs[2:]
        prefix = f"/api/{segs[1]}/"
        known = self.state.repos.keys() | self.state.aliases.keys()
        for n in (2, 1):
            if len(rest) == n:  # repo info: same as the main revision
                if (rtype, "/".join(map(urllib.parse.unquote, rest))) in known:
                    repo = self.find_repo(rtype, rest, url, prefix)
                    return self.api_revision(url, repo, self.find_revision(repo, "main"), head)
            elif len(rest) > n + 1 and rest[n] in ("revision", "tree"):
                repo = self.find_repo(rtype, rest[:n], url, prefix)
                rev = self.find_revision(repo, rest[n + 1])
                if rest[n] == "revision" and len(rest) == n + 2:
                    return self.api_revision(url, repo, rev, head)
                if rest[n] == "tree":
                    sub = "/".join(urllib.parse.unquote(s) for s in rest[n + 2:]).strip("/")
                    return self.api_tree(url, repo, rev, sub, head)
        # Nothing matched: if the repo part names no known repo, say so the
        # way the hub does.
        for n in (2, 1):
            if len(rest) >= n and (rtype, "/".join(map(urllib.parse.unquote, rest[:n]))) in known:
                raise HttpError(404, None, f"no route for {url.path}")
        raise HttpError(404, "RepoNotFound", f"Repository Not Found for {url.path}")

    def api_whoami(self, head: bool):
        """/api/whoami-v2: the hub's "who is this token" endpoint. A token is valid when
        some configured repo has it (the stand-in has no user accounts)."""
        auth = self.headers.get("Authorization") or ""
        tokens = {r.token for r in self.state.repos.values() if r.token}
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in tokens:
            raise HttpError(401, None, "Invalid credentials in Authorization header")
        return self.send_json(200, {"type": "user", "name": "stub-user",
                                    "auth": {"type": "access_token"}}, head)

    def api_revision(self, url, repo: Repo, rev: Revision, head: bool):
        q = urllib.parse.parse_qs(url.query)
        blobs = q.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p, fe in sorted(rev.files.items()):
            s = {"rfilename": p}
            if blobs:
                s.update(size=fe.size, blobId=fe.tree_oid)
                if fe.lfs:
                    s["lfs"] = {"sha256": fe.sha256, "size": fe.size,
                                "pointerSize": len(fe.pointer)}
            siblings.append(s)
        body = {"_id": rev.commit[:24], "id": repo.repo_id, "sha": rev.commit,
                "private": bool(repo.token), "gated": "manual" if repo.token else False,
                "disabled": False, "siblings": siblings}
        if repo.repo_type == "model":
            body["modelId"] = repo.repo_id
        self.send_json(200, body, head)

    def api_tree(self, url, repo: Repo, rev: Revision, sub: str, head: bool):
        q = urllib.parse.parse_qs(url.query)
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub + "/" if sub else ""
        if sub and not any(i["path"] == sub and i["type"] == "directory" for i in rev.tree):
            raise HttpError(404, "EntryNotFound", f"{sub} does not exist on {rev.name}",
                            {"X-Repo-Commit": rev.commit})
        items = [i for i in rev.tree if i["path"].startswith(prefix)
                 and (recursive or "/" not in i["path"][len(prefix):])]
        offset = 0
        if "cursor" in q:
            try:
                raw = q["cursor"][0]
                offset = int(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
                             .decode().split(":", 1)[1])
            except (ValueError, IndexError):
                raise HttpError(400, None, "bad cursor")
        page = items[offset: offset + self.state.page_size]
        headers = {"X-Repo-Commit": rev.commit}
        nxt = offset + len(page)
        if nxt < len(items):
            # An opaque cursor, like the real hub's, so clients must follow
            # the Link header verbatim rather than build their own.
            cursor = base64.urlsafe_b64encode(f"offset:{nxt}".encode()).decode().rstrip("=")
            params = [(k, v) for k, vs in q.items() if k != "cursor" for v in vs]
            params.append(("cursor", cursor))
            host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
            link = f"http://{host}{url.path}?{urllib.parse.urlencode(params)}"
            headers["Link"] = f'<{link}>; rel="next"'
        self.send_json(200, page, head, headers)

    def resolve(self, repo: Repo, raw_rev: str, path_segs: list[str], head: bool):
        rev = self.find_revision(repo, raw_rev)
        path = "/".join(urllib.parse.unquote(s) for s in path_segs)
        f = self.state.take_fault("resolve", [path], "Range" in self.headers,
                                  allowed=lambda f: f.status or f.kind == "drop")
        if f:
            if f.kind == "drop":
                self.abort_connection()
            return self.status_fault(f, head)
        fe = rev.files.get(path)
        if fe is None:
            # X-Repo-Commit lets clients record a .no_exist marker.
            raise HttpError(404, "EntryNotFound", f"{path} does not exist on {rev.name}",
                            {"X-Repo-Commit": rev.commit})
        if fe.lfs:
            etag = f'"{fe.sha256}"'
            headers = {"X-Repo-Commit": rev.commit, "ETag": etag, "X-Linked-Etag": etag,
                       "X-Linked-Size": str(fe.size),
                       "Location": self.state.lfs_location(fe.sha256),
                       "Content-Length": "0"}
            self.send_response(302)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        headers = {"X-Repo-Commit": rev.commit, "ETag": f'"{fe.git_sha1}"'}
        self.serve_file(fe, path, [path], head, headers)


class LfsHandler(BaseHandler):
    is_lfs_host = True

    def route(self, url, head: bool):
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})", url.path)
        obj = self.state.lfs_objects.get(m.group(1)) if m else None
        if obj is None:
            raise HttpError(404, None, f"no LFS object at {url.path}")
        fe, paths = obj
        self.serve_file(fe, fe.sha256, sorted(paths), head, {"ETag": f'"{fe.sha256}"'})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many parallel connections from the client

    def __init__(self, addr, handler, state: State, verbose: bool):
        self.state = state
        self.verbose = verbose
        super().__init__(addr, handler)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn), which
        # can stall for seconds on a machine without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # Clients hanging up mid-body are expected under fault injection.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, Dropped)):
            return
        super().handle_error(request, client_address)


def populate_lfs_store(state: State, store: str) -> None:
    os.makedirs(store, exist_ok=True)
    for sha, (fe, _paths) in state.lfs_objects.items():
        dst = os.path.join(store, sha)
        if os.path.exists(dst):
            continue
        try:
            os.link(fe.abspath, dst)
        except OSError:
            tmp = f"{dst}.{os.getpid()}.tmp"
            shutil.copyfile(fe.abspath, tmp)
            os.replace(tmp, dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--lfs-host", default="127.0.0.2")
    ap.add_argument("--lfs-port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--lfs-redirect-base", default=None,
                    help="302 LFS files to {base}/{sha256} instead of the built-in LFS host")
    ap.add_argument("--lfs-store", default=None,
                    help="hardlink every LFS object to DIR/{sha256} at startup")
    ap.add_argument("--page-size", type=int, default=50)
    ap.add_argument("--hash-cache", default=None,
                    help="JSON file caching file hashes across runs")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)

    with open(args.config) as f:
        config = json.load(f)
    repos = load_config(config, HashCache(args.hash_cache))
    state = State(repos, args.page_size, args.lfs_host, args.lfs_redirect_base)
    if args.lfs_store:
        populate_lfs_store(state, args.lfs_store)

    hub = Server((args.host, args.port), HubHandler, state, args.verbose)
    lfs = Server((args.lfs_host, args.lfs_port), LfsHandler, state, args.verbose)
    state.lfs_port = lfs.server_address[1]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                                daemon=True) for s in (hub, lfs)]
    for t in threads:
        t.start()

    tmp = f"{args.port_file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"port": hub.server_address[1], "lfs_port": lfs.server_address[1]}, f)
    os.replace(tmp, args.port_file)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    # Exit when the test process dies without stopping us (we get reparented),
    # so a crashed test run never leaves a server behind.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            break
    for s in (hub, lfs):
        s.shutdown()
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
