"""The gRPC server of a node: Raft, KV, Admin, health checking and reflection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.errors import KVError
from kvstore.rpc.pb import kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc
from kvstore.rpc.services import AdminService, KVService, RaftService

if TYPE_CHECKING:
    from kvstore.node import Node


async def start_grpc_server(node: Node) -> grpc.aio.Server:
    maxmsg = node.cfg.limits.grpc_max_message
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", maxmsg),
        ("grpc.max_receive_message_length", maxmsg),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.so_reuseport", 0),
    ])
    raft_pb2_grpc.add_RaftServicer_to_server(RaftService(node), server)
    kv_pb2_grpc.add_KVServicer_to_server(KVService(node), server)
    kv_pb2_grpc.add_AdminServicer_to_server(AdminService(node), server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = (
        raft_pb2.DESCRIPTOR.services_by_name["Raft"].full_name,
        kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name,
        kv_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    addr = f"{node.me.host}:{node.me.grpc_port}"
    creds = node.server_credentials() if hasattr(node, "server_credentials") else None
    try:
        port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
    except RuntimeError as e:
        raise KVError(f"cannot listen on {addr} for gRPC: {e} (is the port in use?)") from None
    if port == 0:
        raise KVError(f"cannot listen on {addr} for gRPC (is the port in use?)")
    await server.start()
    for n in names[:3]:
        await hs.set(n, health_pb2.HealthCheckResponse.SERVING)
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    return server
