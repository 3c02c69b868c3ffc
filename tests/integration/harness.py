"""Helpers for mx's integration tests (Python 3.11 stdlib only).

* ``make_repo`` writes deterministic fixture trees, multi-GB ones in seconds.
* ``HubStub`` runs hub_stub.py (the Hugging Face Hub stand-in) as a child
  process and wraps its ``/_control`` API.
* ``Nginx`` runs a throw-away nginx as the "CDN" for LFS blobs.
* ``run`` runs a command (mx) with a clean environment.

Every server is a child process in its own session, stopped by PID on exit,
and bound to 127.0.0.x only.
"""

from __future__ import annotations

import array
import functools
import hashlib
import json
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
HUB_STUB = HERE / "hub_stub.py"
NGINX_BIN = "/usr/sbin/nginx"
MIB = 1 << 20

# urllib would honour http_proxy even for 127.0.0.x on some setups; the
# tests must only ever talk to local servers.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on host a moment ago (racy; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Fixture content
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _base_block(seed) -> bytes:
    return random.Random(f"block:{seed}").randbytes(MIB)


def _file_tag(seed, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:8], "little")


def write_pseudo_random(dest: str | os.PathLike, size: int, seed=0, path: str = "") -> None:
    """Deterministic, file-specific bytes.

    Files up to 1 MiB are plain PRNG output. Bigger ones repeat one random
    1 MiB block but stamp (file tag, offset) every 4 KiB, so different files
    differ and every 4 KiB window of a file is unique: a chunk written at the
    wrong offset changes the file's hash, which a purely repeating pattern
    would hide."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if size <= MIB:
        dest.write_bytes(random.Random(f"{seed}:{path}").randbytes(size))
        return
    base = _base_block(seed)
    tags = array.array("Q", [_file_tag(seed, path)]) * (MIB // 4096)
    with open(dest, "wb") as f:
        for off in range(0, size, MIB):
            block = bytearray(base)
            q = memoryview(block).cast("Q")
            q[0::512] = tags
            q[1::512] = array.array("Q", range(off, off + MIB, 4096))
            f.write(block[: min(MIB, size - off)])


def make_repo(root: str | os.PathLike, files: dict, seed=0) -> Path:
    """Write a repo tree. files maps a '/'-separated path to an int size
    (pseudo-random content), bytes, or str (UTF-8 text). Returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, spec in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, int):
            write_pseudo_random(dest, spec, seed, rel)
        elif isinstance(spec, str):
            dest.write_bytes(spec.encode())
        else:
            dest.write_bytes(bytes(spec))
    return root


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1_file(path) -> str:
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """terminate, then kill after grace seconds; the child runs in its own
    session, so a kill takes its whole process group (nginx workers)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


# Cloud identity settings a developer's shell or a cloud VM may carry: never inherited.
_CLOUD_PREFIXES = ("HF_", "AWS_", "AZURE_", "GOOGLE_", "GCE_", "GCS_", "CLOUDSDK_", "MSI_",
                   "IDENTITY_", "METADATA_SERVER_")
# Where the credential chains would look for instance metadata (169.254.169.254, a real
# cloud's): a closed loopback port instead, so no test ever reaches beyond 127.0.0.0/8.
# Tests of those links set their own stand-ins over these.
_CLOSED = "127.0.0.1:9"
_METADATA_DEFAULTS = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{_CLOSED}",
                      "GCE_METADATA_HOST": _CLOSED,
                      "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://{_CLOSED}"}


def base_env() -> dict[str, str]:
    """os.environ without proxy settings, HF_* variables or cloud credentials, so a
    developer's own token, cache, endpoint or cloud identity can never leak into a test;
    instance-metadata lookups go to a closed loopback port."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy",
            "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
            "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE"}
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(_CLOUD_PREFIXES)}
    env.update(_METADATA_DEFAULTS)
    return env


