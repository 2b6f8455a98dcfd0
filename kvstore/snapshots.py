"""Snapshots: compacting the log, and sending and installing a node's state over gRPC.

A snapshot here is the LMDB state itself: a node never writes a separate snapshot
file. Compaction records a snapshot point S (index, term, configuration) and drops the
log up to S. When a follower needs entries below the leader's log, the leader streams
its live state at its applied index X >= S (one consistent read view) in checksummed
chunks. The follower writes the stream to a file, verifies the checksum, swaps the data
in atomically (old state keeps serving reads until then), and only then hands the
snapshot message to its Raft core. Entries S+1..X replay afterwards and are skipped,
because the data already holds them.

Stream layout: the head carries the meta, X, the stream's id and where its data starts,
and no data; data chunks carry (u32 key length, key, u32 value length, value) records,
cut only between records; the last carries the xxh3-128 checksum of all data bytes.

Resume. Each stream of bytes a sender produces has a random 64-bit id, and the sender
keeps its read view (`Outgoing`, one per peer) after a break, so that a retry to that
peer continues the same bytes: until the peer has it, a newer snapshot point is needed
(S > X), the map grows (the view dies: start over), MAX_REFUSALS refusals, or RETAIN_S
pass without a byte sent (retries to a peer that is down do not count). The view is an
open LMDB read txn, which pins the pages it sees: while it lives, writes cannot reuse
freed pages and the file grows by what is written meanwhile; RETAIN_S bounds that.
The receiver keeps the bytes of a broken stream in DIR/<node>/snapshot.incoming with a
sidecar, snapshot.incoming.json (id, sender, term, meta, X, and the length known to be
on disk: it is written only after an fsync). A restarted receiver truncates the file to
that length. A retry begins with a head alone, query=true: the receiver answers how many
bytes of that id it holds, and the sender opens a stream from there (from a chunk
boundary it remembers, with the hash state of the bytes before it); the receiver re-hashes
its prefix, so the checksum still covers every byte. A stream starting at 0 discards any
kept bytes, and a kept file nobody resumes is deleted after KEEP_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from kvstore.errors import KVError
from kvstore.raft import Message, MsgType
from kvstore.rpc.convert import snap_from_pb, snap_to_pb
from kvstore.rpc.pb import raft_pb2 as pb

if TYPE_CHECKING:
    from kvstore.node import Node
    from kvstore.storage.store import SnapshotView

log = logging.getLogger("kvstore.snapshots")
CHUNK = 1 << 20
SYNC_EVERY = 4 << 20  # the receiver fsyncs and records its length this often
RETAIN_S = 45.0  # a sender keeps a stream's read view this long after its last byte went out
MAX_REFUSALS = 3  # refusals of one stream (bad checksum...) before a sender starts over with a new one
KEEP_S = 120.0  # a receiver deletes kept bytes nobody resumed after this long
QUERY_TIMEOUT_S = 10.0
# Test-only: seconds a sender sleeps after each data chunk, so that tests can interrupt
# a stream midway. Never set it in production.
CHUNK_DELAY_ENV = "KVSTORE_TEST_SNAPSHOT_CHUNK_DELAY"
_LEN = struct.Struct(">I")


class SnapshotError(Exception):
    pass


# ---- sending ---------------------------------------------------------------------------


class Outgoing:
    """One byte stream a leader sends to one peer, kept after a break so a retry resumes it."""

    def __init__(self, dst: str, view: SnapshotView) -> None:
        self.id = secrets.randbits(64) or 1
        self.dst = dst
        self.view = view
        # chunk boundary -> (last key before it, xxh3 state of all bytes before it)
        self.marks: dict[int, tuple[bytes | None, Any]] = {0: (None, xxhash.xxh3_128())}
        self.streamed = 0  # bytes produced so far, at most
        self.refusals = 0
        self.failed: Exception | None = None  # the view failed (the map grew): start over
        self.idle: asyncio.TimerHandle | None = None
        # Retries to a peer that is down do not extend the view's life: only bytes sent do.
        self.progress = time.monotonic()

    def close(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.view.close()


_outgoing: weakref.WeakKeyDictionary[Node, dict[str, Outgoing]] = weakref.WeakKeyDictionary()


def _take(node: Node, m: Message) -> tuple[Outgoing, bool]:
    """The stream for m.dst: the kept one when it can still serve m, else a new one."""
    assert m.snapshot is not None
    table = _outgoing.setdefault(node, {})
    out = table.pop(m.dst, None)
    if out is not None:
        if out.idle is not None:
            out.idle.cancel()
            out.idle = None
        if out.failed is None and out.refusals < MAX_REFUSALS and m.snapshot.index <= out.view.index:
            table[m.dst] = out
            return out, True
        out.close()
        log.info("%s: dropped snapshot %016x for %s (%s)", node.name, out.id, m.dst,
                 f"its view failed: {out.failed}" if out.failed else
                 f"refused {out.refusals} times" if out.refusals >= MAX_REFUSALS else
                 f"the snapshot point moved past its data index {out.view.index}")
    out = table[m.dst] = Outgoing(m.dst, node.store.snapshot_view())
    return out, False


def _after_attempt(node: Node, out: Outgoing, done: bool) -> None:
    table = _outgoing.get(node, {})
    if done or out.failed is not None:
        if table.get(out.dst) is out:
            del table[out.dst]
        out.close()
        return

    def expire() -> None:
        if table.get(out.dst) is out:
            del table[out.dst]
            out.close()
            log.info("%s: dropped snapshot %016x for %s: nothing sent for %.0f s", node.name, out.id, out.dst,
                     RETAIN_S)

    left = out.progress + RETAIN_S - time.monotonic()
    out.idle = asyncio.get_running_loop().call_later(max(left, 0.0), expire)


def _head(node: Node, m: Message, out: Outgoing, offset: int, query: bool = False) -> pb.SnapshotChunk:
    assert m.snapshot is not None
    head = pb.SnapshotChunk(cluster_id=node.cluster_id, term=m.term, meta=snap_to_pb(m.snapshot),
                            data_index=out.view.index, offset=offset, snapshot_id=out.id, query=query)
    setattr(head, "from", node.name)  # "from" is a Python keyword
    return head


async def _stream(node: Node, m: Message, out: Outgoing, start: int) -> AsyncIterator[pb.SnapshotChunk]:
    """The stream for one InstallSnapshot call: the head, then the data from `start`."""
    yield _head(node, m, out, start)
    delay = float(os.environ.get(CHUNK_DELAY_ENV) or 0)
    after, h = out.marks[start]
    h = h.copy()
    offset, buf = start, bytearray()
    try:
        for k, v in out.view.items(after):
            buf += _LEN.pack(len(k))
            buf += k
            buf += _LEN.pack(len(v))
            buf += v
            if len(buf) >= CHUNK:
                h.update(buf)
                chunk = pb.SnapshotChunk(offset=offset, data=bytes(buf))
                offset += len(buf)
                buf.clear()
                out.marks[offset] = (k, h.copy())
                out.streamed = max(out.streamed, offset)
                out.progress = time.monotonic()
                yield chunk
                if delay:
                    await asyncio.sleep(delay)
    except Exception as e:  # SnapshotInterrupted (the map grew) or another storage error
        out.failed = e
        return  # the receiver sees the stream end early
    h.update(buf)
    yield pb.SnapshotChunk(offset=offset, data=bytes(buf), last=True, checksum=h.digest())
    log.info("%s: sent snapshot %016x to %s: %d bytes (from offset %d), data index %d (log from %d)", node.name,
             out.id, m.dst, offset + len(buf), start, out.view.index, m.snapshot.index + 1 if m.snapshot else 0)


async def _one(head: pb.SnapshotChunk) -> AsyncIterator[pb.SnapshotChunk]:
    yield head


async def _resume_point(node: Node, peer: Any, m: Message, out: Outgoing) -> int:
    """Ask the peer how much of `out` it holds: where the new stream starts (0: from scratch)."""
    ans = await peer.stub.InstallSnapshot(_one(_head(node, m, out, 0, query=True)), timeout=QUERY_TIMEOUT_S)
    n = ans.resume_offset
    if not n or n not in out.marks:
        return 0
    log.info("%s: resumed snapshot %016x to %s at offset %d of %d streamed so far (data index %d)",
             node.name, out.id, m.dst, n, out.streamed, out.view.index)
    node.metrics.snapshots.labels("resumed").inc()
    return int(n)


async def send(node: Node, m: Message) -> bool:
    """Stream m's snapshot to m.dst, resuming a stream kept for that peer; True once installed."""
    peer = node.transport.peer(m.dst)
    if peer is None:
        return False
    try:
        out, kept = _take(node, m)
    except KVError as e:
        log.warning("%s: cannot read a snapshot for %s: %s", node.name, m.dst, e)
        return False
    ack: pb.SnapshotAck | None = None
    try:
        start = await _resume_point(node, peer, m, out) if kept else 0
        ack = await peer.stub.InstallSnapshot(_stream(node, m, out, start), timeout=600)
    except Exception as e:
        log.warning("%s: snapshot %016x to %s failed: %s", node.name, out.id, m.dst, e)
    finally:
        _after_attempt(node, out, ack is not None and ack.ok)
    if ack is None:
        return False
    if out.failed is not None:
        log.warning("%s: snapshot %016x to %s stopped: %s; the next try starts over", node.name, out.id, m.dst,
                    out.failed)
    elif not ack.ok:
        out.refusals += 1
        log.warning("%s: %s refused snapshot %016x: %s", node.name, m.dst, out.id, ack.error)
    return bool(ack.ok)


