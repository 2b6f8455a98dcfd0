"""Python clients for a node's UNIX socket: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak RESP (hiredis parses the replies), retry TRYAGAIN with bounded backoff and
raise kvstore errors. With `local=True` reads go first to the node's shared-memory
cache, straight from this process's memory, and fall back to the socket on a miss; such
a client's connection is READONLY, so every read it makes is local (possibly stale, never
older than its own acknowledged writes: the node fills the cache before it answers).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import hiredis

from kvstore.errors import TryAgain
from kvstore.local.aclient import AsyncClient
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

__all__ = ["AsyncClient", "Client", "RetryPolicy"]


class Client:
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
        self._readonly = readonly or local
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._buf = bytearray(1 << 16)
        self.cache: Any = None
        self.cache_hits = 0
        self.cache_name: str | None = None
        if local:
            if cache_name is None:
                cache_name = self.info("storage").get("storage", {}).get("cache_name") or None
            if cache_name:
                self.cache = attach_cache(cache_name)
        self.cache_name = cache_name

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise Disconnected(f"cannot connect to {self.path}: {e}", sent=False) from None
        self._sock, self._reader = s, hiredis.Reader()
        if self._readonly:
            self._roundtrip(pack((b"READONLY",)))
        return s

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def close(self) -> None:
        self._drop()
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _roundtrip(self, data: bytes, n: int = 1) -> list[Any]:
        sock = self._sock if self._sock is not None else self._connect()
        reader = self._reader
        assert reader is not None
        try:
            sock.sendall(data)
        except OSError as e:
            self._drop()
            raise Disconnected(str(e), sent=True) from None
        out: list[Any] = []
        try:
            while len(out) < n:
                r = reader.gets()
                if r is not False:
                    out.append(r)
                    continue
                got = sock.recv_into(self._buf)
                if not got:
                    raise OSError("connection closed by the server")
                reader.feed(self._buf, 0, got)  # type: ignore[arg-type]
        except (OSError, hiredis.ProtocolError) as e:
            self._drop()
            raise Disconnected(str(e) or type(e).__name__, sent=True) from None
        return out

    def execute(self, *args: Key | int) -> Any:
        """Send one command; retry TRYAGAIN and failed connections; raise kvstore errors."""
        data = pack(args)
        write = is_write(args)
        delays = iter(self.retry.delays())
        while True:
            try:
                return check(self._roundtrip(data)[0])
            except TryAgain:
                d = next(delays, None)
                if d is None:
                    raise
            except Disconnected as e:
                d = next(delays, None)
                if (write and e.sent) or d is None:
                    raise unavailable(e, write) from None
            time.sleep(d)

    def pipeline(self, commands: list[tuple[Key | int, ...]]) -> list[Any]:
        """Send many commands at once; replies in order, error replies as exceptions objects."""
        if not commands:
            return []
        try:
            replies = self._roundtrip(b"".join(pack(c) for c in commands), len(commands))
        except Disconnected as e:
            raise unavailable(e, any(is_write(c) for c in commands)) from None
        out = []
        for r in replies:
            try:
                out.append(check(r))
            except Exception as e:
                out.append(e)
        return out

    # -- the API -------------------------------------------------------------------------

    def get(self, key: Key) -> bytes | None:
        if self.cache is not None:
            v = self.cache.get(b(key))
            if v is not None:
                self.cache_hits += 1
                return v  # type: ignore[no-any-return]
            self.cache = check_retired(self.cache, self.cache_name or "")
        return self.execute(b"GET", key)  # type: ignore[no-any-return]

    def mget(self, keys: list[Key]) -> list[bytes | None]:
        if not keys:
            return []
        if self.cache is None:
            return self.execute(b"MGET", *keys)  # type: ignore[no-any-return]
        out = [self.cache.get(b(k)) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        self.cache_hits += len(keys) - len(missing)
        if missing:
            self.cache = check_retired(self.cache, self.cache_name or "")
        if missing:
            for i, v in zip(missing, self.execute(b"MGET", *(keys[i] for i in missing)), strict=True):
                out[i] = v
        return out

    def put(self, key: Key, value: Key) -> None:
        self.execute(b"SET", key, value)

    def set(self, key: Key, value: Key, *, nx: bool = False, xx: bool = False, get: bool = False) -> Any:
        """True/False (applied or not); with get=True the old value (None if absent)."""
        return set_result(self.execute(*set_args(key, value, nx, xx, get)), get)

    def delete(self, *keys: Key) -> int:
        return self.execute(b"DEL", *keys)  # type: ignore[no-any-return]

    def mset(self, items: Pairs) -> None:
        flat = [x for kv in pairs_of(items) for x in kv]
        if flat:
            self.execute(b"MSET", *flat)

    def exists(self, *keys: Key) -> int:
        return self.execute(b"EXISTS", *keys)  # type: ignore[no-any-return]

    def dbsize(self) -> int:
        return self.execute(b"DBSIZE")  # type: ignore[no-any-return]

    def ping(self) -> bool:
        return self.execute(b"PING") == b"PONG"

    def info(self, section: str | None = None) -> dict[str, dict[str, str]]:
        return info_sections(self.execute(b"INFO", *([section] if section else [])))

    def readonly(self) -> None:
        """Local reads for this connection from now on (see the module docstring)."""
        self.execute(b"READONLY")
        self._readonly = True

    def readwrite(self) -> None:
        self.execute(b"READWRITE")
        self._readonly = False

    def scan(
        self, prefix: Key = b"", *, start: Key | None = None, limit: int | None = None, batch: int = 1000
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with the given prefix, in key order; `start` inclusive."""
        p = b(prefix)
        cur: bytes | None = max(b(start), p) if start is not None else p
        end = prefix_end(p)
        left = limit
        while cur is not None and (left is None or left > 0):
            n = batch if left is None else min(batch, left)
            args: tuple[Key | int, ...] = (b"KVS.RANGE", cur, n) + ((end,) if end is not None else ())
            cur, flat = self.execute(*args)
            for i in range(0, len(flat), 2):
                yield flat[i], flat[i + 1]
            if left is not None:
                left -= len(flat) // 2

    def keys(self, match: Key = b"*", count: int = 1000) -> Iterator[bytes]:
        """Keys matching a glob pattern, with SCAN (works against any RESP server)."""
        cursor = b"0"
        while True:
            cursor, keys = self.execute(b"SCAN", cursor, b"MATCH", match, b"COUNT", count)
            yield from keys
            if cursor == b"0":
                return