def run(cmd, env: dict | None = None, timeout: float = 600, cwd=None,
        input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run cmd (list) with text output captured.

    env entries are applied on top of ``base_env()``; a value of None removes
    the variable. On timeout the child is killed and TimeoutExpired raised."""
    full = base_env()
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    return subprocess.run([str(c) for c in cmd], env=full, cwd=cwd, input=input,
                          capture_output=True, text=True, timeout=timeout, check=check)


def mx_binary() -> str:
    """$MX_BIN, else the first built mx found under the repo's build dirs."""
    if os.environ.get("MX_BIN"):
        return os.environ["MX_BIN"]
    repo = HERE.parent.parent
    for cand in ("build/src/cli/mx", "build/mx", "build/src/mx", "build/bin/mx", "build/release/mx",
                 "build/debug/mx"):
        p = repo / cand
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which("mx")
    if found:
        return found
    raise FileNotFoundError("mx binary not found: build it or set MX_BIN")


def http_get(base: str, path: str, headers=None, method="GET", timeout=15):
    """One plain HTTP/1.1 request to base ("http://host:port"): (status, lowercased headers,
    body). No redirects followed, no retries: what the server said."""
    host, port = base.replace("http://", "").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def http_json(url: str, method: str = "GET", body=None, headers: dict | None = None,
              timeout: float = 30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with _OPENER.open(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


# --------------------------------------------------------------------------
# Hub stub
# --------------------------------------------------------------------------


def _normalize_repos(repos: dict) -> dict:
    """Accept {"repos": {...}} or the bare mapping; keys may omit "model/";
    revision dirs may be Paths."""
    if isinstance(repos.get("repos"), dict):
        repos = repos["repos"]
    out = {}
    for key, rc in repos.items():
        if not key.startswith(("model/", "dataset/")):
            key = f"model/{key}"
        rc = dict(rc)
        rc["revisions"] = {r: str(Path(d).resolve()) for r, d in rc["revisions"].items()}
        out[key] = rc
    return {"repos": out}


class HubStub:
    """hub_stub.py as a child process: hub on 127.0.0.1, LFS host on 127.0.0.2.

    Usage::

        with HubStub(tmp, {"model/org/m": {"revisions": {"main": d}}}) as hub:
            env = {"HF_ENDPOINT": hub.endpoint}
            hub.set_faults([{"kind": "drop", "path": "*.safetensors"}])
    """

    def __init__(self, tmpdir, repos: dict, page_size: int = 50,
                 lfs_redirect_base: str | None = None, lfs_store=None,
                 hash_cache=None, verbose: bool = False, startup_timeout: float = 300,
                 host: str = "127.0.0.1", lfs_host: str = "127.0.0.2"):
        self.workdir = Path(tempfile.mkdtemp(prefix="hub-stub-", dir=tmpdir))
        self.config = _normalize_repos(repos)
        self.page_size = page_size
        self.lfs_redirect_base = lfs_redirect_base
        self.lfs_store = lfs_store
        self.hash_cache = hash_cache
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.host, self.lfs_host = host, lfs_host
        self.log_path = self.workdir / "hub_stub.log"
        self.proc: subprocess.Popen | None = None
        self.port = self.lfs_port = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "HubStub":
        cfg = self.workdir / "config.json"
        cfg.write_text(json.dumps(self.config, indent=1))
        port_file = self.workdir / "ports.json"
        cmd = [sys.executable, str(HUB_STUB), "--config", str(cfg),
               "--host", self.host, "--port", "0",
               "--lfs-host", self.lfs_host, "--lfs-port", "0",
               "--port-file", str(port_file), "--page-size", str(self.page_size)]
        if self.lfs_redirect_base:
            cmd += ["--lfs-redirect-base", self.lfs_redirect_base]
        if self.lfs_store:
            cmd += ["--lfs-store", str(self.lfs_store)]
        if self.hash_cache:
            cmd += ["--hash-cache", str(self.hash_cache)]
        if self.verbose:
            cmd.append("--verbose")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=base_env())
        deadline = time.monotonic() + self.startup_timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub_stub exited with {self.proc.returncode}:\n"
                                   f"{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub_stub did not start:\n{_tail(self.log_path)}")
            time.sleep(0.02)
        ports = json.loads(port_file.read_text())
        self.port, self.lfs_port = ports["port"], ports["lfs_port"]
        return self

    def stop(self) -> None:
        _stop_process(self.proc)

    def __enter__(self) -> "HubStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def lfs_endpoint(self) -> str:
        return f"http://{self.lfs_host}:{self.lfs_port}"

    # -- control API --------------------------------------------------------

    def set_faults(self, faults: list[dict]) -> None:
        """Replace the fault list; see hub_stub.Fault for the fields."""
        http_json(f"{self.endpoint}/_control/faults", "POST", {"faults": list(faults)})

    def faults(self) -> list[dict]:
        """Current faults with their ``remaining`` and ``triggered`` counts."""
        return http_json(f"{self.endpoint}/_control/faults")["faults"]

    def stats(self) -> dict:
        return http_json(f"{self.endpoint}/_control/stats")

    def reset(self) -> None:
        """Zero the stats and clear all faults."""
        http_json(f"{self.endpoint}/_control/reset", "POST", {})

    def files(self) -> dict:
        """{"model/org/name": {"token", "revisions": {rev: {"commit", "files":
        {path: {size, lfs, git_sha1, sha256, tree_oid, abspath}}}}}}"""
        return http_json(f"{self.endpoint}/_control/files")

    def commit(self, repo: str, rev: str = "main") -> str:
        """The 40-hex commit the server reports for repo@rev, asked through
        the public revision API. repo: "org/name" (model) or "dataset/org/name"."""
        key = repo if repo.startswith(("model/", "dataset/")) else f"model/{repo}"
        rtype, _, repo_id = key.partition("/")
        token = self.config["repos"].get(key, {}).get("token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = (f"{self.endpoint}/api/{rtype}s/{repo_id}/revision/"
               f"{urllib.parse.quote(rev, safe='')}")
        return http_json(url, headers=headers)["sha"]


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------


class Nginx:
    """A private nginx serving root_dir at ``base_url`` (e.g. the hub stub's
    --lfs-store), to act as the LFS CDN. Any request carrying Authorization
    is answered 400 so a token leak fails the test loudly."""

    def __init__(self, tmpdir, root_dir, host: str = "127.0.0.3",
                 limit_rate: str | None = None, startup_timeout: float = 15):
        self.workdir = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmpdir))
        self.root_dir = Path(root_dir).resolve()
        self.host = host
        self.limit_rate = limit_rate
        self.startup_timeout = startup_timeout
        self.conf_path = self.workdir / "nginx.conf"
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _config(self, port: int) -> str:
        w = self.workdir
        # Modules compiled out reject their *_temp_path directive, and those
        # compiled in try to create their default (root-owned) temp dirs, so
        # point exactly the present ones into the work dir.
        try:
            info = subprocess.run([NGINX_BIN, "-V"], capture_output=True, text=True).stderr
        except OSError:
            info = ""
        temp = ["client_body_temp_path"]
        for mod in ("proxy", "fastcgi", "uwsgi", "scgi"):
            if f"--without-http_{mod}_module" not in info:
                temp.append(f"{mod}_temp_path")
        temp_lines = "\n".join(f"    {d} {w / d};" for d in temp)
        limit = f"            limit_rate {self.limit_rate};\n" if self.limit_rate else ""
        # Workers run as root only when we are root: otherwise nginx would
        # switch them to "nobody", which cannot read a private tmp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 2;