# ---- receiving ---------------------------------------------------------------------------


def read_pairs(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with open(path, "rb") as f:
        while True:
            hdr = f.read(4)
            if not hdr:
                return
            (kl,) = _LEN.unpack(hdr)
            k = f.read(kl)
            (vl,) = _LEN.unpack(f.read(4))
            v = f.read(vl)
            if len(k) != kl or len(v) != vl:
                raise SnapshotError("truncated snapshot file")
            yield k, v


class Partial:
    """The bytes of one snapshot received so far: DIR/<node>/snapshot.incoming, and its
    sidecar snapshot.incoming.json, whose `length` bytes are known to be on disk."""

    DATA, SIDECAR = "snapshot.incoming", "snapshot.incoming.json"

    def __init__(self, home: Path, id: int, src: str, term: int, meta: tuple[int, int], data_index: int,
                 length: int = 0) -> None:
        self.home = home
        self.id, self.src, self.term, self.meta, self.data_index = id, src, term, meta, data_index
        self.length = length

    @property
    def data(self) -> Path:
        return self.home / self.DATA

    def save(self) -> None:
        """Record the sidecar atomically; call it only once `length` bytes are fsynced."""
        side = self.home / self.SIDECAR
        tmp = side.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": f"{self.id:016x}", "from": self.src, "term": self.term,
                                   "meta_index": self.meta[0], "meta_term": self.meta[1],
                                   "data_index": self.data_index, "length": self.length}))
        os.replace(tmp, side)

    @classmethod
    def load(cls, home: Path) -> Partial | None:
        """What a broken stream left, cut to the recorded length; None (and nothing left) if unusable."""
        try:
            d = json.loads((home / cls.SIDECAR).read_text())
            p = cls(home, int(d["id"], 16), str(d["from"]), int(d["term"]), (int(d["meta_index"]),
                    int(d["meta_term"])), int(d["data_index"]), int(d["length"]))
            with open(p.data, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size < p.length or p.id == 0:
                    raise ValueError(f"{size} bytes on disk, {p.length} recorded")
                f.truncate(p.length)  # bytes after the last fsync may be garbage after a crash
            return p
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("discarding the partial snapshot in %s: %s", home, e)
        cls.discard(home)
        return None

    @classmethod
    def discard(cls, home: Path) -> None:
        for name in (cls.DATA, cls.SIDECAR, cls.SIDECAR[:-5] + ".tmp"):
            (home / name).unlink(missing_ok=True)


def _hash_file(path: Path, length: int) -> Any:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        left = length
        while left:
            b = f.read(min(left, CHUNK))
            if not b:
                raise SnapshotError(f"{path} is shorter than {length} bytes")
            h.update(b)
            left -= len(b)
    return h


class Receiver:
    """A node's side of InstallSnapshot: one stream at a time owns the partial file."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.partial = Partial.load(node.home)  # a stream cut by a crash or a stop
        self.hashed: tuple[int, Any] | None = None  # (length, xxh3 state) of the kept bytes, when known
        self._lock = asyncio.Lock()
        self._owner: tuple[asyncio.Task[Any], int] | None = None  # the stream receiving, and its term
        self._installing = False
        self._sync_lock = threading.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        if self.partial is not None:
            log.info("%s: kept %d bytes of snapshot %016x from %s (data index %d) for a resume", node.name,
                     self.partial.length, self.partial.id, self.partial.src, self.partial.data_index)
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            self._expiry = asyncio.get_running_loop().call_later(KEEP_S, self._expire)
        except RuntimeError:
            self._expiry = None  # no loop (a unit test): nothing expires

    def _expire(self) -> None:
        self._expiry = None
        if self._owner is None and self.partial is not None:
            log.info("%s: deleted %d bytes of snapshot %016x: not resumed within %.0f s", self.node.name,
                     self.partial.length, self.partial.id, KEEP_S)
            self._drop()

    def _drop(self) -> None:
        Partial.discard(self.node.home)
        self.partial, self.hashed = None, None

    def held(self, sid: int) -> int:
        p = self.partial
        return p.length if p is not None and sid and p.id == sid else 0

    async def install(self, it: AsyncIterator[pb.SnapshotChunk]) -> pb.SnapshotAck:
        node = self.node
        head = await anext(it, None)
        if head is None:
            return pb.SnapshotAck(ok=False, error="empty snapshot stream")
        if head.cluster_id != node.cluster_id:
            return pb.SnapshotAck(ok=False, error=f"snapshot from cluster {head.cluster_id}, not {node.cluster_id}")
        if head.query:
            n = self.held(head.snapshot_id)
            return pb.SnapshotAck(ok=False, received=n, resume_offset=n)
        if self._owner is not None:  # a newer stream (a retry, a new leader) preempts one still receiving
            task, term = self._owner
            if head.term < term:
                return pb.SnapshotAck(ok=False, error=f"a snapshot of term {term} is being received")
            if not self._installing:
                task.cancel()
        async with self._lock:
            me = asyncio.current_task()
            assert me is not None
            self._owner = (me, head.term)
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            try:
                return await self._receive(head, it)
            except (SnapshotError, OSError, KVError) as e:
                log.warning("%s: snapshot install failed: %s; keeping the old state", node.name, e)
                return pb.SnapshotAck(ok=False, error=str(e))
            finally:
                self._owner, self._installing = None, False
                if self.partial is not None:
                    self._arm_expiry()

    async def _receive(self, head: pb.SnapshotChunk, it: AsyncIterator[pb.SnapshotChunk]) -> pb.SnapshotAck:
        node, sid, start, src = self.node, head.snapshot_id, head.offset, getattr(head, "from")
        p, held = self.partial, self.held(sid)
        if start and start <= held:
            assert p is not None
            h = self.hashed[1].copy() if self.hashed and self.hashed[0] == start else \
                await asyncio.to_thread(_hash_file, p.data, start)
            p.src, p.term, p.length = src, head.term, start
            log.info("%s: resumed snapshot %016x from %s at offset %d of %d held (data index %d)",
                     node.name, sid, src, start, held, head.data_index)
            node.metrics.snapshots.labels("resumed").inc()
        elif start == 0:
            if p is not None:
                log.info("%s: discarded %d bytes of snapshot %016x from %s: %s sends snapshot %016x from 0",
                         node.name, p.length, p.id, p.src, src, sid)
            self._drop()
            p = Partial(node.home, sid, src, head.term, (head.meta.index, head.meta.term), head.data_index)
            h = xxhash.xxh3_128()
        else:
            return pb.SnapshotAck(ok=False, received=held, resume_offset=held,
                                  error=f"cannot continue snapshot {sid:016x} at {start}: {held} bytes held")
        self.partial, self.hashed = p, None
        received, synced, done = start, start, False
        with open(p.data, "r+b" if start else "wb") as f:
            try:
                f.truncate(start)
                f.seek(start)
                async for ch in it:
                    if ch.offset != received:
                        raise SnapshotError(f"snapshot chunk at offset {ch.offset}, expected {received}")
                    data = ch.data  # each read of a bytes field copies it (upb)
                    f.write(data)
                    h.update(data)
                    received += len(data)
                    del data
                    if ch.last:
                        if ch.checksum != h.digest():
                            raise SnapshotError("snapshot checksum mismatch")
                        done = True
                        break
                    if sid and received - synced >= SYNC_EVERY:
                        await asyncio.to_thread(self._sync, f, p, received)
                        synced = received
            except BaseException as e:
                if isinstance(e, SnapshotError):
                    self._drop()  # bytes we cannot trust
                else:  # the stream broke (the sender died, a newer stream, the network): keep what we have
                    self._keep(f, p, received, h, e)
                raise
            if not done:
                self._keep(f, p, received, h, None)
                raise SnapshotError(f"snapshot stream ended early at {received} bytes")
        return await self._install(head, p, received)

    def _sync(self, f: Any, p: Partial, length: int) -> None:
        with self._sync_lock:  # a preempted stream may still be syncing in its thread
            f.flush()
            os.fsync(f.fileno())
            p.length = length
            p.save()

    def _keep(self, f: Any, p: Partial, received: int, h: Any, why: BaseException | None) -> None:
        if not p.id:
            self._drop()  # a sender that cannot resume
            return
        try:
            self._sync(f, p, received)
        except OSError as e:
            log.warning("%s: cannot keep the partial snapshot %016x: %s", self.node.name, p.id, e)
            self._drop()
            return
        self.hashed = (received, h)
        log.info("%s: snapshot %016x from %s broke at %d bytes (%s); kept for a resume", self.node.name, p.id,
                 p.src, received, type(why).__name__ if why else "ended early")

    async def _install(self, head: pb.SnapshotChunk, p: Partial, size: int) -> pb.SnapshotAck:
        """Swap the verified data in. Once started this runs to its end even if the RPC is
        cancelled meanwhile (sender gone, deadline): a swap that LMDB committed must be
        followed by clearing the cache and moving the applied index, or the node would
        serve old cached values next to new data. The stream lock stays held until then."""
        self._installing = True
        task = asyncio.ensure_future(self._swap(head, p, size))
        cancelled = False
        while True:
            try:
                ack = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True  # finish the swap first
        if cancelled:
            raise asyncio.CancelledError
        return ack

    async def _swap(self, head: pb.SnapshotChunk, p: Partial, size: int) -> pb.SnapshotAck:
        node = self.node
        msg = Message(MsgType.SNAPSHOT, src=p.src, dst=node.name, term=head.term, snapshot=snap_from_pb(head.meta))
        index = head.data_index
        try:
            if index > node.applied:
                loop = asyncio.get_running_loop()
                # The cache is emptied, and kept empty, until the swap is done: reads go to
                # LMDB, which switches from the old state to the new in one commit. (Were
                # the cache cleared only after, a read between LMDB's commit and the clear
                # could find a cached value older than one LMDB already served.)
                node.cache_paused = True
                node.cache.clear()
                try:
                    await loop.run_in_executor(node._io, node.store.replace_all, read_pairs(p.data), index)
                except KVError:
                    if node.store.closed:  # swapped, then could not reopen: nothing can go on
                        log.error("%s: the store closed during a snapshot install; stopping", node.name)
                        node._stopping.set()
                    raise
                finally:
                    node.cache.clear()  # what an apply that finished meanwhile may have put
                    node.cache_paused = False
                node.applied = max(node.applied, index)
                node._wake_applied()
                node.metrics.snapshots.labels("installed").inc()
                log.info("%s: installed snapshot %016x from %s: %d bytes, data index %d (term %d)", node.name,
                         p.id, p.src, size, index, head.term)
        finally:
            self._drop()
        node.receive(msg)
        return pb.SnapshotAck(ok=True, received=size)


_receivers: weakref.WeakKeyDictionary[Node, Receiver] = weakref.WeakKeyDictionary()


def receiver(node: Node) -> Receiver:
    r = _receivers.get(node)
    if r is None:
        r = _receivers[node] = Receiver(node)
    return r


async def install(node: Node, it: AsyncIterator[pb.SnapshotChunk]) -> pb.SnapshotAck:
    return await receiver(node).install(it)
