"""Linearizable reads with ReadIndex, batched.

A read waits for a round: the leader records its commit index, confirms with a
heartbeat to a majority that it is still the leader, and the reader then waits until
this node has applied that index. Reads that arrive while a round is in flight join the
next round (never the current one: it may have started before they arrived, and then
its index could miss a write they must see). One round serves any number of readers.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

from kvstore.errors import TryAgain
from kvstore.raft import NotLeader

if TYPE_CHECKING:
    from kvstore.node import Node


class ReadBarrier:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.pending: list[asyncio.Future[None]] = []
        self.rounds: dict[bytes, tuple[float, list[asyncio.Future[None]]]] = {}
        self._ids = itertools.count(1)
        self.round_timeout = node.cfg.raft.election_ticks * node.cfg.raft.tick_ms / 1000
        self.rounds_started = 0

    async def wait(self, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        if not self.rounds:
            self._start()
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TryAgain("could not confirm with a leader in time (no quorum?)") from None

    def _start(self) -> None:
        waiters = [f for f in self.pending if not f.done()]
        self.pending = []
        if not waiters:
            return
        ctx = f"{self.node.name}:{next(self._ids)}".encode()
        try:
            self.node.core.read_index(ctx)
        except NotLeader:
            self.pending = waiters  # no leader known yet: the next tick tries again
            return
        self.rounds_started += 1
        self.rounds[ctx] = (asyncio.get_running_loop().time(), waiters)
        self.node.kick()

    def on_read_state(self, index: int, ctx: bytes) -> None:
        r = self.rounds.pop(ctx, None)
        if r is None:
            return
        for fut in r[1]:
            if fut.done():
                continue
            if self.node.applied >= index:
                fut.set_result(None)
            else:
                self.node._applied_waiters.append((index, fut))
        if self.pending and not self.rounds:
            self._start()

    def on_tick(self) -> None:
        if self.rounds:
            now = asyncio.get_running_loop().time()
            for ctx, (t0, waiters) in list(self.rounds.items()):
                if now - t0 > self.round_timeout:  # lost with a leader change or a dropped message
                    del self.rounds[ctx]
                    self.pending = waiters + self.pending
        if self.pending and not self.rounds:
            self._start()
