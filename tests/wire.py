"""A raw RESP conversation over a socket, for tests that must see exact bytes and ordering."""
from __future__ import annotations

import socket

import hiredis


def cmd(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Wire:
    """Send bytes, read back n parsed replies (errors come back as hiredis.ReplyError objects)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout)
        self.reader = hiredis.Reader()
        self.raw_log = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, *args):
        self.send(cmd(*args))
        return self.read(1)[0]

    def read(self, n: int) -> list:
        out = []
        while len(out) < n:
            r = self.reader.gets()
            if r is not False:
                out.append(r)
                continue
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"closed after {len(out)} of {n} replies")
            self.raw_log += data
            self.reader.feed(data)
        return out

    def read_raw_until_closed(self) -> bytes:
        chunks = []
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
