"""Resumable snapshot streams, in one process: the sender's stream and the receiver's kept
bytes, with real stores and no network (the processes version is in test_snapshots.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kvstore import snapshots
from kvstore.metrics import NodeMetrics
from kvstore.raft import ConfState, Message, MsgType, SnapshotMeta
from kvstore.rpc.pb import raft_pb2 as pb
from kvstore.snapshots import Outgoing, Partial, Receiver
from kvstore.storage import SnapshotInterrupted, Store


class FakeNode:
    """What snapshots.py uses of a Node."""

    def __init__(self, home: Path, name: str) -> None:
        self.home, self.name, self.cluster_id = home, name, "c1"
        home.mkdir(parents=True, exist_ok=True)
        self.store = Store(home / "data", map_size=64 << 20, sync=False)
        self.applied = 0
        self.received: list[Message] = []
        self.metrics = NodeMetrics(name)
        self._io = ThreadPoolExecutor(1)
        self.cache = self

    def clear(self) -> None:  # the cache
        pass

    def _wake_applied(self) -> None:
        pass

    def receive(self, m: Message) -> None:
        self.received.append(m)

    def close(self) -> None:
        self._io.shutdown()
        self.store.close()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "CHUNK", 4096)
    monkeypatch.setattr(snapshots, "SYNC_EVERY", 3 * 4096)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[FakeNode, FakeNode]]:
    src, dst = FakeNode(tmp_path / "n1", "n1"), FakeNode(tmp_path / "n2", "n2")
    src.store.apply_many([(i + 1, _put(f"k{i:05d}".encode(), (b"%d-" % i) * 20)) for i in range(2000)])
    dst.store.apply_many([(1, _put(b"old", b"state"))])
    dst.applied = 1
    yield src, dst
    src.close()
    dst.close()


def _put(k: bytes, v: bytes) -> Any:
    def fn(view: Any) -> None:
        view.put(k, v)
    return fn


def snap_msg() -> Message:
    return Message(MsgType.SNAPSHOT, src="n1", dst="n2", term=3,
                   snapshot=SnapshotMeta(1500, 2, ConfState(voters=("n1", "n2"))))


async def broken(it: AsyncIterator[pb.SnapshotChunk], chunks: int) -> AsyncIterator[pb.SnapshotChunk]:
    """The head and `chunks` data chunks, then the connection breaks."""
    n = -1
    async for ch in it:
        if n == chunks:
            raise ConnectionResetError("connection reset by peer")
        yield ch
        n += 1


def data(store: Store) -> list[tuple[bytes, bytes]]:
    with store.read_txn_snapshot() as (_, items):
        return list(items)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_broken_stream_resumes_after_a_receiver_restart(nodes: tuple[FakeNode, FakeNode],
                                                          small_chunks: None) -> None:
    src, dst = nodes
    m = snap_msg()
    out = Outgoing("n2", src.store.snapshot_view())
    try:
        ack = run(Receiver(dst).install(broken(snapshots._stream(src, m, out, 0), 5)))
        assert not ack.ok and "reset" in ack.error
        assert data(dst.store) == [(b"old", b"state")]  # untouched
        side = json.loads((dst.home / Partial.SIDECAR).read_text())
        kept = side["length"]
        assert side["id"] == f"{out.id:016x}" and kept >= 5 * 4096 and kept in out.marks
        # a crash after the last fsync can leave more bytes than recorded: they are cut off
        with open(dst.home / Partial.DATA, "ab") as f:
            f.write(b"garbage")
        rx = Receiver(dst)  # the receiver restarted
        assert (dst.home / Partial.DATA).stat().st_size == kept
        query = snapshots._head(src, m, out, 0, query=True)
        ans = run(rx.install(snapshots._one(query)))
        assert ans.resume_offset == kept and kept in out.marks
        ack = run(rx.install(snapshots._stream(src, m, out, kept)))
        assert ack.ok, ack.error
        assert data(dst.store) == data(src.store)
        assert dst.applied == out.view.index and dst.received[-1].snapshot == m.snapshot
        assert not (dst.home / Partial.DATA).exists() and not (dst.home / Partial.SIDECAR).exists()
        assert dst.metrics.snapshots.labels("resumed")._value.get() == 1
    finally:
        out.close()


def test_a_new_snapshot_id_discards_the_kept_bytes(nodes: tuple[FakeNode, FakeNode], small_chunks: None) -> None:
    src, dst = nodes
    m = snap_msg()
    first, second = Outgoing("n2", src.store.snapshot_view()), Outgoing("n2", src.store.snapshot_view())
    try:
        rx = Receiver(dst)
        run(rx.install(broken(snapshots._stream(src, m, first, 0), 3)))
        assert rx.held(first.id) > 0 and rx.held(second.id) == 0
        # the other stream cannot continue where the first one stopped...
        ack = run(rx.install(snapshots._stream(src, m, second, rx.held(first.id))))
        assert not ack.ok and ack.resume_offset == 0
        # ...and from 0 it replaces it
        ack = run(rx.install(snapshots._stream(src, m, second, 0)))
        assert ack.ok, ack.error
        assert data(dst.store) == data(src.store)
        assert dst.metrics.snapshots.labels("resumed")._value.get() == 0
    finally:
        first.close()
        second.close()


def test_a_resume_in_the_same_process_and_a_bad_checksum(nodes: tuple[FakeNode, FakeNode],
                                                         small_chunks: None) -> None:
    src, dst = nodes
    m = snap_msg()
    out = Outgoing("n2", src.store.snapshot_view())
    try:
        rx = Receiver(dst)
        run(rx.install(broken(snapshots._stream(src, m, out, 0), 4)))
        kept = rx.held(out.id)
        assert rx.hashed is not None and rx.hashed[0] == kept  # no need to re-read the file
        # the kept bytes changed on disk: the checksum catches it and nothing is installed
        with open(dst.home / Partial.DATA, "r+b") as f:
            f.seek(10)
            f.write(b"X")
        rx.hashed = None
        ack = run(rx.install(snapshots._stream(src, m, out, kept)))
        assert not ack.ok and "checksum" in ack.error
        assert data(dst.store) == [(b"old", b"state")]
        assert rx.partial is None and not (dst.home / Partial.DATA).exists()
    finally:
        out.close()


@pytest.mark.parametrize("sidecar, size", [
    ('{"id": "00000000000000ab", "from": "n1", "term": 1, "meta_index": 1, "meta_term": 1, "data_index": 2,'
     ' "length": 100}', 50),  # fewer bytes on disk than recorded
    ("{not json", 10),
    ('{"id": "0000000000000000", "from": "n1", "term": 1, "meta_index": 1, "meta_term": 1, "data_index": 2,'
     ' "length": 0}', 0),  # a sender that cannot resume
])
def test_an_unusable_partial_is_discarded(tmp_path: Path, sidecar: str, size: int) -> None:
    (tmp_path / Partial.SIDECAR).write_text(sidecar)
    (tmp_path / Partial.DATA).write_bytes(b"x" * size)
    assert Partial.load(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_a_partial_is_cut_to_its_recorded_length(tmp_path: Path) -> None:
    p = Partial(tmp_path, 0xAB, "n1", 4, (10, 3), 12, length=6)
    (tmp_path / Partial.DATA).write_bytes(b"abcdefghij")
    p.save()
    q = Partial.load(tmp_path)
    assert q is not None and (q.id, q.src, q.term, q.meta, q.data_index, q.length) == (0xAB, "n1", 4, (10, 3), 12, 6)
    assert (tmp_path / Partial.DATA).read_bytes() == b"abcdef"
    assert Partial.load(tmp_path / "nothing-here") is None


def test_a_newer_stream_preempts_a_stalled_one(nodes: tuple[FakeNode, FakeNode], small_chunks: None) -> None:
    src, dst = nodes
    m = snap_msg()
    stalled, fresh = Outgoing("n2", src.store.snapshot_view()), Outgoing("n2", src.store.snapshot_view())
    stall = asyncio.Event()

    async def stalling(it: AsyncIterator[pb.SnapshotChunk]) -> AsyncIterator[pb.SnapshotChunk]:
        n = 0
        async for ch in it:
            yield ch
            n += 1
            if n == 3:
                stall.set()
                await asyncio.Event().wait()  # a sender that stopped answering

    async def scenario() -> tuple[BaseException | pb.SnapshotAck, pb.SnapshotAck]:
        rx = Receiver(dst)
        first = asyncio.create_task(rx.install(stalling(snapshots._stream(src, m, stalled, 0))))
        await stall.wait()
        older = snapshots._head(src, with_term(m, 2), fresh, 0)
        refused = await rx.install(snapshots._one(older))  # an older term does not preempt
        assert not refused.ok and "term 3" in refused.error
        second = await rx.install(snapshots._stream(src, m, fresh, 0))
        return (await asyncio.gather(first, return_exceptions=True))[0], second

    try:
        first, second = run(scenario())
        assert isinstance(first, asyncio.CancelledError)
        assert second.ok, second.error
        assert data(dst.store) == data(src.store)
    finally:
        stalled.close()
        fresh.close()


def with_term(m: Message, term: int) -> Message:
    return Message(m.type, src=m.src, dst=m.dst, term=term, snapshot=m.snapshot)


def test_the_sender_keeps_one_view_per_peer_while_bytes_flow(nodes: tuple[FakeNode, FakeNode],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src: Any = nodes[0]
    monkeypatch.setattr(snapshots, "RETAIN_S", 0.3)
    m = snap_msg()

    async def scenario() -> None:
        out, kept = snapshots._take(src, m)
        assert not kept
        snapshots._after_attempt(src, out, done=False)  # the stream broke
        again, kept = snapshots._take(src, m)
        assert kept and again is out
        # retries that send nothing do not keep the view alive
        for _ in range(4):
            snapshots._after_attempt(src, out, done=False)
            await asyncio.sleep(0.1)
            if snapshots._outgoing[src].get("n2") is not out:
                break
            snapshots._take(src, m)
        assert snapshots._outgoing[src].get("n2") is None
        # a newer snapshot point than the view's data: a new stream
        out, _ = snapshots._take(src, m)
        newer = Message(m.type, src=m.src, dst=m.dst, term=m.term,
                        snapshot=SnapshotMeta(out.view.index + 1, 2, ConfState(voters=("n1", "n2"))))
        snapshots._after_attempt(src, out, done=False)
        other, kept = snapshots._take(src, newer)
        assert not kept and other is not out and other.id != out.id
        snapshots._after_attempt(src, other, done=True)  # the peer has it
        assert snapshots._outgoing[src] == {}

    run(scenario())


def test_a_view_killed_by_map_growth_starts_over(nodes: tuple[FakeNode, FakeNode], small_chunks: None) -> None:
    src: Any = nodes[0]
    dst = nodes[1]
    m = snap_msg()

    async def remap_after(it: AsyncIterator[pb.SnapshotChunk], chunks: int) -> AsyncIterator[pb.SnapshotChunk]:
        n = -1
        async for ch in it:
            yield ch
            n += 1
            if n == chunks:
                src.store._env._adopt_map_size()  # what a growing map does to open read views

    async def scenario() -> None:
        rx = Receiver(dst)
        out, _ = snapshots._take(src, m)
        ack = await rx.install(remap_after(snapshots._stream(src, m, out, 0), 2))
        assert not ack.ok and "ended early" in ack.error
        assert isinstance(out.failed, SnapshotInterrupted)
        snapshots._after_attempt(src, out, done=False)
        again, kept = snapshots._take(src, m)
        assert not kept and again.id != out.id
        ack = await rx.install(snapshots._stream(src, m, again, 0))
        assert ack.ok, ack.error
        snapshots._after_attempt(src, again, done=True)

    run(scenario())
    assert data(dst.store) == data(src.store)


def test_the_cache_is_empty_when_the_store_switches_and_stays_so_until_done(
    nodes: tuple[FakeNode, FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 6's atomic switch: while the swap runs (and when LMDB commits it) the cache
    holds nothing and takes nothing (`cache_paused`), so a local read finds the old state
    or the new one in LMDB, never a cached value older than one LMDB already served."""
    src, dst = nodes
    cache: dict[bytes, bytes] = {b"old": b"state"}  # what the cache held before
    seen: list[tuple[dict[bytes, bytes], bool]] = []
    dst.clear = cache.clear  # type: ignore[method-assign]
    real = dst.store.replace_all

    def replace_all(*a: Any, **kw: Any) -> Any:
        seen.append((dict(cache), getattr(dst, "cache_paused", False)))  # as the swap starts
        out = real(*a, **kw)
        seen.append((dict(cache), getattr(dst, "cache_paused", False)))  # LMDB has switched
        return out

    monkeypatch.setattr(dst.store, "replace_all", replace_all)
    m = snap_msg()
    out = Outgoing("n2", src.store.snapshot_view())
    try:
        ack = run(Receiver(dst).install(snapshots._stream(src, m, out, 0)))
        assert ack.ok, ack.error
    finally:
        out.close()
    assert seen == [({}, True), ({}, True)]
    assert dst.cache_paused is False and cache == {}
    assert data(dst.store) == data(src.store)
