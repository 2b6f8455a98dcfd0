"""gRPC services of a node: Raft (peers), KV (remote clients), Admin (operators, the CLI)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from kvstore import statemachine as sm
from kvstore.errors import KVError, LimitExceeded, TryAgain, Unknown, WrongCluster
from kvstore.rpc.convert import msg_from_pb
from kvstore.rpc.pb import kv_pb2 as kvpb
from kvstore.rpc.pb import kv_pb2_grpc as kvpbg
from kvstore.rpc.pb import raft_pb2 as pb
from kvstore.rpc.pb import raft_pb2_grpc as pbg

if TYPE_CHECKING:
    from kvstore.node import Node

async def abort_for(context: grpc.aio.ServicerContext, e: Exception) -> None:
    if isinstance(e, TryAgain):
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"TRYAGAIN {e}")
    if isinstance(e, Unknown):
        await context.abort(grpc.StatusCode.UNKNOWN, f"UNKNOWN {e}")
    if isinstance(e, LimitExceeded):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    if isinstance(e, WrongCluster):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    await context.abort(grpc.StatusCode.INTERNAL, str(e) or type(e).__name__)


class RaftService(pbg.RaftServicer):
    def __init__(self, node: Node) -> None:
        from kvstore import snapshots

        self.node = node
        # now, not at the first InstallSnapshot: a stream cut by a crash is trimmed to
        # what was flushed, and deleted if nobody resumes it
        self.snapshots = snapshots.receiver(node)

    async def _check(self, cluster_id: str, context: grpc.aio.ServicerContext) -> None:
        if cluster_id != self.node.cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {self.node.name} belongs to cluster {self.node.cluster_id}, not {cluster_id or '(none)'}",
            )

    async def AppendEntries(self, request_iterator: AsyncIterator[pb.RaftBatch],
                            context: grpc.aio.ServicerContext) -> pb.RaftAck:
        async for batch in request_iterator:
            await self._check(batch.cluster_id, context)
            for m in batch.messages:
                self.node.receive(msg_from_pb(m))
        return pb.RaftAck()

    async def RequestVote(self, request: pb.VoteRequest, context: grpc.aio.ServicerContext) -> pb.RaftAck:
        await self._check(request.cluster_id, context)
        self.node.receive(msg_from_pb(request.message))
        return pb.RaftAck()

    async def TimeoutNow(self, request: pb.TimeoutNowRequest, context: grpc.aio.ServicerContext) -> pb.RaftAck:
        await self._check(request.cluster_id, context)
        self.node.receive(msg_from_pb(request.message))
        return pb.RaftAck()

    async def InstallSnapshot(self, request_iterator: AsyncIterator[pb.SnapshotChunk],
                              context: grpc.aio.ServicerContext) -> pb.SnapshotAck:
        return await self.snapshots.install(request_iterator)

    async def Propose(self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext) -> pb.ProposeResponse:
        """Forwarded writes: proposed in order, each answered once applied here."""
        await self._check(request.cluster_id, context)
        cmds: list[sm.Command] = []
        for raw in request.commands:
            try:
                cmd = sm.decode(raw)
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed command: {e}")
                raise
            if cmd is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty command")
                raise AssertionError
            cmds.append(cmd)
        results = []
        for t in self.node.propose_all(cmds):  # all proposed now, in order; then wait for each
            try:
                res, index = await t
                results.append(pb.ProposeResult(status=pb.ProposeResult.APPLIED, result=sm.encode_result(res),
                                                index=index))
            except TryAgain as e:
                results.append(pb.ProposeResult(status=pb.ProposeResult.NOT_APPLIED, error=str(e)))
            except Exception as e:
                results.append(pb.ProposeResult(status=pb.ProposeResult.UNKNOWN, error=str(e)))
        return pb.ProposeResponse(results=results)


class KVService(kvpbg.KVServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Get(self, request: kvpb.GetRequest, context: grpc.aio.ServicerContext) -> kvpb.GetResponse:
        try:
            if request.consistency == kvpb.LINEARIZABLE:
                await self.node.read_barrier()
            v = self.node.get(request.key)
        except KVError as e:
            await abort_for(context, e)
            raise
        return kvpb.GetResponse(found=v is not None, value=v or b"")

    async def Put(self, request: kvpb.PutRequest, context: grpc.aio.ServicerContext) -> kvpb.PutResponse:
        try:
            res = await self.node.write(sm.Set(request.key, request.value, request.if_absent,
                                               request.if_present, request.return_old))
        except KVError as e:
            await abort_for(context, e)
            raise
        assert isinstance(res, sm.SetResult)
        return kvpb.PutResponse(applied=res.applied, had_old=res.old is not None, old=res.old or b"")

    async def Delete(self, request: kvpb.DeleteRequest, context: grpc.aio.ServicerContext) -> kvpb.DeleteResponse:
        if not request.keys:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no keys to delete")
        try:
            res = await self.node.write(sm.Delete(tuple(request.keys)))
        except KVError as e:
            await abort_for(context, e)
            raise
        return kvpb.DeleteResponse(deleted=res if isinstance(res, int) else 0)

    async def Scan(self, request: kvpb.ScanRequest, context: grpc.aio.ServicerContext) -> kvpb.ScanResponse:
        limit = min(request.limit or 1000, 10_000)
        try:
            if request.consistency == kvpb.LINEARIZABLE:
                await self.node.read_barrier()
            start = max(request.start, request.prefix)
            items = self.node.scan(start, limit + 1)
        except KVError as e:
            await abort_for(context, e)
            raise
        items = [(k, v) for k, v in items if k.startswith(request.prefix)]
        nxt = b""
        if len(items) > limit:
            nxt = items[limit][0]
            items = items[:limit]
        return kvpb.ScanResponse(items=[kvpb.KeyValue(key=k, value=v) for k, v in items], next=nxt)


class AdminService(kvpbg.AdminServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Status(self, request: kvpb.StatusRequest, context: grpc.aio.ServicerContext) -> kvpb.StatusResponse:
        s = self.node.status()
        return kvpb.StatusResponse(
            name=s["name"], cluster_id=s["cluster_id"], role=s["role"], term=s["term"], leader=s["leader"] or "",
            commit_index=s["commit_index"], applied_index=s["applied_index"], last_index=s["last_index"],
            snapshot_index=s["snapshot_index"], log_length=s["log_length"], voters=s["voters"],
            learners=s["learners"], socket=s["socket"], grpc=s["grpc"], metrics=s["metrics"], pid=os.getpid(),
            applied_writes=s["applied_writes"],
        )

    async def AddNode(self, request: kvpb.MemberRequest, context: grpc.aio.ServicerContext) -> kvpb.MemberResponse:
        try:
            conf = await self.node.change_member("add", request.name, request.address)
        except KVError as e:
            await abort_for(context, e)
            raise
        return kvpb.MemberResponse(voters=conf.voters, learners=conf.learners)

    async def RemoveNode(self, request: kvpb.MemberRequest,
                         context: grpc.aio.ServicerContext) -> kvpb.MemberResponse:
        try:
            conf = await self.node.change_member("remove", request.name, "")
        except KVError as e:
            await abort_for(context, e)
            raise
        return kvpb.MemberResponse(voters=conf.voters, learners=conf.learners)

    async def TransferLeader(self, request: kvpb.TransferRequest,
                             context: grpc.aio.ServicerContext) -> kvpb.TransferResponse:
        try:
            leader = await self.node.transfer_leadership(request.to or None)
        except KVError as e:
            await abort_for(context, e)
            raise
        return kvpb.TransferResponse(leader=leader or "")
