"""What the sync and async clients share: argument encoding, error mapping, retry policy.

Error replies become kvstore errors: `-TRYAGAIN` -> TryAgain (nothing applied: retried
with backoff, a bounded number of times), `-UNKNOWN` -> Unknown (a write may have been
applied: never retried), limit errors -> LimitExceeded, anything else -> KVError.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import hiredis

from kvstore.errors import KVError, LimitExceeded, TryAgain, Unavailable, Unknown

Key = bytes | str
Pairs = Mapping[Key, Key] | Iterable[tuple[Key, Key]]

WRITES = frozenset({b"SET", b"DEL", b"MSET", b"KVS.WRITE"})


def b(x: Key | int) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, int):
        return b"%d" % x
    return bytes(x)


def pack(args: tuple[Key | int, ...]) -> bytes:
    return hiredis.pack_command(tuple(b(a) for a in args))  # type: ignore[no-any-return, arg-type]


def pairs_of(items: Pairs) -> list[tuple[bytes, bytes]]:
    it = items.items() if isinstance(items, Mapping) else items
    return [(b(k), b(v)) for k, v in it]


def error_from(reply: hiredis.ReplyError) -> KVError:
    msg = str(reply)
    code, _, rest = msg.partition(" ")
    if code == "TRYAGAIN":
        return TryAgain(rest or msg)
    if code == "UNKNOWN":
        return Unknown(rest or msg)
    if code == "ERR" and (" too large" in rest or "limit is" in rest or "key is empty" in rest):
        return LimitExceeded(rest)
    return KVError(msg)


def check(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise error_from(reply)
    return reply


def is_write(args: tuple[Key | int, ...]) -> bool:
    return b(args[0]).upper() in WRITES


def info_sections(text: bytes) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        if line.startswith("# "):
            cur = out.setdefault(line[2:].strip().lower(), {})
        elif ":" in line:
            k, _, v = line.partition(":")
            cur[k] = v
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """TRYAGAIN replies and failed connects are retried `retries` times, backing off
    exponentially from `backoff` to `max_backoff` seconds (with jitter)."""

    retries: int = 8
    backoff: float = 0.005
    max_backoff: float = 0.5

    def delays(self) -> Iterable[float]:
        d = self.backoff
        for _ in range(self.retries):
            yield d * (0.5 + random.random())
            d = min(d * 2, self.max_backoff)


class Disconnected(Exception):
    """The connection failed; `sent` tells whether the request may have reached the server."""

    def __init__(self, msg: str, sent: bool) -> None:
        super().__init__(msg)
        self.sent = sent


def unavailable(e: Disconnected, write: bool) -> Unavailable:
    if write and e.sent:
        return Unknown(f"connection lost after sending a write: {e}")
    return Unavailable(f"node unavailable: {e}")


def set_args(key: Key, value: Key, nx: bool, xx: bool, get: bool) -> tuple[Key, ...]:
    args: tuple[Key, ...] = (b"SET", key, value)
    if nx:
        args += (b"NX",)
    if xx:
        args += (b"XX",)
    if get:
        args += (b"GET",)
    return args


def set_result(reply: Any, get: bool) -> Any:
    if get:
        return reply
    return reply is not None


def check_retired(cache: Any, name: str) -> Any:
    """After a miss: a cache its node retired (restart, shutdown) misses forever; map the
    node's current one instead, if there is one. Returns the cache to use (or None)."""
    if not getattr(cache, "retired", False):
        return cache
    cache.close()
    return attach_cache(name)


def attach_cache(name: str) -> Any:
    """The node's ShmCache when it exists on this host, else None."""
    try:
        from kvstore.cache import ShmCache
    except ImportError:
        return None
    try:
        return ShmCache.attach(name)
    except Exception:
        return None
