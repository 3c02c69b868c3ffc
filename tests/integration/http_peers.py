"""Plumbing shared by the in-process HTTP stand-ins (aws_token_peers, azure_token_peers,
google_token_peers, storage_peers.FaultProxy): a threaded http.server bound to a loopback
address on a free port, optionally over TLS, run in a daemon thread; a quiet HTTP/1.1
handler base; and helpers to read a request body, answer, and relay an upstream answer."""

from __future__ import annotations

import http.server
import socketserver
import ssl
import sys
import threading
from pathlib import Path


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    quiet_disconnects = False

    def handle_error(self, request, client_address):
        if self.quiet_disconnects and isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class LoopbackHttpServer:
    """A threaded http.server on host:<free port> running `handler_cls`, over TLS when `tls`
    is (cert.pem, key.pem). Sets `server`, `port` and `thread`; start() serves, stop()
    shuts it down. `quiet_disconnects`: don't print a traceback for a client that reset
    the connection. Subclasses that bind later (in start()) call listen() themselves."""

    def __init__(self, handler_cls, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None,
                 quiet_disconnects: bool = False):
        self.listen(handler_cls, host, tls, quiet_disconnects)

    def listen(self, handler_cls, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None,
               quiet_disconnects: bool = False):
        self.server = _ThreadingServer((host, 0), handler_cls)
        self.server.quiet_disconnects = quiet_disconnects
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.server.server_address[0]}:{self.port}"


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) and no access log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass


def read_body(h) -> bytes:
    """The request body, as long as its Content-Length says (b"" without one)."""
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


def reply(h, status: int, body: bytes | str = b"", ctype: str = "application/json",
          headers: dict | None = None, head: bool = False):
    """Answer with `body` (str is UTF-8 encoded), its Content-Type and Content-Length and
    any extra `headers`; `head`: headers only (a HEAD request)."""
    if isinstance(body, str):
        body = body.encode()
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    if not head:
        h.wfile.write(body)


def relay_head(h, upstream, length: int):
    """Send an upstream http.client response's status and headers, with Content-Length
    `length` in place of its framing headers (the body was read whole)."""
    h.send_response(upstream.status)
    for k, v in upstream.getheaders():
        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
            h.send_header(k, v)
    h.send_header("Content-Length", str(length))
    h.end_headers()
