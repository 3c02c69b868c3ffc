"""Storage peers for streamer tests: real s3rver and azurite (npm), seeded with awscli and
an Azure Put Blob written here; a fault-injecting HTTP proxy; a safetensors writer. All on
127.0.0.x, stopped by PID."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from harness import _stop_process, base_env, free_port
from http_peers import LoopbackHttpServer, QuietHandler, read_body, relay_head

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F64": 8, "I8": 1}


def write_safetensors(path, tensors: dict, seed: int = 0, header_pad: int = 0) -> dict:
    """tensors: name -> (dtype, shape). Returns name -> bytes. Writes a valid file whose
    tensors are ordered by descending alignment then name; `header_pad` adds metadata to
    make a large header."""
    rng = random.Random(seed)
    order = sorted(tensors.items(), key=lambda kv: (-DTYPES[kv[1][0]], kv[0]))
    header, data, offset, out = {}, [], 0, {}
    if header_pad:
        header["__metadata__"] = {"format": "pt", "pad": "x" * header_pad}
    for name, (dtype, shape) in order:
        n = DTYPES[dtype]
        for d in shape:
            n *= d
        blob = rng.randbytes(n) if n < (1 << 20) else (rng.randbytes(1 << 20) * (n // (1 << 20) + 1))[:n]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        out[name] = blob
        data.append(blob)
        offset += n
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in data:
            f.write(blob)
    return out


def write_model(root, shards: int = 3, seed: int = 0, big: int = 1 << 20, header_pad: int = 0) -> dict:
    """A sharded checkpoint with an index, mixed dtypes, empty and rank-0 tensors.
    Returns "file/tensor" -> bytes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected, weight_map = {}, {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layers.{i}.w": ("BF16", (big // 2,)), f"layers.{i}.b": ("F32", (1000 + i,)),
                   f"layers.{i}.scale": ("F64", ()), f"layers.{i}.empty": ("F16", (0, 3)),
                   f"layers.{i}.mask": ("BOOL", (17,)), f"layers.{i}.idx": ("I64", (5, 7))}
        got = write_safetensors(root / name, tensors, seed=seed * 100 + i, header_pad=header_pad if i == 0 else 0)
        for t, b in got.items():
            expected[f"{name}/{t}"] = b
            weight_map[t] = name
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(len(b) for b in expected.values())}, "weight_map": weight_map}))
    (root / "config.json").write_text("{}")
    return expected


class S3rver:
    def __init__(self, tmpdir, bucket="models"):
        self.dir = Path(tempfile.mkdtemp(prefix="s3rver-", dir=tmpdir))
        self.port = free_port()
        self.bucket = bucket
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["s3rver", "--directory", str(self.dir), "--address", "127.0.0.1",
                                      "--port", str(self.port), "--silent", "--configure-bucket", self.bucket],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port)
        return self

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint=None):
        return {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint or self.endpoint}

    def upload_dir(self, local, prefix):
        env = base_env()
        env.update(self.env())
        r = subprocess.run(["/usr/bin/aws", "s3", "cp", "--recursive", "--only-show-errors", str(local),
                            f"s3://{self.bucket}/{prefix}", "--endpoint-url", self.endpoint],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    def stop(self):
        _stop_process(self.proc)


class Azurite:
    def __init__(self, tmpdir, container="models"):
        self.dir = Path(tempfile.mkdtemp(prefix="azurite-", dir=tmpdir))
        self.port = free_port()
        self.container = container
        self.proc = None

    def _extra_args(self) -> list[str]:
        """More azurite-blob options (AzuriteOAuth: --oauth and TLS)."""
        return []

    def start(self):
        self.proc = subprocess.Popen(["azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                                      "--location", str(self.dir), "--silent", "--skipApiVersionCheck", "--loose",
                                      *self._extra_args()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port)
        self._request("PUT", f"/{AZURITE_ACCOUNT}/{self.container}", {"restype": "container"}, b"")
        return self

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def env(self, endpoint=None):
        return {"AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT, "AZURE_STORAGE_KEY": AZURITE_KEY,
                "AZURE_STORAGE_BLOB_ENDPOINT": endpoint or self.endpoint}

    def _request(self, method, path, query, body, extra=None):
        # SharedKey, written independently of mx's C++ signer (a cross-check of both).
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
        headers = {"x-ms-date": date, "x-ms-version": "2021-08-06"}
        headers.update(extra or {})
        length = str(len(body)) if body else ""
        canon_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
        canon_res = f"/{AZURITE_ACCOUNT}{path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
        to_sign = f"{method}\n\n\n{length}\n\n{headers.get('Content-Type', '')}\n\n\n\n\n\n\n{canon_headers}{canon_res}"
        sig = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest())
        headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{sig.decode()}"
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        conn.request(method, urllib.parse.quote(path) + q, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        conn.close()
        if r.status >= 300:
            raise RuntimeError(f"azurite {method} {path}: {r.status}")

    def upload_dir(self, local, prefix):
        local = Path(local)
        for p in sorted(local.rglob("*")):
            if p.is_file():
                name = f"{prefix}/{p.relative_to(local)}"
                self._request("PUT", f"/{AZURITE_ACCOUNT}/{self.container}/{name}", {}, p.read_bytes(),
                              {"x-ms-blob-type": "BlockBlob"})

    def stop(self):
        _stop_process(self.proc)


class FaultProxy(LoopbackHttpServer):
    """HTTP proxy in front of one upstream: forwards everything as is (Host included, so
    signatures still verify) and injects faults into GET responses with a Range header:
    'drop' (half the body, then reset), '503', 'corrupt' (flip bytes), 'short' (close early)."""

    def __init__(self, upstream_port: int, faults: list[str]):
        self.upstream_port = upstream_port
        self.faults = list(faults)
        self.lock = threading.Lock()
        self.triggered = []
        proxy = self

        class Handler(QuietHandler):
            def _forward(self):
                body = read_body(self) or None
                fault = None
                if self.command == "GET" and "Range" in self.headers:
                    first, _, last = self.headers["Range"].partition("=")[2].partition("-")
                    size = int(last) - int(first) + 1 if first and last else 0
                    with proxy.lock:
                        if proxy.faults and (not proxy.faults[0].endswith("_big") or size > 65536):
                            fault = proxy.faults.pop(0).removesuffix("_big")
                            proxy.triggered.append(fault)
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                r = conn.getresponse()
                data = r.read()
                conn.close()
                relay_head(self, r, len(data))
                if self.command == "HEAD":
                    return
                if fault == "corrupt" and data:
                    data = bytes(b ^ 0x5A for b in data)
                if fault in ("drop", "short") and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if fault == "drop":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = _forward

        super().__init__(Handler)


def _wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")
