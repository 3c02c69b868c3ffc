"""A small HTTP/1.1 file server standing in for a CDN or mirror with a given link shape.

Serves ``root/<name>`` (GET/HEAD, one byte range per request, keep-alive) from threads in
this process, with knobs real servers have and nginx lacks:

* ``delay``: seconds of wait before each response (a far or busy server; ``tc netem`` is
  not available on these kernels),
* ``rate``: bytes/s per connection (a CDN's per-connection cap),
* ``backlog``: the listen backlog, and ``workers``: at most this many connections served
  at once (0 = no bound); a connection beyond them waits in the accept queue, and beyond
  the backlog its SYN is dropped, as with a small prefork mirror or a corporate proxy,
* ``idle_timeout``: an idle keep-alive connection is closed after this many seconds.

Every answered request is recorded in ``requests`` (conn, status, bytes, start, end in
time.time() seconds) for accounting; ``max_in_flight`` is the most requests answered at
once. Listens on 127.0.0.x only.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

_BLOCK = 256 * 1024


class SlowCdn:
    def __init__(self, root, host: str = "127.0.0.4", *, delay: float = 0.0, rate: float = 0,
                 backlog: int = 128, workers: int = 0, idle_timeout: float = 5.0):
        self.root = Path(root)
        self.host, self.delay, self.rate = host, delay, rate
        self.backlog, self.workers, self.idle_timeout = backlog, workers, idle_timeout
        self.requests: list[tuple[int, int, int, float, float]] = []
        self.connections = 0
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = threading.BoundedSemaphore(workers) if workers else None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "SlowCdn":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, 0))
        s.listen(self.backlog)
        s.settimeout(0.2)
        self._sock, self.port = s, s.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock:
            self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- serving ------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if self._pool and not self._pool.acquire(timeout=0.2):
                continue  # every worker busy: connections wait in the accept queue
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                if self._pool:
                    self._pool.release()
                continue
            with self._lock:
                self.connections += 1
                conn_id = self.connections
            threading.Thread(target=self._serve, args=(conn, conn_id), daemon=True).start()

    def _serve(self, conn: socket.socket, conn_id: int) -> None:
        buf = b""
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self.idle_timeout)
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    if len(buf) > 65536:
                        return
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                if not self._answer(conn, conn_id, head.decode("latin-1")):
                    return
        except OSError:
            pass
        finally:
            conn.close()
            if self._pool:
                self._pool.release()

    def _answer(self, conn: socket.socket, conn_id: int, head: str) -> bool:
        """Answers one request; False when the connection must close."""
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return False
        method, target, _ = parts
        headers = {}
        for ln in lines[1:]:
            name, _, value = ln.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = time.time()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._reply(conn, conn_id, method, target, headers, start)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, conn, conn_id: int, method: str, target: str, headers: dict,
               start: float) -> bool:
        if self.delay:
            time.sleep(self.delay)
        name = target.split("?", 1)[0].rsplit("/", 1)[-1]
        path = self.root / name
        if method not in ("GET", "HEAD") or not name or not path.is_file():
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        size = path.stat().st_size
        begin, end, status = 0, size, 200
        rng = headers.get("range", "")
        if rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].partition("-")
            try:
                if a:
                    begin, end = int(a), (int(b) + 1 if b else size)
                else:
                    begin, end = max(0, size - int(b)), size
            except ValueError:
                begin, end = 0, size
            end = min(end, size)
            if begin >= end:
                conn.sendall(f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes "
                             f"*/{size}\r\nContent-Length: 0\r\n\r\n".encode())
                return True
            status = 206
        reply = [f"HTTP/1.1 {status} {'Partial Content' if status == 206 else 'OK'}",
                 f"Content-Length: {end - begin}", "Accept-Ranges: bytes",
                 "Content-Type: application/octet-stream"]
        if status == 206:
            reply.append(f"Content-Range: bytes {begin}-{end - 1}/{size}")
        conn.sendall(("\r\n".join(reply) + "\r\n\r\n").encode())
        sent = 0
        if method == "GET":
            t0 = time.monotonic()
            with open(path, "rb") as f:
                while begin + sent < end:
                    if self.rate:
                        ahead = sent / self.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                    n = conn.sendfile(f, begin + sent, min(_BLOCK, end - begin - sent))
                    if n == 0:
                        return False
                    sent += n
        with self._lock:
            self.requests.append((conn_id, status, sent, start, time.time()))
        return headers.get("connection", "").lower() != "close"


def serve_forever_main() -> None:  # pragma: no cover - manual use
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--host", default="127.0.0.4")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--backlog", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    with SlowCdn(a.root, a.host, delay=a.delay, rate=a.rate, backlog=a.backlog,
                 workers=a.workers) as cdn:
        print(cdn.base_url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    serve_forever_main()
