"""The RESP server on a node's UNIX socket: listening, access control, lifecycle.

RESP2, and RESP3 after `HELLO 3`, so that redis-cli, redis-py and redis-benchmark work
unchanged. Each connection is a `Connection` (connection.py); commands are in
commands.py; everything that touches state goes through the `Backend`.

Access: the socket file is created with `socket_mode` (0600 by default) and every
connection's peer uid is checked with SO_PEERCRED against `allowed_uids`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import stat
import time
from collections.abc import Iterable
from typing import Any

from kvstore.errors import KVError
from kvstore.local.backend import Backend
from kvstore.local.commands import Commands, Session
from kvstore.local.connection import Connection, error_reply
from kvstore.local.fast import bulk
from kvstore.local.resp import NULL3, QUEUED_NULL2, Limits

__all__ = ["Limits", "RespServer", "bind_unix"]

log = logging.getLogger("kvstore.local.server")


class RespServer:
    def __init__(
        self,
        backend: Backend,
        path: str,
        *,
        limits: Limits = Limits(),
        socket_mode: int = 0o600,
        allowed_uids: set[int] | None = None,
        sock: socket.socket | None = None,
        internal: bool = False,
    ) -> None:
        """`sock`: an already bound, listening socket (worker processes share one).

        `internal`: also serve the private commands a worker forwards to its node
        (KVS.WRITE, KVS.BARRIER); only for the node's internal socket.
        """
        self.backend = backend
        self.path = path
        self.limits: Limits = limits
        self.socket_mode = socket_mode
        self.allowed_uids = {os.getuid(), 0} if allowed_uids is None else set(allowed_uids)
        self.socket = sock
        self._own_path = sock is None
        self.commands: Commands = Commands(backend, limits, self, internal=internal)
        self._get_uncached: Any = self.commands.fast.get_uncached
        self.started = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        self.conns: set[Connection] = set()
        # Replies of the hot path, written once every connection that was ready has been
        # read (see Connection.data_received): [transport, bytes, transport, bytes, ...]
        self.outbox: list[Any] = []
        # GETs of the outbox still to read (defer_read): (outbox index, key, protocol)
        self.reads: list[tuple[int, bytes, int]] = []
        self._call_soon: Any = None
        self._flush_cb: Any = None
        self._flush_ctx: Any = None
        self._next_id = 0
        self.closed = False
        self.stats: dict[str, int] = {
            "total_connections_received": 0,
            "total_commands_processed": 0,
            "rejected_connections": 0,
            "protocol_errors": 0,
            "error_replies": 0,
        }

    # -- ServerView ----------------------------------------------------------------------

    def sessions(self) -> Iterable[Session]:
        return [c.session for c in self.conns]

    def counters(self) -> dict[str, int]:
        return {"connected_clients": len(self.conns), **self.stats}

    # -- lifecycle -----------------------------------------------------------------------

    def defer_write(self, transport: Any, data: bytes) -> None:
        """Write `data` once the event loop has run the callbacks of this round of I/O:
        like Redis, which answers the clients it read after it has read them all. The
        client then finds several replies ready per wakeup, where a write each would wake
        it for every one (on this VM a wakeup of a sleeping process costs more than the
        write itself)."""
        box = self.outbox
        if not box:
            self.schedule_flush()
        box.append(transport)
        box.append(data)

    def defer_read(self, transport: Any, key: bytes, proto: int) -> None:
        """defer_write of the reply to `GET key`, read from the store when the outbox is
        written: the cache misses of every client of this round of I/O share one read
        transaction (a client that waits for each reply sends one GET per round, and a
        transaction costs about as much as the lookup itself)."""
        box = self.outbox
        if not box:
            self.schedule_flush()
        self.reads.append((len(box) + 1, key, proto))
        box.append(transport)
        box.append(None)

    def _answer_reads(self, box: list[Any]) -> None:
        reads = self.reads
        self.reads = []
        get = self._get_uncached
        try:
            values: list[bytes | None] | None = get([k for _, k, _ in reads])
        except Exception:  # then one by one: each GET gets the answer the general path gives it
            values = None
        for n, (i, k, proto) in enumerate(reads):
            if values is not None:
                v = values[n]
            else:
                try:
                    v = get([k])[0]
                except Exception as e:
                    self.stats["error_replies"] += 1
                    box[i] = error_reply(e, [b"GET", k])
                    continue
            box[i] = (NULL3 if proto == 3 else QUEUED_NULL2) if v is None else bulk(v)

    def schedule_flush(self) -> None:
        """Run flush_outbox after this round of I/O (call when the outbox becomes non-empty)."""
        if self._call_soon is None:
            self._call_soon = asyncio.get_running_loop().call_soon
            self._flush_cb = self.flush_outbox
            self._flush_ctx = contextvars.Context()  # it reads no context variable: no copy
        self._call_soon(self._flush_cb, context=self._flush_ctx)

    def flush_outbox(self) -> None:
        """Write the deferred replies now (also before anything else a connection writes,
        or closes: its replies stay in order)."""
        box = self.outbox
        if not box:
            return
        if self.reads:
            self._answer_reads(box)
        items = iter(box[:])
        box.clear()
        for t, data in zip(items, items, strict=True):
            if not t.is_closing():
                t.write(data)

    async def start(self) -> None:
        if self.socket is None:
            self.socket = bind_unix(self.path, self.socket_mode)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._make_conn, sock=self.socket, backlog=1024
        )
        log.info("serving RESP on %s", self.path)

    async def close(self, grace: float = 2.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self._server is not None:
            self._server.close()
        if self._own_path:
            _unlink_socket(self.path)
        conns = list(self.conns)
        for c in conns:
            c.stop_reading()
        # Requests already taken are answered (within `grace`): a connection's running
        # task, and the writes it submitted (their replies go out from a done-callback).
        busy: list[asyncio.Future[Any]] = [c.task for c in conns if c.task is not None and not c.task.done()]
        busy += [f for c in conns for f, _ in c.pending if f is not None and not f.done()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for t in pending:
                if isinstance(t, asyncio.Task):
                    t.cancel()
            await asyncio.sleep(0)  # the connections' own callbacks write the replies
        for c in conns:
            c.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _make_conn(self) -> Connection:
        self._next_id += 1
        return Connection(self, self._next_id)


def bind_unix(path: str, mode: int = 0o600) -> socket.socket:
    """Bind and listen on `path`; a stale socket file (nobody listening) is replaced."""
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise KVError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: left by a process that died
        else:
            raise KVError(f"{path}: another server is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Nobody can connect before listen(), so this chmod closes the umask window.
        os.chmod(path, mode)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
