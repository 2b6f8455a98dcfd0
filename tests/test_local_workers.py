"""Worker processes sharing the node's RESP socket: forwarding, error mapping, crash and parent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posix_ipc
import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import TryAgainError
from redis.retry import Retry

from kvstore.local.single import SingleNodeBackend
from kvstore.local.testing import FlakyBackend, ServerThread
from kvstore.local.workers import WorkerPool


class Node:
    """A node on a background loop, with a WorkerPool on its socket."""

    def __init__(self, d: Path, workers: int = 2, wrap: Any = None) -> None:
        self.cache = f"/kvs-w-{uuid.uuid4().hex[:12]}"
        self.data = str(d / "data")

        def make() -> Any:
            b = SingleNodeBackend.open(self.data, cache_name=self.cache, sync=False)
            return wrap(b) if wrap else b

        self.st = ServerThread(make)
        self.workers = workers
        self.internal = str(d / "internal.sock")
        self.pool: WorkerPool | None = None

    def __enter__(self) -> Node:
        self.st.start()
        assert self.st.server is not None and self.st.server.socket is not None
        self.pool = WorkerPool(
            self.st.backend,
            self.st.server.socket,
            workers=self.workers,
            store_path=self.data,
            cache_name=self.cache,
            internal_path=self.internal,
            path=self.st.path,
        )
        try:
            self.st.call(self.pool.start())
        except BaseException:
            self.st.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        pids = self.pool.pids if self.pool else []
        try:
            if self.pool is not None:
                self.st.call(self.pool.stop())
        finally:
            self.st.stop()
        for pid in pids:
            assert not alive(pid)
        assert not os.path.exists(self.internal) and not os.path.exists(self.st.path)
        assert not os.path.exists("/dev/shm" + self.cache)

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.st.path, retry=Retry(NoBackoff(), 0), **kw)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with Node(tmp_path) as n:
        yield n


def served_by(c: redis.Redis) -> int:
    return int(c.info("server")["process_id"])


def test_workers_share_the_socket_and_forward(node: Node) -> None:
    assert node.pool is not None
    clients: list[redis.Redis] = []
    pids: set[int] = set()
    try:
        while len(pids) < 2 and len(clients) < 100:
            c = node.client()
            clients.append(c)
            pids.add(served_by(c))
        assert len(pids) >= 2 and pids & set(node.pool.pids), pids
        ns = uuid.uuid4().hex
        for i, c in enumerate(clients):
            assert c.set(f"{ns}:{i}", i)
        n = len(clients)
        # Every process sees every acknowledged write, linearizable and READONLY alike.
        assert [c.get(f"{ns}:{(i + 1) % n}") for i, c in enumerate(clients)] == [
            str((i + 1) % n).encode() for i in range(n)
        ]
        for c in clients:
            c.readonly()
        assert [c.get(f"{ns}:{(i + 2) % n}") for i, c in enumerate(clients)] == [
            str((i + 2) % n).encode() for i in range(n)
        ]
        # Conditional writes are decided once, at apply time, whoever forwarded them.
        assert sum(bool(c.set(f"{ns}:nx", "x", nx=True)) for c in clients) == 1
        worker = next(c for c in clients if served_by(c) != os.getpid())
        p = worker.pipeline(transaction=False)
        for i in range(1000):
            p.set(f"{ns}:p{i}", i)
        for i in range(1000):
            p.get(f"{ns}:p{i}")
        out = p.execute()
        assert out[:1000] == [True] * 1000 and out[1000:] == [str(i).encode() for i in range(1000)]
        assert worker.set(f"{ns}:p1", "new", get=True) == b"1"
        assert worker.delete(f"{ns}:p1", f"{ns}:p2", f"{ns}:nope") == 2
        assert worker.dbsize() >= 1000
        assert len(list(worker.scan_iter(match=f"{ns}:p9*"))) == 111
        with pytest.raises(redis.ResponseError, match="value too large"):
            worker.set(f"{ns}:big", b"x" * ((1 << 20) + 1))
        assert worker.info("replication")["role"] == "leader"
    finally:
        for c in clients:
            c.close()


def test_a_dead_worker_is_replaced(node: Node) -> None:
    assert node.pool is not None
    victim = node.pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in node.pool.pids and len(node.pool.pids) == 2)  # type: ignore[union-attr]
    c = node.client()
    try:
        for i in range(20):
            assert c.set(f"after-crash:{i}", i)
    finally:
        c.close()


def test_errors_travel_through_a_worker(tmp_path: Path) -> None:
    """TRYAGAIN from the node reaches a client served by a worker; barriers are forwarded."""
    with Node(tmp_path, workers=1, wrap=lambda b: FlakyBackend(b)) as n:
        assert n.pool is not None
        clients = []
        try:
            while True:
                c = n.client()
                clients.append(c)
                if served_by(c) in n.pool.pids:
                    break
                assert len(clients) < 100
            flaky = n.st.backend
            flaky.fail_writes = 1
            with pytest.raises(TryAgainError, match="no leader|no read index"):
                c.set("k", "v")
            assert c.set("k", "v")
            flaky.fail_reads = 1  # this backend is not barrier-free: the worker asks the node
            with pytest.raises(TryAgainError, match="no leader|no read index"):
                c.get("k")
            assert c.get("k") == b"v"
            c.readonly()
            flaky.fail_reads = 1
            assert c.get("k") == b"v"  # READONLY reads need no barrier
        finally:
            for c in clients:
                c.close()


NODE = """
import os, sys, time, uuid
from kvstore.local.testing import ServerThread
from kvstore.local.single import SingleNodeBackend
from kvstore.local.workers import WorkerPool
d, cache = sys.argv[1], sys.argv[2]
st = ServerThread(lambda: SingleNodeBackend.open(d + "/data", cache_name=cache, sync=False), path=d + "/kv.sock").start()
pool = WorkerPool(st.backend, st.server.socket, workers=1, store_path=d + "/data", cache_name=cache,
                  internal_path=d + "/internal.sock", path=st.path)
st.call(pool.start())
print(" ".join(map(str, pool.pids)), flush=True)
time.sleep(3600)
"""


def test_workers_exit_when_the_node_dies(tmp_path: Path) -> None:
    cache = f"/kvs-w-{uuid.uuid4().hex[:12]}"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(NODE), str(tmp_path), cache], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 1 and all(alive(p) for p in pids)
        parent.kill()
        parent.wait(10)
        wait_for(lambda: not any(alive(p) for p in pids))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
            try:
                unlink(cache)
            except posix_ipc.ExistentialError:
                pass
