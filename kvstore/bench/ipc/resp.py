"""RESP over byte streams: anonymous pipes, FIFOs, UNIX sockets and TCP, one server loop.

Every byte-stream mechanism speaks the same RESP `GET key` (hiredis parses on both ends)
and is served by the same single-threaded epoll loop, so the rows differ only by the
transport under them.
"""

from __future__ import annotations

import os
import selectors
import socket
from pathlib import Path
from typing import Any

import hiredis

from kvstore.bench.common import Fd
from kvstore.bench.ipc.base import Mechanism, Ready, Setup

NIL = b"$-1\r\n"


def answer(req: Any, data: dict[bytes, bytes]) -> bytes:
    if isinstance(req, list) and req:
        cmd = req[0].upper()
        if cmd == b"GET" and len(req) == 2:
            v = data.get(req[1])
            return NIL if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
        if cmd == b"PING":
            return b"+PONG\r\n"
    return b"-ERR unknown command\r\n"


def write_all(fd: int, buf: bytes) -> None:
    view = memoryview(buf)
    while view:
        view = view[os.write(fd, view):]


class _Chan:
    __slots__ = ("rfd", "wfd", "reader", "sock")

    def __init__(self, rfd: int, wfd: int, sock: socket.socket | None = None) -> None:
        self.rfd, self.wfd, self.sock = rfd, wfd, sock
        self.reader = hiredis.Reader()


def serve_streams(data: dict[bytes, bytes], pairs: list[tuple[int, int]], listener: socket.socket | None,
                  ready: Ready, info: Any) -> None:
    """Answer RESP requests on every (read fd, write fd) pair and every accepted connection."""
    sel = selectors.DefaultSelector()
    for rfd, wfd in pairs:
        sel.register(rfd, selectors.EVENT_READ, _Chan(rfd, wfd))
    if listener is not None:
        listener.listen(256)
        sel.register(listener, selectors.EVENT_READ, None)
    ready(info)
    select, read = sel.select, os.read
    while True:
        for key, _ in select():
            ch = key.data
            if ch is None:
                assert listener is not None
                s, _ = listener.accept()
                if s.family != socket.AF_UNIX:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(s, selectors.EVENT_READ, _Chan(s.fileno(), s.fileno(), s))
                continue
            try:
                chunk = read(ch.rfd, 65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                sel.unregister(ch.rfd)
                if ch.sock is not None:
                    ch.sock.close()
                continue
            r = ch.reader
            r.feed(chunk)
            out = []
            req = r.gets()
            while req is not False:
                out.append(answer(req, data))
                req = r.gets()
            if out:
                try:
                    write_all(ch.wfd, out[0] if len(out) == 1 else b"".join(out))
                except (BrokenPipeError, ConnectionError):
                    pass


class RespFdConn:
    """A blocking RESP client over a write fd and a read fd (the same fd for a socket)."""

    def __init__(self, wfd: int, rfd: int, keep: Any = None) -> None:
        self.wfd, self.rfd, self._keep = wfd, rfd, keep
        self.reader = hiredis.Reader()

    def get(self, key: bytes) -> bytes | None:
        os.write(self.wfd, b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        r = self.reader
        reply = r.gets()
        while reply is False:
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise ConnectionError("server closed the stream")
            r.feed(chunk)
            reply = r.gets()
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._keep is not None:
            self._keep.close()
        else:
            for fd in {self.wfd, self.rfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


class UnixSocketResp(Mechanism):
    name = "unix"
    title = "UNIX socket"
    server_model = "1 thread, epoll"

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        path = str(workdir / f"resp-{uid}.sock")
        s = Setup(server_args=path, client_args=[path] * nclients)
        s.owned.paths.append(path)
        return s

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(args)
        os.chmod(args, 0o600)
        serve_streams(data, [], ls, ready, args)

    def connect(self, args: Any, info: Any) -> RespFdConn:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(info)
        return RespFdConn(s.fileno(), s.fileno(), s)


class TcpResp(Mechanism):
    name = "tcp"
    title = "TCP loopback"
    server_model = "1 thread, epoll"

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        serve_streams(data, [], ls, ready, ls.getsockname()[1])

    def connect(self, args: Any, info: Any) -> RespFdConn:
        s = socket.create_connection(("127.0.0.1", info))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return RespFdConn(s.fileno(), s.fileno(), s)


class AnonPipe(Mechanism):
    name = "pipe"
    title = "anonymous pipe"
    server_model = "1 thread, epoll; a pipe pair per client"

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        s = Setup()
        pairs = []
        for _ in range(nclients):
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            s.owned.fds += [req_r, req_w, resp_r, resp_w]
            pairs.append((Fd(req_r), Fd(resp_w)))
            s.client_args.append((Fd(req_w), Fd(resp_r)))
        s.server_args = pairs
        return s

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        serve_streams(data, [(r.fd, w.fd) for r, w in args], None, ready, None)

    def connect(self, args: Any, info: Any) -> RespFdConn:
        w, r = args
        return RespFdConn(w.fd, r.fd)


class NamedPipe(Mechanism):
    name = "fifo"
    title = "FIFO"
    server_model = "1 thread, epoll; a FIFO pair per client"

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        s = Setup()
        for i in range(nclients):
            req, resp = str(workdir / f"fifo-{uid}-{i}.req"), str(workdir / f"fifo-{uid}-{i}.resp")
            os.mkfifo(req, 0o600)
            os.mkfifo(resp, 0o600)
            s.owned.paths += [req, resp]
            s.client_args.append((req, resp))
        s.server_args = list(s.client_args)
        return s

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        # O_RDWR: opening never blocks, and the server never reads EOF between clients
        pairs = [(os.open(req, os.O_RDWR), os.open(resp, os.O_RDWR)) for req, resp in args]
        serve_streams(data, pairs, None, ready, None)

    def connect(self, args: Any, info: Any) -> RespFdConn:
        req, resp = args
        return RespFdConn(os.open(req, os.O_WRONLY), os.open(resp, os.O_RDONLY))
