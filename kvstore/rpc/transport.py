"""Sending Raft messages to peers over gRPC, one channel and one sender task per peer.

Raft tolerates lost messages (it retransmits), so a peer that is slow or gone never
blocks anyone: its queue is bounded and overflow is dropped and reported to the core
as unreachable. Replication traffic goes over one long-lived client stream per peer;
votes and TimeoutNow use their own unary RPCs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import grpc

from kvstore.raft import Message, MsgType
from kvstore.rpc.convert import msg_to_pb
from kvstore.rpc.pb import raft_pb2 as pb
from kvstore.rpc.pb import raft_pb2_grpc as pbg

log = logging.getLogger("kvstore.transport")

_VOTE_TYPES = {MsgType.PREVOTE, MsgType.PREVOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP}
MAX_QUEUE = 8192
MAX_BATCH = 256


def channel_options(max_message: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]


def make_channel(address: str, max_message: int,
                 credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None) -> grpc.aio.Channel:
    opts: list[tuple[str, object]] = list(channel_options(max_message))
    if credentials is not None:
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        return grpc.aio.secure_channel(address, credentials, options=opts)
    return grpc.aio.insecure_channel(address, options=opts)


class Peer:
    def __init__(self, owner: Transport, name: str, address: str) -> None:
        self.owner = owner
        self.name = name
        self.address = address
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.channel = make_channel(address, owner.max_message, owner.credentials, name)
        self.stub = pbg.RaftStub(self.channel)
        self.task = asyncio.create_task(self._run(), name=f"peer-{name}")
        self.sent = 0
        self.dropped = 0
        self.connected = False

    def enqueue(self, m: Message) -> None:
        if len(self.queue) >= MAX_QUEUE:
            self.dropped += 1
            self.owner.on_unreachable(self.name)
            return
        self.queue.append(m)
        self.wake.set()

    async def _run(self) -> None:
        backoff = 0.02
        while True:
            call = None
            try:
                await self.wake.wait()
                call = self.stub.AppendEntries()
                while True:
                    await self.wake.wait()
                    self.wake.clear()
                    carry: tuple[pb.RaftMessage, int] | None = None  # converted, for the next batch
                    while self.queue or carry:
                        # A batch stays well under the gRPC message limit: AppendEntries
                        # can each be megabytes, and one oversized write breaks the stream.
                        batch: list[pb.RaftMessage] = []
                        size, limit = 0, self.owner.max_message // 2
                        if carry:
                            batch.append(carry[0])
                            size, carry = carry[1], None
                        while self.queue and len(batch) < MAX_BATCH:
                            m = self.queue.popleft()
                            if m.type in _VOTE_TYPES or m.type == MsgType.TIMEOUT_NOW:
                                asyncio.create_task(self._unary(m))
                                continue
                            p = msg_to_pb(m)
                            n = p.ByteSize()
                            if batch and size + n > limit:
                                carry = (p, n)
                                break
                            batch.append(p)
                            size += n
                        if batch:
                            await call.write(pb.RaftBatch(cluster_id=self.owner.cluster_id, messages=batch))
                            self.sent += len(batch)
                            if not self.connected:
                                self.connected = True
                                log.info("%s: connected to peer %s at %s", self.owner.name, self.name, self.address)
                            backoff = 0.02
            except asyncio.CancelledError:
                if call is not None:
                    call.cancel()
                raise
            except Exception as e:  # the peer is down, restarting, or cut off
                if call is not None:
                    call.cancel()
                if self.connected:
                    log.warning("%s: lost peer %s (%s): %s", self.owner.name, self.name, self.address,
                                _short(e))
                self.connected = False
                self.owner.on_unreachable(self.name)
                # Messages queued for a dead peer are stale by the time it returns.
                self.queue.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    async def _unary(self, m: Message) -> None:
        timeout = 1.0
        try:
            if m.type == MsgType.TIMEOUT_NOW:
                await self.stub.TimeoutNow(pb.TimeoutNowRequest(cluster_id=self.owner.cluster_id,
                                                                message=msg_to_pb(m)), timeout=timeout)
            else:
                pre = m.type in (MsgType.PREVOTE, MsgType.PREVOTE_RESP)
                await self.stub.RequestVote(pb.VoteRequest(cluster_id=self.owner.cluster_id, pre_vote=pre,
                                                           message=msg_to_pb(m)), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.error("%s: peer %s refused us: %s", self.owner.name, self.name, e.details())
        except Exception:
            pass

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        await self.channel.close(grace=None)


def _short(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


class Transport:
    def __init__(self, name: str, cluster_id: str, addresses: Callable[[str], str | None], *,
                 on_unreachable: Callable[[str], None], max_message: int = 8 << 20,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.name = name
        self.cluster_id = cluster_id
        self.addresses = addresses
        self.on_unreachable = on_unreachable
        self.max_message = max_message
        self.credentials = credentials
        self.peers: dict[str, Peer] = {}

    def peer(self, name: str) -> Peer | None:
        p = self.peers.get(name)
        if p is None:
            addr = self.addresses(name)
            if addr is None:
                return None
            p = self.peers[name] = Peer(self, name, addr)
        return p

    def send(self, msgs: list[Message]) -> None:
        for m in msgs:
            p = self.peer(m.dst)
            if p is None:
                log.warning("%s: no address for peer %s; message dropped", self.name, m.dst)
                continue
            p.enqueue(m)

    async def drop_peer(self, name: str) -> None:
        p = self.peers.pop(name, None)
        if p is not None:
            await p.close()

    async def close(self) -> None:
        for p in list(self.peers.values()):
            await p.close()
        self.peers.clear()
