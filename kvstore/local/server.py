"""The RESP server on a node's UNIX socket.

One `asyncio.Protocol` per connection. hiredis parses; every complete request is
queued, and the connection's requests run strictly in order (a pipelined write is
answered before anything after it), while different connections run concurrently.
The queue is drained by one coroutine per connection that we step by hand: when no
command suspends (READONLY reads, a backend whose barrier is immediate) a whole batch
runs inside `data_received` and its replies leave in one `transport.write`; only a
command that really waits costs a Task.

Backpressure: a connection stops being read while too many of its requests are
queued, or while too many reply bytes wait for it to read; so a slow or hostile
client costs bounded memory and never stalls the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Generator, Iterable
from typing import Any, cast

import hiredis

from kvstore.errors import KVError, TryAgain, Unknown
from kvstore.local import resp
from kvstore.local.backend import Backend
from kvstore.local.commands import READ, SYNC, WRITE, CommandError, Commands, Formatter, Session
from kvstore.local.resp import FrameError, FrameGuard, Limits, frame_size
from kvstore.statemachine import Command

log = logging.getLogger("kvstore.local.server")

_CREDS = struct.Struct("3i")
_FLUSH_AT = 256 << 10  # reply bytes gathered before an intermediate write


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
        self.limits = limits
        self.socket_mode = socket_mode
        self.allowed_uids = {os.getuid(), 0} if allowed_uids is None else set(allowed_uids)
        self.socket = sock
        self._own_path = sock is None
        self.commands = Commands(backend, limits, self, internal=internal)
        self.started = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._next_id = 0
        self._closed = False
        self.stats: dict[str, int] = {
            "total_connections_received": 0,
            "total_commands_processed": 0,
            "rejected_connections": 0,
            "protocol_errors": 0,
            "error_replies": 0,
        }

    # -- ServerView ----------------------------------------------------------------------

    def sessions(self) -> Iterable[Session]:
        return [c.session for c in self._conns]

    def counters(self) -> dict[str, int]:
        return {"connected_clients": len(self._conns), **self.stats}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.socket is None:
            self.socket = bind_unix(self.path, self.socket_mode)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._make_conn, sock=self.socket, backlog=1024
        )
        log.info("serving RESP on %s", self.path)

    async def close(self, grace: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        if self._own_path:
            _unlink_socket(self.path)
        conns = list(self._conns)
        for c in conns:
            c.stop_reading()
        busy = [c.task for c in conns if c.task is not None and not c.task.done()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for t in pending:
                t.cancel()
        for c in conns:
            c.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _make_conn(self) -> _Connection:
        self._next_id += 1
        return _Connection(self, self._next_id)


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


# An array header of 1,000,000 elements or more (8 MB for hiredis to allocate at once).
_SUSPECT = re.compile(rb"\*[1-9][0-9]{6}")


def _first_bad_frame(data: bytes, pos: int, limits: Limits) -> tuple[int, str] | None:
    """Offset and reason of the first request in data[pos:] whose headers break a limit."""
    guard = FrameGuard(limits)
    while pos < len(data):
        try:
            end = guard.feed(data, pos)
        except FrameError as e:
            return pos, str(e)
        if end < 0:
            return None
        pos = end
    return None


class _Hop:
    """`await _HOP` yields once to `_kick`, which continues the coroutine in a Task."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield


_HOP = _Hop()


class _Failure:
    """Queued after the last good request of a connection that sent a bad frame."""

    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