daemon off;
master_process on;
pid {w / 'nginx.pid'};
error_log {self.error_log} warn;
events {{ worker_connections 1024; }}
http {{
    log_format mx '$remote_addr "$request" $status $body_bytes_sent '
                  'range="$http_range" auth=$mx_auth_present';
    map $http_authorization $mx_auth_present {{ "" 0; default 1; }}
    access_log {self.access_log} mx;
{temp_lines}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen {self.host}:{port};
        server_name localhost;
        location / {{
            root {self.root_dir};
            if ($http_authorization) {{ return 400; }}
{limit}        }}
    }}
}}
"""

    def start(self) -> "Nginx":
        last_err = ""
        for _ in range(5):  # free_port is racy: retry on a bind failure
            port = free_port(self.host)
            self.conf_path.write_text(self._config(port))
            for d in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
                      "uwsgi_temp_path", "scgi_temp_path"):
                (self.workdir / d).mkdir(exist_ok=True)
            with open(self.workdir / "stderr.log", "ab") as err:
                self.proc = subprocess.Popen(
                    [NGINX_BIN, "-c", str(self.conf_path), "-p", str(self.workdir),
                     "-e", str(self.error_log)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True)
            if self._wait_ready(port):
                self.port = port
                return self
            last_err = _tail(self.error_log) + _tail(self.workdir / "stderr.log")
            _stop_process(self.proc)
            if "Address already in use" not in last_err:
                break
        raise RuntimeError(f"nginx did not start:\n{last_err}")

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                # Any HTTP answer (404 for "/") means a worker is serving.
                _OPENER.open(f"http://{self.host}:{port}/", timeout=1).close()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        _stop_process(self.proc)

    def access_log_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except OSError:
            return []

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
