"""The write path of a node: validate, propose on the leader or forward, await the apply.

A mixin of `Node`: it uses the node's core, metrics, forwarder and waiters.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from kvstore import statemachine as sm
from kvstore.errors import LimitExceeded, TryAgain, Unknown
from kvstore.raft import ConfChange, NotLeader, ProposalDropped
from kvstore.rpc.pb import raft_pb2_grpc as pbg
from kvstore.rpc.transport import make_channel

if TYPE_CHECKING:
    from kvstore.config import ClusterConfig
    from kvstore.forward import Forwarder
    from kvstore.metrics import NodeMetrics
    from kvstore.raft import RaftCore

_COMMAND_NAMES = {sm.Set: "set", sm.Delete: "del", sm.MSet: "mset"}


class WritePath:
    # Provided by Node.
    name: str
    cfg: ClusterConfig
    core: RaftCore
    metrics: NodeMetrics
    forwarder: Forwarder
    timeout: float
    _waiters: dict[int, tuple[int, asyncio.Future[tuple[sm.Result, int]]]]
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

    async def propose_as_leader(self, cmd: sm.Command | ConfChange,
                                timeout: float | None = None) -> tuple[sm.Result, int]:
        try:
            if isinstance(cmd, ConfChange):
                idx = self.core.propose_conf_change(cmd)
            else:
                idx = self.core.propose(sm.encode(cmd))
        except NotLeader as e:
            raise TryAgain(f"{self.name} is not the leader") from e
        except ProposalDropped as e:
            raise TryAgain(f"proposal dropped: {e}") from e
        self.metrics.proposals.inc()
        fut: asyncio.Future[tuple[sm.Result, int]] = asyncio.get_running_loop().create_future()
        self._waiters[idx] = (self.core.term, fut)
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout)
        except TimeoutError:
            self._waiters.pop(idx, None)
            raise Unknown(f"write at index {idx} not committed within {timeout or self.timeout:.1f}s") from None

    # Writes apply in the order of write() calls: the leader proposes (and a follower
    # enqueues for forwarding) before the first await, so the RESP server may keep a
    # connection's pipelined writes in flight together and they share a commit.
    ordered_writes = True

    async def write(self, cmd: sm.Command) -> sm.Result:
        name = _COMMAND_NAMES.get(type(cmd), "write")
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            return await self._write(cmd)
        except TryAgain:
            outcome = "tryagain"
            raise
        except Unknown:
            outcome = "unknown"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.count(name, outcome, time.perf_counter() - t0)

    async def _write(self, cmd: sm.Command) -> sm.Result:
        self._validate(cmd)
        deadline = asyncio.get_running_loop().time() + self.timeout
        if self.core.is_leader:
            try:
                res, _ = await self.propose_as_leader(cmd, self.timeout)
                return res
            except TryAgain:
                if self.core.is_leader:
                    raise
                # lost leadership before proposing: forward instead
        return await self.forwarder.submit(cmd, deadline)

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
