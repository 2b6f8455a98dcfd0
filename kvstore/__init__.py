"""kvstore: a small distributed key-value store.

IPC on one machine (LMDB, POSIX shared memory, a RESP server on a UNIX socket) and
RPC between machines (Raft over gRPC). See README.md and docs/DESIGN.md.
"""

__version__ = "0.1.0"