class _Connection(asyncio.Protocol):
    def __init__(self, server: RespServer, cid: int) -> None:
        self.server = server
        self.limits = server.limits
        self.commands = server.commands
        self.table = server.commands.table
        self.backend = server.backend
        self.session = Session(cid)
        self.reader = hiredis.Reader()
        self.guard = FrameGuard(server.limits)
        self.carry = 0  # bytes of an incomplete request held by hiredis
        self.queue: deque[Any] = deque()  # requests (lists of bytes), maybe a _Failure last
        self.queued_bytes = 0
        self.received = 0  # requests received so far
        self.covered = 0  # requests received before the last read barrier started
        self.transport: asyncio.Transport | None = None
        self.running = False
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.ordered = bool(getattr(server.backend, "ordered_writes", False))
        self.barrier_free = bool(getattr(server.backend, "barrier_free", False))
        self.closing_after_queue = False  # the client half-closed
        self.failed = False  # a protocol error is queued: read nothing more

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        srv = self.server
        srv.stats["total_connections_received"] += 1
        try:
            sock = transport.get_extra_info("socket")
            pid, uid, _gid = _CREDS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            )
        except (OSError, AttributeError, struct.error):
            pid, uid = -1, -1
        self.session.pid, self.session.uid = pid, uid
        if uid not in srv.allowed_uids:
            srv.stats["rejected_connections"] += 1
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            self._refuse(f"ERR permission denied: uid {uid} may not use this socket")
            return
        if len(srv._conns) >= self.limits.max_clients or srv._closed:
            srv.stats["rejected_connections"] += 1
            self._refuse("ERR max number of clients reached")
            return
        srv._conns.add(self)
        self.transport.set_write_buffer_limits(high=min(self.limits.max_output, 1 << 20))

    def _refuse(self, msg: str) -> None:
        self.closing = True
        assert self.transport is not None
        self.transport.write(resp.error(msg))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._conns.discard(self)
        self.queue.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close."""
        self.closing_after_queue = True
        if not self.running and not self.queue:
            return False  # asyncio closes the transport
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failed:
            return
        frames: list[Any] = []
        try:
            self._parse(data, frames)
            failure = None
        except FrameError as e:
            failure = str(e)
        q = self.queue
        for f in frames:
            if f:  # an empty array is not a request (Redis skips it too)
                q.append(f)
                self.received += 1
        if failure is not None:
            # Requests before the bad bytes are answered first, then the error, then close.
            self.failed = True
            q.append(_Failure(failure))
            self.stop_reading()
        self.queued_bytes += len(data)
        if len(q) > self.limits.max_pipeline or self.queued_bytes > self.limits.max_queued_bytes:
            self._update_reading()
        if q and not self.running:
            self._kick()

    def _parse(self, data: bytes, frames: list[Any]) -> None:
        """hiredis parses; we check that what it returns are requests, and the sizes."""
        reader = self.reader
        start = 0
        resolved = 0
        if self.carry:
            # An incomplete request is pending: check the rest of its headers before
            # hiredis sees them (a huge `*N` or `$N` would make it allocate or wait).
            end = self.guard.feed(data)
            if end < 0:
                self.carry += len(data)
                if self.carry > self.limits.max_request:
                    raise FrameError("request too large")
                reader.feed(data)
                return
            self.carry = 0
            start, resolved = end, 1
        failure = None
        if _SUSPECT.search(data, start):
            # hiredis allocates an array as soon as it reads `*N`: walk these headers first.
            bad = _first_bad_frame(data, start, self.limits)
            if bad is not None:
                pos, failure = bad
                data = data[:pos]  # the requests before it are still answered
        reader.feed(data)
        try:
            while (f := reader.gets()) is not False:
                if type(f) is not list or not all(type(x) is bytes for x in f):
                    raise FrameError("expected an array of bulk strings")
                frames.append(f)
        except hiredis.ProtocolError as e:
            raise FrameError(str(e).removeprefix("Protocol error, ")) from None
        except MemoryError:
            raise FrameError("request too large") from None
        if resolved and not frames:
            raise FrameError("lost track of the request stream")
        rest = len(data) - start
        if rest:
            # Is hiredis left holding part of a request? Count the bytes of the requests
            # it returned; only when a read ends mid-request does the guard walk that
            # request's headers.
            used = sum(map(frame_size, frames[resolved:]))
            if used != rest:
                if used > rest:
                    raise FrameError("lost track of the request stream")
                self.carry = rest - used
                if self.carry > self.limits.max_request:
                    raise FrameError("request too large")
                self.guard.reset()
                if self.guard.feed(data, len(data) - self.carry) >= 0:
                    raise FrameError("lost track of the request stream")
        if failure is not None:
            raise FrameError(failure)

    # -- request processing ------------------------------------------------------------

    def _kick(self) -> None:
        """Run the queue: inline for as long as no command has to wait, then in a Task."""
        if self.running or not self.queue or self.closing:
            return
        self.running = True
        coro = self._drain_queue()
        try:
            coro.send(None)
        except StopIteration:
            return
        except Exception:
            log.exception("connection %d failed", self.session.id)
            self.running = False
            self.abort()
            return
        # It stopped at a _HOP (a bare yield): a Task resumes it from there, so that the
        # backend only ever runs inside a Task (asyncio.timeout and friends need one).
        self.task = asyncio.get_running_loop().create_task(coro)
        self.task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        self.running = False
        if not task.cancelled() and task.exception() is not None:
            log.error("connection %d failed", self.session.id, exc_info=task.exception())
            self.abort()

    async def _drain_queue(self) -> None:
        q = self.queue
        out: list[bytes] = []
        size = 0
        sess = self.session
        stats = self.server.stats
        quit_spec = self.table[b"QUIT"]
        try:
            while q and not self.closing:
                args = q.popleft()
                if type(args) is _Failure:
                    out.append(self._protocol_error(args.msg))
                    break
                seq = self.received - len(q)  # this request's number
                stats["total_commands_processed"] += 1
                try:
                    spec = self.table.get(args[0]) or self.commands.lookup(args)
                    if spec.arity != len(args) and (spec.arity >= 0 or len(args) < -spec.arity):
                        spec = self.commands.lookup(args)  # raises the arity error
                    kind = spec.kind
                    if kind == SYNC:
                        reply = spec.fn(sess, args)
                        if spec is quit_spec:
                            out.append(reply)
                            self.closing = True
                            break
                    elif kind == READ:
                        if not sess.readonly and self.covered < seq and not self.barrier_free:
                            # One barrier serves every request received before it started.
                            upto = self.received
                            if out:
                                size = self._flush(out)
                            if asyncio.current_task() is None:
                                await _HOP
                            await self.backend.read_barrier()
                            self.covered = upto
                        reply = spec.fn(sess, args)
                    else:
                        cmd, fmt = spec.fn(sess, args)
                        if out:
                            size = self._flush(out)
                        if asyncio.current_task() is None:
                            await _HOP
                        if self.ordered and q:
                            reply = await self._write_run(cmd, fmt)
                        else:
                            reply = fmt(await self.backend.write(cmd), sess.proto)
                except Exception as e:
                    reply = _error_reply(e, args)
                if reply[0] == 45:  # '-'
                    stats["error_replies"] += 1
                sess.last_cmd = args[0].decode("latin-1")[:32]
                out.append(reply)
                size += len(reply)
                if size >= _FLUSH_AT:
                    size = self._flush(out)
                    if self.write_paused and self._must_wait():
                        if asyncio.current_task() is None:
                            await _HOP
                        await self._wait_drained()
                if self.read_paused and len(q) < self.limits.max_pipeline // 2:
                    self.queued_bytes = 0
                    self._update_reading()
        finally:
            if out:
                self._flush(out)
            self.queued_bytes = 0
            self.running = False
            if (self.closing or self.closing_after_queue) and self.transport is not None:
                self.transport.close()
            else:
                self._update_reading()

    async def _write_run(self, cmd: Command, fmt: Formatter) -> bytes:
        """This write and the writes queued right after it, all in flight at once.

        Only for a backend with `ordered_writes` (it applies writes in the order of the
        `write()` calls): they then share one commit, where one at a time would pay a
        commit each. Replies still go out in request order.
        """
        q, sess, table, stats = self.queue, self.session, self.table, self.server.stats
        start = asyncio.get_running_loop().create_task
        items: list[tuple[asyncio.Task[Any] | None, Formatter | bytes]] = [
            (start(self.backend.write(cmd)), fmt)
        ]
        while q and len(items) < 1024:
            args = q[0]
            spec = table.get(args[0])
            if spec is None or spec.kind != WRITE or (spec.arity != len(args) and len(args) < -spec.arity):
                break
            q.popleft()
            stats["total_commands_processed"] += 1
            try:
                c, f = spec.fn(sess, args)
            except CommandError as e:
                items.append((None, resp.error(str(e))))
                continue
            items.append((start(self.backend.write(c)), f))
        parts = []
        for task, f in items:
            if task is None:
                assert isinstance(f, bytes)
                parts.append(f)
                continue
            assert not isinstance(f, bytes)
            try:
                parts.append(f(await task, sess.proto))
            except Exception as e:
                parts.append(_error_reply(e, None))
        return b"".join(parts)

    def _flush(self, out: list[bytes]) -> int:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()
        return 0

    def _must_wait(self) -> bool:
        t = self.transport
        return (
            self.write_paused
            and not self.closing
            and t is not None
            and t.get_write_buffer_size() >= self.limits.max_output
        )

    async def _wait_drained(self) -> None:
        """Wait while too many reply bytes are buffered for a client that does not read."""
        self._update_reading()
        while self._must_wait():
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    # -- flow control, errors ------------------------------------------------------------

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        q = len(self.queue)
        stop = (q > self.limits.max_pipeline or (q and self.queued_bytes > self.limits.max_queued_bytes)) or (
            self.write_paused and t.get_write_buffer_size() >= self.limits.max_output
        )
        if stop and not self.read_paused:
            t.pause_reading()
            self.read_paused = True
        elif not stop and self.read_paused:
            t.resume_reading()
            self.read_paused = False

    def _protocol_error(self, msg: str) -> bytes:
        self.server.stats["protocol_errors"] += 1
        log.info("connection %d: protocol error: %s", self.session.id, msg)
        self.closing = True
        self.queue.clear()
        return resp.error(f"ERR Protocol error: {msg}")

    def stop_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def _error_reply(e: Exception, args: list[bytes] | None) -> bytes:
    if isinstance(e, CommandError):
        return resp.error(str(e))
    if isinstance(e, TryAgain):
        return resp.error(f"TRYAGAIN {e}")
    if isinstance(e, Unknown):
        return resp.error(f"UNKNOWN {e}")
    if isinstance(e, KVError):  # LimitExceeded, StorageError...
        return resp.error(f"ERR {e}")
    log.exception("command %r failed", args[0][:32] if args else "write")
    return resp.error(f"ERR internal error: {type(e).__name__}: {e}")
