"""Helpers for tests of mx-server: Python gRPC stubs generated from proto/ at test time
(never committed), a real mx-server process, a real redis-server. All on 127.0.0.x,
stopped by PID."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import grpc

from harness import HubStub, _stop_process, base_env, free_port, mx_binary

REPO = Path(__file__).resolve().parent.parent.parent
PROTO_DIR = REPO / "proto"
_GEN = None


def stubs():
    """Generates modelexpress *_pb2 / *_pb2_grpc modules once per process; returns them
    as a namespace-like dict: stubs()["model_pb2"]."""
    global _GEN
    if _GEN is None:
        out = Path(tempfile.mkdtemp(prefix="mx-proto-py-"))
        protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "modelexpress").glob("*.proto"))
        subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
                        "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin", *protos],
                       check=True)
        sys.path.insert(0, str(out))
        _GEN = {}
        for name in ("health", "api", "model", "p2p"):
            _GEN[f"{name}_pb2"] = importlib.import_module(f"modelexpress.{name}_pb2")
            _GEN[f"{name}_pb2_grpc"] = importlib.import_module(f"modelexpress.{name}_pb2_grpc")
    return _GEN


def server_binary() -> str:
    return str(Path(mx_binary()).parent.parent / "server" / "mx-server")


class MxServer:
    """One mx-server process on free loopback ports."""

    def __init__(self, tmpdir, cache_dir, env: dict | None = None, args: list | None = None,
                 host: str = "127.0.0.1"):
        self.tmp = Path(tempfile.mkdtemp(prefix="mx-server-", dir=tmpdir))
        self.cache_dir = Path(cache_dir)
        self.env = env or {}
        self.args = [str(a) for a in (args or [])]
        self.host = host
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp / "server.log"

    def start(self, wait: bool = True) -> "MxServer":
        self.port, self.mirror_port, self.metrics_port = (free_port(self.host) for _ in range(3))
        env = base_env()
        env.update({"MODEL_EXPRESS_CACHE_DIRECTORY": str(self.cache_dir),
                    "MODEL_EXPRESS_SERVER_HOST": self.host,
                    "MODEL_EXPRESS_SERVER_PORT": str(self.port),
                    "MX_MIRROR_PORT": str(self.mirror_port),
                    "MODEL_EXPRESS_SERVER_METRICS_PORT": str(self.metrics_port)})
        env.update({k: str(v) for k, v in self.env.items()})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([server_binary(), *self.args], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def mirror(self) -> str:
        return f"http://{self.host}:{self.mirror_port}"

    def wait_ready(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mx-server exited: {self.log_text()}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                    return
            except grpc.FutureTimeoutError:
                time.sleep(0.1)
        raise RuntimeError(f"mx-server not ready: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc:
            _stop_process(self.proc)
            self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        # Sanitizer builds (make sanitize): a report from the server, leaks at exit
        # included, fails the test that ran it.
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if "Sanitizer" in text or "runtime error:" in text:
            raise AssertionError("mx-server sanitizer report:\n" + text[-6000:])

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RedisServer:
    def __init__(self, tmpdir, port: int | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=tmpdir))
        self.port = port or free_port()
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class HubAndServersCase(unittest.TestCase):
    """A hub stand-in for the whole class (repos from make_repos(tmp)), a fresh cache for
    each test, and mx-servers made with server() that are stopped after each test."""

    PREFIX = "mx-test-"

    @classmethod
    def make_repos(cls, tmp: Path) -> dict:
        raise NotImplementedError  # each test class names its repos

    @classmethod
    def server_env(cls) -> dict:
        return {"HF_ENDPOINT": cls.hub.endpoint}

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix=cls.PREFIX))
        cls.hub = HubStub(cls.tmp, cls.make_repos(cls.tmp)).start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.hub.reset()
        self.cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.tmp))
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.stop()

    def server(self, env=None, args=None, start=True, cache=None) -> MxServer:
        e = self.server_env()
        e.update(env or {})
        s = MxServer(self.tmp, cache or self.cache, env=e, args=args)
        self.servers.append(s)
        return s.start() if start else s
