"""The Python clients: API, error mapping, TRYAGAIN retries, timeouts, the shared-memory fast path."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore.errors import KVError, LimitExceeded, TryAgain, Unavailable, Unknown
from kvstore.local.client import AsyncClient, Client, RetryPolicy
from kvstore.local.single import SingleNodeBackend
from kvstore.local.testing import FlakyBackend, MemoryStore, ServerThread
from kvstore.statemachine import SET_DONE, Command, Result

FAST_RETRY = RetryPolicy(retries=3, backoff=0.001, max_backoff=0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    d: Path = tmp_path_factory.mktemp("client")
    cache = f"/kvs-c-{uuid.uuid4().hex[:12]}"
    with ServerThread(lambda: SingleNodeBackend.open(str(d / "data"), cache_name=cache, sync=False)) as st:
        yield st
    assert not os.path.exists(st.path)
    assert not os.path.exists("/dev/shm" + cache) and not os.path.exists("/dev/shm/sem." + cache[1:])


def ns() -> str:
    return uuid.uuid4().hex[:10] + ":"


def test_sync_client(server: ServerThread) -> None:
    p = ns()
    with Client(server.path) as c:
        assert c.ping()
        assert c.get(p + "a") is None
        c.put(p + "a", "1")
        assert c.get(p + "a") == b"1"
        assert c.set(p + "a", "2", nx=True) is False
        assert c.set(p + "a", "2", xx=True) is True
        assert c.set(p + "a", "3", get=True) == b"2"
        assert c.set(p + "b", "x", xx=True) is False
        c.mset({p + f"k{i:02d}": f"v{i}" for i in range(30)})
        assert c.mget([p + "k00", p + "zz", p + "k29"]) == [b"v0", None, b"v29"]
        assert c.exists(p + "k00", p + "k01", p + "zz") == 2
        assert c.delete(p + "k00", p + "zz") == 1
        got = list(c.scan(p + "k"))
        assert [k for k, _ in got] == [f"{p}k{i:02d}".encode() for i in range(1, 30)]
        assert got[0][1] == b"v1"
        assert list(c.scan(p + "k", limit=2, batch=1)) == got[:2]
        assert list(c.scan(p + "k", start=p + "k28")) == got[-2:]
        assert len(list(c.scan(p, batch=7))) == 30  # a, and k01..k29
        assert sorted(c.keys(p + "k0*")) == [f"{p}k0{i}".encode() for i in range(1, 10)]
        assert c.dbsize() >= 30
        assert c.info("replication")["replication"]["role"] == "leader"
        c.readonly()
        assert c.get(p + "a") == b"3"
        c.readwrite()
        out = c.pipeline([(b"SET", p + "p", "1"), (b"GET", p + "p"), (b"NOSUCH",)])
        assert out[:2] == [b"OK", b"1"] and isinstance(out[2], KVError)
        with pytest.raises(LimitExceeded):
            c.put("x" * 600, "v")
        with pytest.raises(KVError, match="unknown command"):
            c.execute("NOSUCH")


def test_async_client(server: ServerThread) -> None:
    p = ns()

    async def main() -> None:
        async with AsyncClient(server.path) as c:
            assert await c.ping()
            await c.put(p + "a", "1")
            assert await c.get(p + "a") == b"1"
            assert await c.set(p + "a", "2", get=True) == b"1"
            assert await c.set(p + "a", "9", nx=True) is False
            await c.mset([(p + "x", "1"), (p + "y", "2")])
            assert await c.mget([p + "x", p + "y", p + "z"]) == [b"1", b"2", None]
            assert await c.exists(p + "x", p + "z") == 1
            assert await c.delete(p + "x") == 1
            # Concurrent calls share the connection (pipelined) and each gets its own reply.
            await asyncio.gather(*(c.put(f"{p}c{i:03d}", str(i)) for i in range(200)))
            vals = await asyncio.gather(*(c.get(f"{p}c{i:03d}") for i in range(200)))
            assert vals == [str(i).encode() for i in range(200)]
            assert [k async for k, _ in c.scan(p + "c", batch=33)] == [
                f"{p}c{i:03d}".encode() for i in range(200)
            ]
            assert (await c.info())["server"]["redis_version"].startswith("7.")
            with pytest.raises(LimitExceeded):
                await c.put("x" * 600, "v")

    asyncio.run(main())


def flaky_server(**kw: Any) -> ServerThread:
    return ServerThread(lambda: FlakyBackend(SingleNodeBackend(MemoryStore()), **kw))


def test_tryagain_is_retried_sync() -> None:
    with flaky_server(fail_writes=2, fail_reads=2) as st, Client(st.path, retry=FAST_RETRY) as c:
        c.put("k", "v")  # two TRYAGAIN, then applied once
        assert st.backend.attempts == 3
        assert c.get("k") == b"v"  # the barrier failed twice first
        st.backend.fail_writes = 100
        with pytest.raises(TryAgain):
            c.put("k", "w")
        assert st.backend.attempts == 3 + 4  # the first try and three retries
        assert c.get("k") == b"v"


def test_tryagain_is_retried_async() -> None:
    with flaky_server(fail_writes=2) as st:

        async def main() -> None:
            async with AsyncClient(st.path, retry=FAST_RETRY) as c:
                await c.put("k", "v")
                assert st.backend.attempts == 3
                st.backend.fail_writes = 100
                with pytest.raises(TryAgain):
                    await c.put("k", "w")
                assert await c.get("k") == b"v"

        asyncio.run(main())


class _Stuck:
    """A backend whose writes fail as Unknown or never finish, and whose barrier hangs on demand."""

    node_name = "stuck"

    def __init__(self) -> None:
        self.inner = SingleNodeBackend(MemoryStore())
        self.mode = "unknown"
        self.writes = 0
        self.hang_reads = False

    async def write(self, cmd: Command) -> Result:
        self.writes += 1
        if self.mode == "unknown":
            raise Unknown("leader lost before the commit was known")
        await asyncio.sleep(3600)
        raise AssertionError

    async def read_barrier(self) -> None:
        if self.hang_reads:
            await asyncio.sleep(3600)

    def get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(start, limit)

    def count(self) -> int:
        return 0

    def info(self) -> dict[str, dict[str, Any]]:
        return {}


def test_unknown_and_timeouts() -> None:
    st = ServerThread(_Stuck, grace=0.1)
    with st, Client(st.path, retry=FAST_RETRY, timeout=0.3) as c:
        with pytest.raises(Unknown):
            c.put("k", "v")
        assert st.backend.writes == 1  # an Unknown write is never retried
        st.backend.mode = "hang"
        with pytest.raises(Unknown, match="connection lost after sending a write"):
            c.put("k", "v")
        assert st.backend.writes == 2
        st.backend.hang_reads = True
        with pytest.raises(Unavailable):
            c.get("k")
        st.backend.hang_reads = False
        assert c.get("k") is None  # reconnected


class _SlowWrites(_Stuck):
    """Writes that the node is still committing: each answered 0.3 s after it is submitted."""

    ordered_writes = True

    def submit_write(self, cmd: Command) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        loop.call_later(0.3, lambda: fut.done() or fut.set_result(SET_DONE))
        return fut


def test_a_graceful_stop_answers_the_writes_already_taken() -> None:
    st = ServerThread(_SlowWrites, grace=2.0).start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(st.path)
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        time.sleep(0.1)  # submitted; its answer comes in 0.2 s, during the stop
        stopper = threading.Thread(target=st.stop)
        stopper.start()
        assert s.recv(100) == b"+OK\r\n"
        stopper.join(10)
        assert s.recv(100) == b""  # then the connection closes
    finally:
        s.close()
        st.stop()


def test_server_not_running(tmp_path: Path) -> None:
    with pytest.raises(Unavailable), Client(str(tmp_path / "nope.sock"), retry=FAST_RETRY) as c:
        c.get("k")

    async def main() -> None:
        c = AsyncClient(str(tmp_path / "nope.sock"), retry=FAST_RETRY)
        with pytest.raises(Unavailable):
            await c.get("k")
        await c.aclose()

    asyncio.run(main())


WRITER = """
import json, sys
from kvstore.local.client import Client
path, prefix = sys.argv[1], sys.argv[2]
with Client(path) as c:
    for i in range(300):
        c.put(f"{prefix}{i:03d}", f"v{i}")
    for i in range(0, 300, 3):
        c.put(f"{prefix}{i:03d}", f"w{i}" * (i % 7))  # overwritten (some empty)
    c.delete(*(f"{prefix}{i:03d}" for i in range(0, 300, 5)))
    c.put(prefix + "big", "B" * 100_000)  # larger than the cache takes
