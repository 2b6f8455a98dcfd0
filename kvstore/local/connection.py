"""One client connection of the RESP server: parsing, ordering, flow control.

hiredis parses; every complete request is queued, and a connection's requests run
strictly in order (a pipelined write is answered before anything after it), while
different connections run concurrently. Requests that need no waiting (PING, READONLY
reads, reads on a backend whose local state is always current) run right inside
`data_received`, and a batch's replies leave in one `transport.write`. The first request
that must wait (a write, a read barrier) hands the rest of the queue to a Task.

The hot path: when nothing of the connection is queued or running, the leading requests
of a batch that have a fast handler (GET, MGET, PING: fast.py) skip the queue and the
general dispatch altogether, and the cache misses among them are read from the store in
one transaction. It answers exactly what the general path would; anything unusual (an
error to report, a limit) is left to the general path, which runs it again from there.
Hottest of all, a read of nothing but GETs (one, or a pipeline) is recognised whole
without hiredis (framing.plain_gets) and answered by FastPath.gets with no call per
request. Hot-path replies are written once the event loop has read every connection
that was ready (RespServer.defer_write), as Redis does; anything else a connection
writes, or closing it, first writes what is deferred, so replies keep their order.

Backpressure: a connection stops being read while too many of its requests are queued,
or while too many reply bytes wait for it to read; so a slow or hostile client costs
bounded memory and never stalls the others.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from kvstore.errors import KVError, TryAgain, Unknown
from kvstore.local import resp
from kvstore.local.commands import READ, SYNC, WRITE, CommandError, Formatter, Session, Spec
from kvstore.local.fast import MAX_PENDING, PENDING
from kvstore.local.framing import FrameError, RequestParser
from kvstore.statemachine import Command

if TYPE_CHECKING:
    from kvstore.local.server import RespServer

log = logging.getLogger("kvstore.local.server")

_CREDS = struct.Struct("3i")
_FLUSH_AT = 256 << 10  # reply bytes gathered before an intermediate write


class _Failure:
    """Queued after the last good request of a connection that sent a bad frame."""

    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


class Connection(asyncio.Protocol):
    def __init__(self, server: RespServer, cid: int) -> None:
        self.server = server
        self.limits = server.limits
        self.commands = server.commands
        self.table = server.commands.table
        self.quit_spec = self.table[b"QUIT"]
        self.backend = server.backend
        self.session = Session(cid)
        self.stats = server.stats
        self.fast = server.commands.fast
        self.parser = RequestParser(server.limits)
        self.queue: deque[Any] = deque()  # requests (lists of bytes), maybe a _Failure last
        self.queued_bytes = 0
        self.received = 0  # requests received so far
        self.covered = 0  # requests received before the last read barrier started
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a Task runs the queue, or submitted writes are pending
        self.pending: list[tuple[asyncio.Future[Any] | None, Any]] = []
        self.closing = False
        self.eof = False  # the client half-closed: answer what it sent, then close
        self.failed = False  # a protocol error is queued: read nothing more
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        # Optional capabilities of the backend (see SingleNodeBackend):
        self.ordered = bool(getattr(server.backend, "ordered_writes", False))
        # submit_write(cmd) -> Future: queue a write without a coroutine (implies ordered).
        self.submit = getattr(server.backend, "submit_write", None)
        self.barrier_free = bool(getattr(server.backend, "barrier_free", False))
        # A read of plain GETs only, answered whole (see data_received).
        self.recognise = self.fast.recognise
        self.gets = self.fast.gets
        self.outbox = server.outbox  # deferred writes (RespServer.defer_write), in order
        self.defer_write = server.defer_write
        self.defer_read = server.defer_read

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        srv = self.server
        srv.stats["total_connections_received"] += 1
        try:
            sock = t.get_extra_info("socket")
            pid, uid, _ = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
        except (OSError, AttributeError, struct.error):
            pid, uid = -1, -1
        self.session.pid, self.session.uid = pid, uid
        if uid not in srv.allowed_uids:
            srv.stats["rejected_connections"] += 1
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            return self._refuse(f"ERR permission denied: uid {uid} may not use this socket")
        if len(srv.conns) >= self.limits.max_clients or srv.closed:
            srv.stats["rejected_connections"] += 1
            return self._refuse("ERR max number of clients reached")
        srv.conns.add(self)
        t.set_write_buffer_limits(high=min(self.limits.max_output, 1 << 20))

    def _refuse(self, msg: str) -> None:
        self.closing = True
        assert self.transport is not None
        self.transport.write(resp.error(msg))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.conns.discard(self)
        self.queue.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        if self.outbox:  # False below closes the transport: what it holds still goes out
            self.server.flush_outbox()
        return self.busy or bool(self.queue)  # False: asyncio closes now

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
        if (
            self.gets is not None
            and not (self.queue or self.busy or self.write_paused or self.parser.carry)
            and (self.barrier_free or self.session.readonly)
            and (keys := self.recognise(data)) is not None
            and (reply := self.gets(keys, self.session.proto)) is not None
        ):
            # The hottest path: a read of nothing but GETs (a pipeline of them, or one),
            # recognised and answered whole: no request lists, no call per request.
            n = len(keys)
            self.received += n
            self.stats["total_commands_processed"] += n
            self.session.last_cmd = b"GET"
            t = self.transport
            if t is not None and not t.is_closing():
                if reply:
                    self.defer_write(t, reply)
                else:  # one GET that missed the cache: read with the round's other misses
                    self.defer_read(t, keys[0], self.session.proto)
            self.queued_bytes = 0
            if self.eof or self.read_paused:
                self._finish()
            return
        frames: list[Any] = []
        try:
            self.parser.feed(data, frames)
        except FrameError as e:
            return self._queue(data, frames, str(e), [])
        if self.queue or self.busy or not frames or self.write_paused:
            return self._queue(data, frames, None, [])
        # The hot path: the leading requests that have a fast handler (fast.py) are
        # answered right here, in one write; the rest, if any, go the general way.
        out: list[bytes] = []
        n = self._answer_fast(frames, out)
        if not n:
            return self._queue(data, frames, None, out)
        self.received += n
        self.stats["total_commands_processed"] += n
        self.session.last_cmd = frames[n - 1][0]
        if n < len(frames):
            del frames[:n]
            return self._queue(data, frames, None, out)
        t = self.transport
        if t is not None and not t.is_closing():
            self.defer_write(t, out[0] if n == 1 else b"".join(out))
        self.queued_bytes = 0
        if self.eof or self.read_paused:
            self._finish()

    def _answer_fast(self, frames: list[list[bytes]], out: list[bytes]) -> int:
        """Append to `out` the replies of the leading requests that have a fast handler;
        return how many. GETs that missed the cache are read from the store together."""
        sess, fp = self.session, self.fast
        table = fp.reads if sess.readonly or self.barrier_free else fp.sync
        pending = fp.pending
        if pending:  # left by a batch that an exception cut short: not this batch's keys
            pending.clear()
        proto = sess.proto
        size = n = mark = 0  # out[:mark] holds no placeholder
        failed = False
        try:
            for f in frames:
                handler = table.get(f[0])  # IndexError for an empty array: not ours
                if handler is None or size >= _FLUSH_AT:
                    break
                reply = handler(f, proto)
                if reply is None:
                    break
                out.append(reply)
                n += 1
                if reply:
                    size += len(reply)
                elif len(pending) >= MAX_PENDING:
                    added = fp.resolve(out, proto, mark)
                    if added < 0:
                        failed = True
                        break
                    size += added
                    mark = n
        except Exception:
            pass  # the general path runs this request again, and answers its error
        if pending and not failed:
            failed = fp.resolve(out, proto, mark) < 0
        if failed:  # the store read failed: those GETs go the general way too
            pending.clear()
            n = out.index(PENDING, mark)
            del out[n:]
        return n

    def _queue(self, data: bytes, frames: list[Any], failure: str | None, out: list[bytes]) -> None:
        """Queue requests (and a protocol error after them); run them unless busy.
        `out`: replies not yet written, to requests before these."""
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
        if q and not self.busy:
            self._run(out)
        elif out:
            self._flush(out)

    # -- running requests ----------------------------------------------------------------

    def _spec(self, args: list[bytes]) -> Spec:
        spec = self.table.get(args[0])
        n = len(args)
        if spec is None or (spec.arity != n and (spec.arity >= 0 or n < -spec.arity)):
            spec = self.commands.lookup(args)  # the case-insensitive way, or the error
        return spec

    def _run(self, out: list[bytes] | None = None) -> None:
        """Answer queued requests that need no waiting, here and now; then start a Task
        for the rest, beginning with the first request that must wait. `out`: replies
        not yet written, of requests before these."""
        q, sess = self.queue, self.session
        if out is None:
            out = []
        size = sum(map(len, out))
        n = 0
        while q and not self.closing:
            args = q[0]
            if type(args) is _Failure:
                q.popleft()
                out.append(self._protocol_error(args.msg))
                break
            try:
                spec = self._spec(args)
                kind = spec.kind
                if kind == WRITE and self.submit is not None:
                    items = self._submit_run()
                    if any(f is not None and not f.done() for f, _ in items):
                        if out:
                            self._flush(out)
                        self.server.stats["total_commands_processed"] += n
                        self.busy = True
                        self.pending = items
                        return self._wait_writes()
                    reply = self._write_replies(items)  # all refused at once: go on here
                    out.append(reply)
                    size += len(reply)
                    continue
                if kind == WRITE or (
                    kind == READ
                    and not (sess.readonly or self.barrier_free)
                    and self.covered < self.received - len(q) + 1
                ):
                    break
            except Exception:
                spec = None  # _spec raises the error reply again below
            q.popleft()
            n += 1
            try:
                if spec is None:
                    spec = self._spec(args)
                reply = spec.fn(sess, args)
                if spec is self.quit_spec:
                    self.closing = True
            except Exception as e:
                reply = self._error(e, args)
            sess.last_cmd = args[0]
            out.append(reply)
            size += len(reply)
            if size >= _FLUSH_AT:
                size = self._flush(out)
                if self.write_paused and self._must_wait():
                    break  # the Task waits for the client to read
        self.server.stats["total_commands_processed"] += n
        if out:
            self._flush(out)
        if q and not self.closing:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._drain())
            self.task.add_done_callback(self._task_done)
        else:
            self._finish()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("connection %d failed", self.session.id, exc_info=task.exception())
            self.abort()
        self._resume()

    def _resume(self) -> None:
        self.busy = False
        if self.queue and not self.closing:  # arrived while we waited
            self._run()
        else:
            self._finish()

    def _submit_run(self) -> list[tuple[asyncio.Future[Any] | None, Any]]:
        """Submit the write at the head of the queue and the writes right after it."""
        q, sess = self.queue, self.session
        items: list[tuple[asyncio.Future[Any] | None, Any]] = []
        while q and len(items) < 1024:
            args = q[0]
            spec = self.table.get(args[0]) if items else self._spec(args)
            if spec is None or spec.kind != WRITE or (spec.arity != len(args) and len(args) < -spec.arity):
                break
            q.popleft()
            sess.last_cmd = args[0]
            try:
                cmd, fmt = spec.fn(sess, args)
                items.append((self.submit(cmd), fmt))  # type: ignore[misc]
            except Exception as e:
                items.append((None, self._error(e, args)))
        self.server.stats["total_commands_processed"] += len(items)
        return items

    def _wait_writes(self, _: object = None) -> None:
        """Answer submitted writes, in order, once all are done; then go on with the queue."""
        for fut, _fmt in self.pending:
            if fut is not None and not fut.done():
                fut.add_done_callback(self._wait_writes)
                return
        reply = self._write_replies(self.pending)
        self.pending = []
        self._flush([reply])
        self._resume()

    def _write_replies(self, items: list[tuple[asyncio.Future[Any] | None, Any]]) -> bytes:
        parts = []
        proto = self.session.proto
        for fut, fmt in items:
            if fut is None:
                parts.append(fmt)
            elif fut.cancelled():
                parts.append(self._error(Unknown("the write was cancelled"), None))
            elif (exc := fut.exception()) is not None:
                parts.append(self._error(exc if isinstance(exc, Exception) else Unknown(str(exc)), None))
            else:
                parts.append(fmt(fut.result(), proto))
        return b"".join(parts)

    def _finish(self) -> None:
        """The queue is empty (or the connection is done)."""
        self.queued_bytes = 0
        if (self.closing or (self.eof and not self.queue)) and self.transport is not None:
            if self.outbox:
                self.server.flush_outbox()
            self.transport.close()
        elif self.read_paused:
            self._update_reading()

    async def _drain(self) -> None:
        q, sess = self.queue, self.session
        out: list[bytes] = []
        size = n = 0
        if self._must_wait():
            await self._wait_drained()
        try:
            while q and not self.closing:
                args = q.popleft()
                if type(args) is _Failure:
                    out.append(self._protocol_error(args.msg))
                    break
                seq = self.received - len(q)  # this request's number
                n += 1
                try:
                    spec = self._spec(args)
                    kind = spec.kind
                    if kind == SYNC:
                        reply = spec.fn(sess, args)
                        if spec is self.quit_spec:
                            self.closing = True
                    elif kind == READ:
                        if not (sess.readonly or self.barrier_free) and self.covered < seq:
                            # One barrier serves every request received before it started.
                            upto = self.received
                            if out:
                                size = self._flush(out)
                            await self.backend.read_barrier()
                            self.covered = upto
                        reply = spec.fn(sess, args)
                    else:
                        cmd, fmt = spec.fn(sess, args)
                        if out:
                            size = self._flush(out)
                        if (self.ordered and q) or self.submit is not None:
                            reply, k = await self._write_run(cmd, fmt)
                            n += k
                        else:
                            reply = fmt(await self.backend.write(cmd), sess.proto)
                except Exception as e:
                    reply = self._error(e, args)
                sess.last_cmd = args[0]
                out.append(reply)
                size += len(reply)
                if size >= _FLUSH_AT:
                    size = self._flush(out)
                    if self.write_paused and self._must_wait():
                        await self._wait_drained()
                if self.read_paused and len(q) < self.limits.max_pipeline // 2:
                    self.queued_bytes = 0
                    self._update_reading()
        finally:
            self.server.stats["total_commands_processed"] += n
            if out:
                self._flush(out)

    async def _write_run(self, cmd: Command, fmt: Formatter) -> tuple[bytes, int]:
        """This write and the writes queued right after it, all in flight at once.

        Only for a backend with `ordered_writes` (it applies writes in the order of the
        `write()` calls): they then share one commit, where one at a time would pay a
        commit each. Replies still go out in request order.
        """
        q, sess, table = self.queue, self.session, self.table
        submit = self.submit
        if submit is None:
            create_task = asyncio.get_running_loop().create_task

            def submit(c: Command) -> asyncio.Future[Any]:
                return create_task(self.backend.write(c))

        items: list[tuple[asyncio.Future[Any] | None, Any]] = [(submit(cmd), fmt)]
        while q and len(items) < 1024:
            args = q[0]
            spec = table.get(args[0])
            if spec is None or spec.kind != WRITE or (spec.arity != len(args) and len(args) < -spec.arity):
                break
            q.popleft()
            try:
                c, f = spec.fn(sess, args)
                items.append((submit(c), f))
            except Exception as e:
                items.append((None, self._error(e, args)))
        parts = []
        for fut, f in items:
            if fut is None:
                parts.append(f)
                continue
            try:
                parts.append(f(await fut, sess.proto))
            except Exception as e:
                parts.append(self._error(e, None))
        return b"".join(parts), len(items) - 1

    def _flush(self, out: list[bytes]) -> int:
        t = self.transport
        if t is not None and not t.is_closing():
            if self.outbox:
                self.server.flush_outbox()
            t.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()
        return 0

    # -- flow control, errors ------------------------------------------------------------

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

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing() or self.failed:
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

    def _error(self, e: Exception, args: list[bytes] | None) -> bytes:
        self.server.stats["error_replies"] += 1
        return error_reply(e, args)

    def _protocol_error(self, msg: str) -> bytes:
        self.server.stats["protocol_errors"] += 1
        log.info("connection %d: protocol error: %s", self.session.id, msg)
        self.closing = True
        self.queue.clear()
        return resp.error(f"ERR Protocol error: {msg}")

    def stop_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and not self.read_paused:
            t.pause_reading()
            self.read_paused = True

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def error_reply(e: Exception, args: list[bytes] | None) -> bytes:
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
