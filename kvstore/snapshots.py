"""Snapshots: compacting the log, and sending and installing a node's state over gRPC.

A snapshot here is the LMDB state itself: a node never writes a separate snapshot
file. Compaction records a snapshot point S (index, term, configuration) and drops the
log up to S. When a follower needs entries below the leader's log, the leader streams
its live state at its applied index X >= S (one consistent read transaction) in
checksummed chunks. The follower writes the stream to a file, verifies the checksum,
swaps the data in atomically (old state keeps serving reads until then), and only then
hands the snapshot message to its Raft core. Entries S+1..X replay afterwards and are
skipped, because the data already holds them.

Stream layout: the first chunk carries the meta and X and no data; data chunks carry
(u32 key length, key, u32 value length, value) records; the last carries the xxh3-128
checksum of all data bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from kvstore.raft import Message, MsgType
from kvstore.rpc.convert import snap_from_pb, snap_to_pb
from kvstore.rpc.pb import raft_pb2 as pb

if TYPE_CHECKING:
    from kvstore.node import Node

log = logging.getLogger("kvstore.snapshots")
CHUNK = 1 << 20
_LEN = struct.Struct(">I")


class SnapshotError(Exception):
    pass


async def chunks(node: Node, m: Message) -> AsyncIterator[pb.SnapshotChunk]:
    """The stream for one InstallSnapshot call, read from one consistent read txn."""
    assert m.snapshot is not None
    h = xxhash.xxh3_128()
    with node.store.read_txn_snapshot() as (index, items):
        head = pb.SnapshotChunk(cluster_id=node.cluster_id, term=m.term, meta=snap_to_pb(m.snapshot),
                                data_index=index, offset=0)
        setattr(head, "from", node.name)  # "from" is a Python keyword
        yield head
        offset, n = 0, 0
        buf = bytearray()
        for k, v in items:
            buf += _LEN.pack(len(k))
            buf += k
            buf += _LEN.pack(len(v))
            buf += v
            n += 1
            if len(buf) >= CHUNK:
                h.update(buf)
                yield pb.SnapshotChunk(offset=offset, data=bytes(buf))
                offset += len(buf)
                buf.clear()
        h.update(buf)
        yield pb.SnapshotChunk(offset=offset, data=bytes(buf), last=True, checksum=h.digest())
        log.info("%s: sent snapshot to %s: %d keys, %d bytes, data index %d (log from %d)", node.name, m.dst, n,
                 offset + len(buf), index, m.snapshot.index + 1)


async def send(node: Node, m: Message) -> bool:
    peer = node.transport.peer(m.dst)
    if peer is None:
        return False
    try:
        ack = await peer.stub.InstallSnapshot(chunks(node, m), timeout=600)
    except Exception as e:
        log.warning("%s: snapshot to %s failed: %s", node.name, m.dst, e)
        return False
    if not ack.ok:
        log.warning("%s: %s refused the snapshot: %s", node.name, m.dst, ack.error)
    return bool(ack.ok)


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


async def receive(node: Node, it: AsyncIterator[pb.SnapshotChunk]) -> tuple[Message, int, int]:
    """Receive a stream into DIR/<node>/snapshot.partial and verify it; returns (message, data index, bytes)."""
    path = partial_path(node)
    h = xxhash.xxh3_128()
    first: pb.SnapshotChunk | None = None
    received = 0
    done = False
    with open(path, "wb") as f:
        async for ch in it:
            if first is None:
                first = ch
                if ch.cluster_id != node.cluster_id:
                    raise SnapshotError(f"snapshot from cluster {ch.cluster_id}, not {node.cluster_id}")
                continue
            if ch.offset != received:
                raise SnapshotError(f"snapshot chunk at offset {ch.offset}, expected {received}")
            f.write(ch.data)
            h.update(ch.data)
            received += len(ch.data)
            if ch.last:
                if ch.checksum != h.digest():
                    raise SnapshotError("snapshot checksum mismatch")
                done = True
                break
        f.flush()
    if first is None or not done:
        raise SnapshotError("snapshot stream ended early")
    msg = Message(MsgType.SNAPSHOT, src=getattr(first, "from"), dst=node.name, term=first.term,
                  snapshot=snap_from_pb(first.meta))
    return msg, first.data_index, received


def partial_path(node: Node) -> Path:
    return node.home / "snapshot.partial"


async def install(node: Node, it: AsyncIterator[pb.SnapshotChunk]) -> pb.SnapshotAck:
    try:
        msg, index, size = await receive(node, it)
        if index > node.applied:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(node._io, node.store.replace_all, read_pairs(partial_path(node)), index)
            node.cache.clear()
            node.applied = max(node.applied, index)
            node._wake_applied()
            node.metrics.snapshots.labels("installed").inc()
            log.info("%s: installed snapshot from %s: %d bytes, data index %d (term %d)", node.name, msg.src,
                     size, index, msg.term)
        node.receive(msg)
        return pb.SnapshotAck(ok=True, received=size)
    except (SnapshotError, OSError) as e:
        log.warning("%s: snapshot install failed: %s; keeping the old state", node.name, e)
        return pb.SnapshotAck(ok=False, error=str(e))
    finally:
        partial_path(node).unlink(missing_ok=True)
