"""`kvstore bench ipc`: one request over every local IPC mechanism and RPC stack.

MECHANISMS is the table's order: from no request at all (shared memory) to the most
layered RPC. runner.py drives them, report.py prints and plots the results.
"""

from __future__ import annotations

from kvstore.bench.ipc.base import Mechanism
from kvstore.bench.ipc.corba import Corba
from kvstore.bench.ipc.grpcmech import GrpcStream, GrpcUnary
from kvstore.bench.ipc.http import JsonRpc, XmlRpc
from kvstore.bench.ipc.local import MessageQueue, SharedMemory, SharedMemoryMemo
from kvstore.bench.ipc.resp import AnonPipe, NamedPipe, TcpResp, UnixSocketResp

MECHANISMS: list[Mechanism] = [
    SharedMemory(), SharedMemoryMemo(), AnonPipe(), NamedPipe(), MessageQueue(), UnixSocketResp(), TcpResp(),
    GrpcUnary(), GrpcStream(), JsonRpc(), XmlRpc(), Corba(),
]


def get_mechanism(name: str) -> Mechanism:
    for m in MECHANISMS:
        if m.name == name:
            return m
    raise KeyError(f"no IPC mechanism {name!r} (have: {', '.join(m.name for m in MECHANISMS)})")
