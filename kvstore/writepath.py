"""The write path of a node: validate, propose on the leader or forward, await the apply.

A mixin of `Node`: it uses the node's core, metrics, forwarder and waiters.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from kvstore import statemachine as sm
from kvstore.errors import KVError, LimitExceeded, TryAgain, Unknown
from kvstore.raft import ConfChange, NotLeader, ProposalDropped
from kvstore.rpc.pb import raft_pb2_grpc as pbg
from kvstore.rpc.transport import make_channel

if TYPE_CHECKING:
    from kvstore.config import ClusterConfig
    from kvstore.forward import Forwarder
    from kvstore.metrics import NodeMetrics
    from kvstore.raft import RaftCore

_COMMAND_NAMES = {sm.Set: "set", sm.Delete: "del", sm.MSet: "mset"}


# How a write's future resolves: None, with (result, log index); (command name, start
# time), with the result alone, and the write counted in the metrics (submit_write).
_Tag = tuple[str, float] | None


class Pending:
    """The writes of one log entry, in order: their futures and tags."""

    __slots__ = ("futs", "tags")

    def __init__(self, futs: list[asyncio.Future[Any]], tags: list[_Tag]) -> None:
        self.futs = futs
        self.tags = tags


_Expiry = tuple[float, int, int, float, Pending]
# A batch is proposed once it holds this many writes or bytes, even mid-turn.
MAX_BATCH = 1024
MAX_BATCH_BYTES = 256 << 10


def _outcome(e: BaseException) -> str:
    return "tryagain" if isinstance(e, TryAgain) else "unknown" if isinstance(e, Unknown) else "error"


class WritePath:
    # Provided by Node.
    name: str
    cfg: ClusterConfig
    core: RaftCore
    metrics: NodeMetrics
    forwarder: Forwarder
    timeout: float
    _loop: asyncio.AbstractEventLoop
    # log index -> (term proposed in, the entry's writes)
    _waiters: dict[int, tuple[int, Pending]]
    _batch: list[tuple[bytes, asyncio.Future[Any], _Tag]]  # not yet proposed
    _batch_bytes: int
    # (deadline, sequence, index, timeout, writes) of _waiters, in order; _expiry_odd:
    # the same for other timeouts, a heap (the sequence number breaks ties)
    _expiry: deque[_Expiry]
    _expiry_odd: list[_Expiry]
    _expiry_seq: Iterator[int]
    _wake: asyncio.Event
    _leader_known: asyncio.Event
    _leader_stubs: dict[str, tuple[grpc.aio.Channel, pbg.RaftStub]]

    def _address_of(self, name: str) -> str | None: ...

    def _channel_credentials(self) -> grpc.ChannelCredentials | None: ...

    def _validate(self, cmd: sm.Command) -> None:
        lim = self.cfg.limits
        for k in sm.keys_of(cmd):
            if not k:
                raise LimitExceeded("empty key")
            if len(k) > lim.max_key:
                raise LimitExceeded(f"key is {len(k)} bytes; the limit is {lim.max_key}")
        values = [cmd.value] if isinstance(cmd, sm.Set) else [v for _, v in cmd.pairs] \
            if isinstance(cmd, sm.MSet) else []
        for v in values:
            if len(v) > lim.max_value:
                raise LimitExceeded(f"value is {len(v)} bytes; the limit is {lim.max_value}")

    def propose_future(self, cmd: sm.Command | ConfChange, timeout: float | None = None,
                       tag: _Tag = None) -> asyncio.Future[Any]:
        """Propose on this node (the leader); the future resolves with (result, index)
        (with a tag: the result) once applied here, or fails with TryAgain (leadership
        changed) or Unknown (not applied in time: the ticker expires it). No Task or
        timer per write.

        A command joins the batch that goes into the log at the end of this turn of the
        event loop (or sooner, once the batch is full): the writes that arrive together
        share one log entry (a BATCH, see statemachine.py). Proposals keep their order.
        """
        loop = self._loop
        if isinstance(cmd, ConfChange):
            self._flush_batch()
            try:
                idx = self.core.propose_conf_change(cmd)
            except NotLeader as e:
                raise TryAgain(f"{self.name} is not the leader") from e
            except ProposalDropped as e:
                raise TryAgain(f"proposal dropped: {e}") from e
            fut: asyncio.Future[Any] = loop.create_future()
            self._track(idx, Pending([fut], [None]), timeout or self.timeout)
            return fut
        if not self.core.is_leader:
            raise TryAgain(f"{self.name} is not the leader")
        data = sm.encode(cmd)
        fut = loop.create_future()
        if timeout is not None and timeout != self.timeout:  # rare: an entry of its own
            self._flush_batch()
            self._batch.append((data, fut, tag))
            self._flush_batch(timeout)
            return fut
        batch = self._batch
        batch.append((data, fut, tag))
        self._batch_bytes += len(data)
        if len(batch) == 1:
            loop.call_soon(self._flush_batch)
        elif len(batch) >= MAX_BATCH or self._batch_bytes >= MAX_BATCH_BYTES:
            self._flush_batch()
        return fut

    def _flush_batch(self, timeout: float | None = None) -> None:
        """Propose the batch of writes gathered so far as one log entry."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self._batch_bytes = 0
        p = Pending([f for _, f, _ in batch], [t for _, _, t in batch])
        data = batch[0][0] if len(batch) == 1 else sm.encode_batch([d for d, _, _ in batch])
        try:
            idx = self.core.propose(data)
        except (NotLeader, ProposalDropped) as e:
            self.settle(p, 0, None, TryAgain(f"{self.name} is not the leader" if isinstance(e, NotLeader)
                                             else f"proposal dropped: {e}"))
            return
        self.metrics.proposals.inc(len(batch))
        self._track(idx, p, timeout or self.timeout)

    def _track(self, idx: int, p: Pending, t: float) -> None:
        """Wait for the entry at idx: its writes, and their deadline."""
        old = self._waiters.get(idx)
        if old is not None:
            # We lost leadership and won it back: the entry we proposed at idx before was
            # overwritten (else our log would be longer), so it never applied.
            self.settle(old[1], idx, None, TryAgain("leadership changed before the write committed"))
        self._waiters[idx] = (self.core.term, p)
        item = (self._loop.time() + t, next(self._expiry_seq), idx, t, p)
        if t == self.timeout:  # deadlines in order: a queue will do
            self._expiry.append(item)
        else:
            heapq.heappush(self._expiry_odd, item)
        self._wake.set()

    def settle(self, p: Pending, idx: int, results: list[sm.Result] | None, err: KVError | None) -> None:
        """Answer an entry's writes: each its result (results[i]), or each `err`."""
        now = time.perf_counter()
        count = self.metrics.count
        outcome = "ok" if err is None else _outcome(err)
        for i, fut in enumerate(p.futs):
            tag = p.tags[i]
            if tag is not None:
                count(tag[0], "error" if fut.cancelled() else outcome, now - tag[1])
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(type(err)(str(err)))  # one each: raising adds a traceback
            else:
                assert results is not None
                fut.set_result(results[i] if tag is not None else (results[i], idx))

    def propose_all(self, cmds: list[sm.Command],
                    timeout: float | None = None) -> list[asyncio.Future[tuple[sm.Result, int]]]:
        """propose_future() of each command now, in order; one that cannot be proposed
        gets a future that already holds its error."""
        loop = self._loop
        out: list[asyncio.Future[tuple[sm.Result, int]]] = []
        for cmd in cmds:
            try:
                out.append(self.propose_future(cmd, timeout))
            except Exception as e:
                failed: asyncio.Future[tuple[sm.Result, int]] = loop.create_future()
                failed.set_exception(e)
                out.append(failed)
        return out

    def _expire_waiters(self, now: float) -> None:
        """Fail the proposals whose time ran out (called on every tick)."""
        q, h = self._expiry, self._expiry_odd
        while q and q[0][0] <= now:
            self._expire(*q.popleft())
        while h and h[0][0] <= now:
            self._expire(*heapq.heappop(h))

    def _expire(self, _: float, __: int, idx: int, t: float, p: Pending) -> None:
        w = self._waiters.get(idx)
        if w is not None and w[1] is p:
            del self._waiters[idx]
        if not all(f.done() for f in p.futs):
            self.settle(p, idx, None, Unknown(f"write at index {idx} not committed within {t:.1f}s"))

    async def propose_as_leader(self, cmd: sm.Command | ConfChange,
                                timeout: float | None = None) -> tuple[sm.Result, int]:
        return await self.propose_future(cmd, timeout)

    # Writes apply in the order of submit_write() calls: the leader proposes (and a
    # follower enqueues for forwarding) at once, so the RESP server may keep a
    # connection's pipelined writes in flight together and they share a commit.
    ordered_writes = True

    def submit_write(self, cmd: sm.Command) -> asyncio.Future[sm.Result]:
        """Start a write and return a future of its result: proposed here on the leader,
        or queued for the leader by the forwarder. The RESP server keeps a pipeline's
        writes in flight this way without a Task for each. Raises at once (TryAgain,
        LimitExceeded) when the write cannot even start."""
        name = _COMMAND_NAMES.get(type(cmd), "write")
        count = self.metrics.count
        t0 = time.perf_counter()
        try:
            self._validate(cmd)
            if self.core.is_leader:
                try:
                    return self.propose_future(cmd, self.timeout, (name, t0))  # settle() counts it
                except TryAgain:
                    if self.core.is_leader:
                        raise
                    # lost leadership before proposing: forward instead
            fut = self.forwarder.submit(cmd, self._loop.time() + self.timeout)
        except Exception as e:
            count(name, _outcome(e))
            raise

        def done(f: asyncio.Future[Any]) -> None:
            e = None if f.cancelled() else f.exception()
            count(name, "error" if f.cancelled() else "ok" if e is None else _outcome(e), time.perf_counter() - t0)

        fut.add_done_callback(done)
        return fut

    async def write(self, cmd: sm.Command) -> sm.Result:
        return await self.submit_write(cmd)

    async def wait_for_leader(self, deadline: float) -> None:
        """Wait (briefly, at most until deadline) for a leader to be known."""
        loop = asyncio.get_running_loop()
        if self.core.leader is None:
            self._leader_known.clear()
        try:
            await asyncio.wait_for(self._leader_known.wait(), max(0.0, min(0.05, deadline - loop.time())))
        except TimeoutError:
            pass

    def leader_stub(self, leader: str) -> pbg.RaftStub:
        ent = self._leader_stubs.get(leader)
        if ent is None:
            addr = self._address_of(leader)
            if addr is None:
                raise TryAgain(f"no address for leader {leader}")
            ch = make_channel(addr, self.cfg.limits.grpc_max_message, self._channel_credentials(), leader)
            ent = self._leader_stubs[leader] = (ch, pbg.RaftStub(ch))
        return ent[1]
