"""A TCP proxy between a gRPC client and mx-server that damages what the server sends, as a
faulty middlebox would, while keeping HTTP/2 framing intact so the client sees a well-formed
stream: it parses the server's frames (9-byte headers) and edits only DATA frame payloads.

Faults (set on the proxy, applied once unless said otherwise):
- flip_after(n):          XOR one byte in the middle of the first DATA frame payload that
                          starts after n DATA bytes.
- replace(old, new, min_frame): in every DATA frame of at least min_frame bytes, replace
                          the bytes `old` by `new` (same length), e.g. a commit hash by
                          another one (large frames carry file chunks, not the small
                          status and listing answers).
The proxy binds 127.0.0.1 on a free port; stop() closes the listener and every connection."""

from __future__ import annotations

import socket
import threading

FRAME_DATA = 0


class GrpcFaultProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.flip_at: int | None = None
        self.replacement: tuple[bytes, bytes, int] | None = None
        self.flipped = 0
        self.replaced = 0
        self.data_bytes = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def flip_after(self, n: int) -> None:
        with self.lock:
            self.flip_at = n

    def replace(self, old: bytes, new: bytes, min_frame: int = 0) -> None:
        assert len(old) == len(new)
        with self.lock:
            self.replacement = (old, new, min_frame)

    def stop(self) -> None:
        self.stopped = True
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._frames, args=(server, client), daemon=True).start()

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            got = sock.recv(n - len(buf))
            if not got:
                return None
            buf += got
        return bytes(buf)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _edit(self, payload: bytes) -> bytes:
        with self.lock:
            start = self.data_bytes
            self.data_bytes += len(payload)
            if self.flip_at is not None and start >= self.flip_at and len(payload) > 64:
                self.flip_at = None
                self.flipped += 1
                mid = len(payload) // 2
                payload = payload[:mid] + bytes([payload[mid] ^ 0x5A]) + payload[mid + 1:]
            if self.replacement and len(payload) >= self.replacement[2]:
                old, new, _ = self.replacement
                self.replaced += payload.count(old)
                payload = payload.replace(old, new)
        return payload

    def _frames(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                header = self._recv_exact(src, 9)
                if header is None:
                    break
                length = int.from_bytes(header[:3], "big")
                payload = self._recv_exact(src, length) if length else b""
                if payload is None:
                    break
                if header[3] == FRAME_DATA and length:
                    payload = self._edit(payload)
                dst.sendall(header + payload)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
