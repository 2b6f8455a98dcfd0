"""`AsyncClient`: the asyncio twin of `Client` (see client.py).

One connection, pipelined: concurrent calls write their requests at once and a reader
task hands the replies back in order. A timeout or a broken connection fails every call
in flight on it (writes among them as Unknown) and the next call reconnects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import hiredis

from kvstore.errors import TryAgain
from kvstore.local.clientcore import (
    Disconnected,
    Key,
    Pairs,
    RetryPolicy,
    attach_cache,
    b,
    check,
    check_retired,
    info_sections,
    is_write,
    pack,
    pairs_of,
    set_args,
    set_result,
    unavailable,
)
from kvstore.storage.codec import prefix_end


class AsyncClient:
    def __init__(
        self,
        path: str,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        local: bool = False,
        cache_name: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.retry = retry
        self.local = local
        self.cache_name = cache_name
        self._readonly = readonly or local
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._read_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.cache: Any = None
        self.cache_hits = 0
        self._cache_checked = not local

    async def __aenter__(self) -> AsyncClient:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._drop("client closed")
        if self._read_task is not None:
            try:
                await self._read_task
            except BaseException:
                pass
            self._read_task = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    # -- connection ----------------------------------------------------------------------

    async def _ensure(self) -> asyncio.StreamWriter:
        if self._writer is not None:
            return self._writer
        async with self._lock:
            if self._writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path), self.timeout
                    )
                except (TimeoutError, OSError) as e:
                    raise Disconnected(f"cannot connect to {self.path}: {e}", sent=False) from None
                self._writer = writer
                self._read_task = asyncio.get_running_loop().create_task(self._read_loop(reader, writer))
                if self._readonly:
                    check(await self._send(pack((b"READONLY",)), writer))
            if not self._cache_checked:
                self._cache_checked = True
                name = self.cache_name
                if name is None:
                    info = info_sections(await self._send(pack((b"INFO", b"storage")), self._writer))
                    name = info.get("storage", {}).get("cache_name") or None
                if name:
                    self.cache_name = name
                    self.cache = attach_cache(name)
        assert self._writer is not None
        return self._writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        why = "connection closed by the server"
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                parser.feed(data)
                while (r := parser.gets()) is not False:
                    if not self._pending:
                        raise hiredis.ProtocolError("reply without a request")
                    fut = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(r)
        except (OSError, hiredis.ProtocolError) as e:
            why = str(e) or type(e).__name__
        finally:
            if self._writer is writer:
                self._drop(why)

    def _drop(self, why: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(Disconnected(why, sent=True))

    async def _send(self, data: bytes, writer: asyncio.StreamWriter | None = None) -> Any:
        if writer is None:
            writer = await self._ensure()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        writer.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                return await fut
        except TimeoutError:
            # Later replies would be matched to the wrong requests: start afresh.
            self._drop(f"no reply within {self.timeout}s")
            raise Disconnected(f"no reply within {self.timeout}s", sent=True) from None

    async def execute(self, *args: Key | int) -> Any:
        """Send one command; retry TRYAGAIN and failed connections; raise kvstore errors."""
        data = pack(args)
        write = is_write(args)
        delays = iter(self.retry.delays())
        while True:
            try:
                return check(await self._send(data))
            except TryAgain:
                d = next(delays, None)
                if d is None:
                    raise
            except Disconnected as e:
                d = next(delays, None)
                if (write and e.sent) or d is None:
                    raise unavailable(e, write) from None
            await asyncio.sleep(d)

    # -- the API (as Client) -------------------------------------------------------------

    async def get(self, key: Key) -> bytes | None:
        if not self._cache_checked:
            await self._ensure()
        if self.cache is not None:
            v = self.cache.get(b(key))
            if v is not None:
                self.cache_hits += 1
                return v  # type: ignore[no-any-return]
            self.cache = check_retired(self.cache, self.cache_name or "")
        return await self.execute(b"GET", key)  # type: ignore[no-any-return]

    async def mget(self, keys: list[Key]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._cache_checked:
            await self._ensure()
        if self.cache is None:
            return await self.execute(b"MGET", *keys)  # type: ignore[no-any-return]
        out = [self.cache.get(b(k)) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        self.cache_hits += len(keys) - len(missing)
        if missing:
            self.cache = check_retired(self.cache, self.cache_name or "")
        if missing:
            got = await self.execute(b"MGET", *(keys[i] for i in missing))
            for i, v in zip(missing, got, strict=True):
                out[i] = v
        return out

    async def put(self, key: Key, value: Key) -> None:
        await self.execute(b"SET", key, value)

    async def set(
        self, key: Key, value: Key, *, nx: bool = False, xx: bool = False, get: bool = False
    ) -> Any:
        return set_result(await self.execute(*set_args(key, value, nx, xx, get)), get)

    async def delete(self, *keys: Key) -> int:
        return await self.execute(b"DEL", *keys)  # type: ignore[no-any-return]

    async def mset(self, items: Pairs) -> None:
        flat = [x for kv in pairs_of(items) for x in kv]
        if flat:
            await self.execute(b"MSET", *flat)

    async def exists(self, *keys: Key) -> int:
        return await self.execute(b"EXISTS", *keys)  # type: ignore[no-any-return]

    async def dbsize(self) -> int:
        return await self.execute(b"DBSIZE")  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        return await self.execute(b"PING") == b"PONG"

    async def info(self, section: str | None = None) -> dict[str, dict[str, str]]:
        return info_sections(await self.execute(b"INFO", *([section] if section else [])))

    async def readonly(self) -> None:
        await self.execute(b"READONLY")
        self._readonly = True

    async def readwrite(self) -> None:
        await self.execute(b"READWRITE")
        self._readonly = False

    async def scan(
        self, prefix: Key = b"", *, start: Key | None = None, limit: int | None = None, batch: int = 1000
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        p = b(prefix)
        cur: bytes | None = max(b(start), p) if start is not None else p
        end = prefix_end(p)
        left = limit
        while cur is not None and (left is None or left > 0):
            n = batch if left is None else min(batch, left)
            args: tuple[Key | int, ...] = (b"KVS.RANGE", cur, n) + ((end,) if end is not None else ())
            cur, flat = await self.execute(*args)
            for i in range(0, len(flat), 2):
                yield flat[i], flat[i + 1]
            if left is not None:
                left -= len(flat) // 2
