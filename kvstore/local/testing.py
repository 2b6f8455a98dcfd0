"""Helpers for tests and benchmarks: in-memory stand-ins, and a server on a background thread.

`MemoryStore` and `DictCache` follow the documented `Store` / `ShmCache` APIs closely
enough for `SingleNodeBackend`; `ServerThread` runs a `RespServer` on its own event
loop (uvloop) in a daemon thread and stops it, socket file included, on exit.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from kvstore.errors import TryAgain
from kvstore.local.backend import Backend
from kvstore.local.resp import Limits
from kvstore.local.server import RespServer
from kvstore.statemachine import Command, Result

T = TypeVar("T")


class MemoryStore:
    """A dict with the `Store` methods `SingleNodeBackend` uses."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []
        self.index = 0
        self.lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self.lock:
            return [self.data.get(k) for k in keys]

    def scan(
        self,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        with self.lock:
            lo = max(start or b"", prefix)
            i = bisect.bisect_left(self.keys, lo)
            out = []
            for k in self.keys[i:]:
                if (end is not None and k >= end) or not k.startswith(prefix):
                    break
                out.append((k, self.data[k]))
                if limit is not None and len(out) >= limit:
                    break
            return out

    def count(self) -> int:
        return len(self.data)

    def applied_index(self) -> int:
        return self.index

    def apply(self, index: int, fn: Callable[[Any], T]) -> T:
        return self.apply_many([(index, fn)])[0]

    def apply_many(self, items: Sequence[tuple[int, Callable[[Any], T]]]) -> list[T]:
        with self.lock:
            view = _View(self)
            result = [fn(view) for _, fn in items]
            for k, v in view.changes.items():  # commit
                if v is None:
                    if self.data.pop(k, None) is not None:
                        del self.keys[bisect.bisect_left(self.keys, k)]
                else:
                    if k not in self.data:
                        bisect.insort(self.keys, k)
                    self.data[k] = v
            self.index = items[-1][0]
            return result

    def close(self) -> None:
        pass


class _View:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.changes:
            return self.changes[key]
        return self.store.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.changes[key] = value

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        self.changes[key] = None
        return existed


class DictCache:
    """The `ShmCache` methods, in one process."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def close(self) -> None:
        pass


class FlakyBackend:
    """Wraps a backend; its next `fail_writes` writes and `fail_reads` barriers raise TryAgain."""

    def __init__(self, inner: Backend, *, fail_writes: int = 0, fail_reads: int = 0) -> None:
        self.inner = inner
        self.node_name = inner.node_name
        self.fail_writes = fail_writes
        self.fail_reads = fail_reads
        self.attempts = 0

    async def write(self, cmd: Command) -> Result:
        self.attempts += 1
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise TryAgain("no leader (test)")
        return await self.inner.write(cmd)

    async def read_barrier(self) -> None:
        if self.fail_reads > 0:
            self.fail_reads -= 1
            raise TryAgain("no read index (test)")
        await self.inner.read_barrier()

    def get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(start, limit)

    def count(self) -> int:
        return self.inner.count()

    def info(self) -> dict[str, dict[str, Any]]:
        return self.inner.info()

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


class ServerThread:
    """A RespServer on a background event loop. `make_backend` runs on that loop."""

    def __init__(
        self,
        make_backend: Callable[[], Any] | None = None,
        *,
        path: str | None = None,
        limits: Limits = Limits(),
        grace: float = 2.0,
        **server_kw: Any,
    ) -> None:
        if make_backend is None:
            from kvstore.local.single import SingleNodeBackend

            def make_backend() -> Any:
                return SingleNodeBackend(MemoryStore(), DictCache())

        self._make_backend = make_backend
        self._tmp: str | None = None
        if path is None:
            self._tmp = tempfile.mkdtemp(prefix="kvs-")
            path = os.path.join(self._tmp, "kv.sock")
        self.path = path
        self.limits = limits
        self.server_kw = server_kw
        self.grace = grace
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backend: Any = None
        self.server: RespServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        import uvloop

        self.loop = uvloop.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="resp-server")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("server did not start")

        async def up() -> None:
            self.backend = self._make_backend()
            self.server = RespServer(self.backend, self.path, limits=self.limits, **self.server_kw)
            await self.server.start()

        self.call(up())
        return self

    def _run(self, ready: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, aw: Awaitable[T], timeout: float = 30) -> T:
        assert self.loop is not None

        async def wrap() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is None:
            return

        async def down() -> None:
            if self.server is not None:
                await self.server.close(self.grace)
            close = getattr(self.backend, "aclose", None)
            if close is not None:
                await close()

        try:
            self.call(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self.loop.close()
            self.loop = None
            if self._tmp is not None:
                for name in os.listdir(self._tmp):
                    os.unlink(os.path.join(self._tmp, name))
                os.rmdir(self._tmp)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