print("done")
"""

READER = """
import json, sys
from kvstore.local.client import Client
path, prefix = sys.argv[1], sys.argv[2]
keys = [f"{prefix}{i:03d}" for i in range(300)] + [prefix + "big", prefix + "never"]
with Client(path, local=True) as fast, Client(path) as plain:
    assert fast.cache is not None, "no shared-memory cache attached"
    a = [fast.get(k) for k in keys]
    b = [plain.get(k) for k in keys]
    m = fast.mget(keys)
    bad = [k for k, x, y, z in zip(keys, a, b, m) if not (x == y == z)]
    print(json.dumps({"bad": bad, "hits": fast.cache_hits, "n": len(keys), "none": sum(x is None for x in b)}))
"""


def test_shared_memory_fast_path_across_processes(server: ServerThread) -> None:
    prefix = ns()

    def run(script: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), server.path, prefix],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert run(WRITER).strip() == "done"
    result = json.loads(run(READER))
    assert result["bad"] == []
    assert result["none"] == 60 + 1  # deleted every fifth key, and one never written
    assert result["hits"] > 300  # the reads really came from shared memory


def test_local_client_follows_a_restarted_node(tmp_path: Path) -> None:
    """A node that restarts retires its old cache; a local client maps the new one."""
    cache = f"/kvs-c-{uuid.uuid4().hex[:12]}"
    sock = str(tmp_path / "kv.sock")

    def node() -> ServerThread:
        return ServerThread(
            lambda: SingleNodeBackend.open(str(tmp_path / "data"), cache_name=cache), path=sock
        )

    def put(value: str) -> None:
        with Client(sock) as w:
            w.put("k", value)

    with node():
        put("v1")
        c = Client(sock, local=True, retry=FAST_RETRY)
    try:
        assert c.cache is not None
        with node():  # the same data, a new cache segment: the old mapping is retired
            put("v2")
            assert c.get("k") == b"v2"
            hits = c.cache_hits
            assert c.get("k") == b"v2" and c.cache_hits == hits + 1  # from the new cache
    finally:
        c.close()
    assert not os.path.exists("/dev/shm" + cache)
