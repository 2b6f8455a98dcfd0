"""Writes that arrive at a follower travel to the leader in ordered batches.

All writes a follower receives join one queue; one batch at a time goes to the leader
(one `Propose` RPC), which proposes them in order and answers each once applied. So a
client's pipeline keeps its order, and many clients share one round trip: the
follower-side half of group commit. The next batch leaves as soon as the leader has
answered (it applied the batch before, so order holds); waiting for this node to apply
the batch too, before its writes are answered, happens beside it. A batch the leader
certainly did not take (it was not the leader, or could not be reached) is retried
whole, at the new leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from kvstore import statemachine as sm
from kvstore.errors import KVError, LimitExceeded, TryAgain, Unknown, WrongCluster
from kvstore.rpc.pb import raft_pb2 as pb

if TYPE_CHECKING:
    from kvstore.node import Node

log = logging.getLogger("kvstore.forward")
MAX_BATCH = 512
_Item = tuple[sm.Command, "asyncio.Future[sm.Result]", float]


def _fail(items: Any, err: Exception) -> None:
    """Fail the writes of these items that are still waiting, each with its own copy of
    `err` (raising one adds a traceback to it)."""
    for _, fut, _ in items:
        if not fut.done():
            fut.set_exception(type(err)(*err.args))


def not_sent(e: grpc.aio.AioRpcError) -> bool:
    """True when the request certainly never reached the leader's handler."""
    if e.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    d = (e.details() or "").lower()
    return "failed to connect" in d or "connection refused" in d or "no route" in d or "tryagain" in d


class Forwarder:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.queue: deque[_Item] = deque()
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="forwarder")
        self.batches = 0
        self._settling: set[asyncio.Task[None]] = set()  # batches the leader answered

    def submit(self, cmd: sm.Command, deadline: float) -> asyncio.Future[sm.Result]:
        fut: asyncio.Future[sm.Result] = asyncio.get_running_loop().create_future()
        self.queue.append((cmd, fut, deadline))
        self.wake.set()
        return fut

    async def close(self) -> None:
        for t in [self.task, *self._settling]:
            t.cancel()
        for t in [self.task, *self._settling]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        _fail(self.queue, TryAgain("node is stopping"))

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch: list[_Item] = []
                while self.queue and len(batch) < MAX_BATCH:
                    item = self.queue.popleft()
                    if not item[1].done():  # a client that gave up before we sent it
                        batch.append(item)
                if batch:
                    try:
                        await self._send(batch)
                    except Exception as e:  # never let one batch kill the forwarder
                        log.exception("%s: forwarding failed", self.node.name)
                        _fail(batch, Unknown(f"forwarding failed: {e}"))

    async def _send(self, batch: list[_Item]) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        deadline = max(d for _, _, d in batch)
        while True:
            if loop.time() >= deadline:
                _fail(batch, TryAgain("no leader took the write in time"))
                return
            if node.core.is_leader:
                await self._propose_here(batch, deadline)
                return
            leader = node.core.leader
            if leader is None or leader == node.name:
                await node.wait_for_leader(deadline)
                continue
            try:
                stub = node.leader_stub(leader)
                resp = await stub.Propose(
                    pb.ProposeRequest(cluster_id=node.cluster_id, commands=[sm.encode(c) for c, _, _ in batch]),
                    timeout=max(0.01, deadline - loop.time()))
            except KVError:
                await asyncio.sleep(0.02)
                continue
            except grpc.aio.AioRpcError as e:
                if not_sent(e):
                    await asyncio.sleep(0.02)
                    continue
                err = _error_for(e, leader)
                _fail(batch, err)
                return
            self.batches += 1
            t = asyncio.ensure_future(self._settle(batch, resp, deadline))
            self._settling.add(t)
            t.add_done_callback(self._settling.discard)
            return

    async def _propose_here(self, batch: list[_Item], deadline: float) -> None:
        timeout = max(0.01, deadline - asyncio.get_running_loop().time())
        futs = self.node.propose_all([cmd for cmd, _, _ in batch], timeout)  # all now, in order
        for (_, fut, _), f in zip(batch, futs, strict=True):
            try:
                res, _ = await f
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
                continue
            if not fut.done():
                fut.set_result(res)

    async def _settle(self, batch: list[_Item], resp: pb.ProposeResponse, deadline: float) -> None:
        """Answer a batch the leader answered, once applied here (a task of its own)."""
        try:
            loop = asyncio.get_running_loop()
            top = max((r.index for r in resp.results if r.status == pb.ProposeResult.APPLIED), default=0)
            applied_here = True
            if top:
                try:
                    await self.node.wait_applied(top, max(0.01, deadline - loop.time()))
                except TimeoutError:
                    applied_here = False
            for (_, fut, _), r in zip(batch, resp.results, strict=False):
                if fut.done():
                    continue
                if r.status == pb.ProposeResult.APPLIED:
                    if applied_here:
                        fut.set_result(sm.decode_result(r.result))
                    else:
                        fut.set_exception(Unknown(f"committed at index {r.index} but not yet applied here"))
                elif r.status == pb.ProposeResult.NOT_APPLIED:
                    fut.set_exception(TryAgain(r.error or "not applied"))
                else:
                    fut.set_exception(Unknown(r.error or "outcome unknown"))
            _fail(batch[len(resp.results):], Unknown("the leader's answer was incomplete"))
        except asyncio.CancelledError:  # the node is stopping
            _fail(batch, Unknown("node stopped before it applied the write here"))
            raise
        except Exception as e:  # never leave a client waiting on an answer we cannot read
            log.exception("%s: answering a forwarded batch failed", self.node.name)
            _fail(batch, Unknown(f"forwarding failed: {e}"))


def _error_for(e: grpc.aio.AioRpcError, leader: str) -> KVError:
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return LimitExceeded(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return WrongCluster(details)
    return Unknown(f"forwarded write to {leader}: {code.name.lower()}: {details}")
