"""A deliberately small RESP client for drills: one blocking connection, no retries.

A drill must know, for every request, whether it certainly never reached the node or
may have: a retrying client (redis-py retries on timeouts by default) would turn one
write into two, and a pool would hide which connection failed. So this client sends
one request, waits for one reply, and says precisely how it failed:

- `NotSent`: the connection could not be made, or it broke before a byte of the request
  left: nothing was applied.
- `Lost`: the request left, and then the answer did not come (timeout, connection
  dropped): the outcome is unknown, and the connection is closed (a late reply must
  never be taken for the answer to the next request).

Error replies come back as `RespError` values, not exceptions. Frames are parsed by
hiredis.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis


class NotSent(Exception):
    pass


class Lost(Exception):
    pass


class RespError(Exception):
    """An error reply, e.g. RespError('TRYAGAIN no leader'), returned (not raised) by `call`."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespConn:
    def __init__(self, path: str, timeout: float = 5.0, connect_timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.reader: Any = None

    def connect(self) -> None:
        if self.sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.connect_timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise NotSent(f"connect {self.path}: {e.strerror or e}") from None
        s.settimeout(self.timeout)
        self.sock = s
        self.reader = hiredis.Reader(replyError=RespError)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.reader = None

    def call(self, *args: bytes | str | int) -> Any:
        """One request, one reply (bytes, int, None, list, or a RespError)."""
        self.connect()
        assert self.sock is not None
        data = encode(args)
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(data[sent:])
        except OSError as e:
            self.close()
            if sent == 0:
                raise NotSent(f"send: {e.strerror or e}") from None
            raise Lost(f"send: {e.strerror or e}") from None
        try:
            while True:
                reply = self.reader.gets()
                if reply is not False:
                    return reply
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Lost("connection closed by the node")
                self.reader.feed(chunk)
        except TimeoutError:
            self.close()
            raise Lost(f"no reply within {self.timeout:.1f}s") from None
        except OSError as e:
            self.close()
            raise Lost(f"recv: {e.strerror or e}") from None
        except hiredis.ProtocolError as e:
            self.close()
            raise Lost(f"bad reply: {e}") from None
        except Lost:
            self.close()
            raise

    def __enter__(self) -> RespConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
