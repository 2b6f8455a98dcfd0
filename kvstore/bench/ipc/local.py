"""Mechanisms without a byte stream: shared memory and POSIX message queues."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kvstore.bench.ipc.base import Mechanism, Ready, Setup


class SharedMemory(Mechanism):
    """The node's own cache: the server fills a ShmCache, clients read the segment directly.

    No request travels: a get hashes the key, reads a slot and copies the value, checked
    by a seqlock; the semaphore is taken only by writers. The server process does nothing
    per request. `memo` turns on the per-process memo of validated reads (the default in
    ShmCache), which turns a repeated get into a dict lookup plus one 8-byte check.
    """

    name = "shm"
    title = "shared memory"
    server_model = "no server work per request: clients read the segment"
    memo = False

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        name = f"/kvb-{uid}"
        s = Setup(server_args=name, client_args=[name] * nclients)
        s.owned.shm.append(name)
        return s

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        from kvstore.cache import ShmCache

        cache = ShmCache.create(args, size_bytes=max(8 << 20, 1024 * len(data)), max_value=256)
        cache.put_many(data.items())
        lost = sum(1 for k in data if cache.get(k) is None)
        if lost:
            raise RuntimeError(f"{lost} of {len(data)} keys evicted while filling the cache: make it bigger")
        ready(args)
        threading.Event().wait()

    def connect(self, args: Any, info: Any) -> Any:
        from kvstore.cache import ShmCache

        return ShmCache.attach(info, memo_entries=65536 if self.memo else 0)


class SharedMemoryMemo(SharedMemory):
    name = "shm-memo"
    title = "shared mem + memo"
    memo = True


class MessageQueue(Mechanism):
    """POSIX message queues: one request queue for all clients, one reply queue per client.

    A request is the client's number (one byte) and the key; a reply is one status byte
    (1 found, 0 missing) and the value. Message boundaries are kept by the kernel.
    """

    name = "mqueue"
    title = "POSIX mqueue"
    server_model = "1 thread, blocking receive; a reply queue per client"
    MAX_MESSAGE = 512

    def unavailable(self) -> str | None:
        try:
            import posix_ipc
        except ImportError:
            return "posix_ipc is not installed"
        return None if posix_ipc.MESSAGE_QUEUES_SUPPORTED else "this OS has no POSIX message queues"

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        req = f"/kvb-{uid}-q"
        replies = [f"/kvb-{uid}-r{i}" for i in range(nclients)]
        s = Setup(server_args=(req, replies), client_args=[(req, r, i) for i, r in enumerate(replies)])
        s.owned.mqueues += [req, *replies]
        return s

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        import posix_ipc

        req_name, reply_names = args
        # at most 10 messages: the default msg_max an unprivileged user may ask for
        opts = dict(flags=posix_ipc.O_CREX, mode=0o600, max_messages=8, max_message_size=self.MAX_MESSAGE)
        req = posix_ipc.MessageQueue(req_name, **opts)
        replies = [posix_ipc.MessageQueue(n, **opts) for n in reply_names]
        sends = [q.send for q in replies]
        receive, get = req.receive, data.get
        ready(None)
        while True:
            msg, _ = receive()
            v = get(msg[1:])
            sends[msg[0]](b"\x00" if v is None else b"\x01" + v)

    def connect(self, args: Any, info: Any) -> Any:
        return _MqConn(*args)


class _MqConn:
    def __init__(self, req: str, reply: str, idx: int) -> None:
        import posix_ipc

        self._req, self._reply = posix_ipc.MessageQueue(req), posix_ipc.MessageQueue(reply)
        self._send, self._receive = self._req.send, self._reply.receive
        self._prefix = bytes([idx])

    def get(self, key: bytes) -> bytes | None:
        self._send(self._prefix + key)
        msg, _ = self._receive(10.0)  # a timeout, so that a dead server fails the run
        return msg[1:] if msg[:1] == b"\x01" else None

    def close(self) -> None:
        self._req.close()
        self._reply.close()
