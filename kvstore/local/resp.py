"""RESP reply encoding, and the server's limits.

Reply encoders return bytes; the `proto` argument (2 or 3) picks the RESP2 or RESP3
form where they differ (null, map).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED_NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
EMPTY_ARRAY = b"*0\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-server limits; every one of them gets an `-ERR` reply, never a crash."""

    max_key: int = 511  # LMDB's key limit
    max_value: int = 1 << 20
    # One request frame, and unparsed bytes held per connection (a 1 MiB value plus slack).
    max_request: int = (2 << 20) + (64 << 10)
    max_args: int = 1 << 20  # elements in one request array (Redis uses the same)
    # Parsed requests waiting per connection; above it (or above max_queued_bytes) the
    # connection stops being read until the queue drains: a pipeline of any length works.
    max_pipeline: int = 10_000
    max_queued_bytes: int = 16 << 20
    # Reply bytes buffered for a connection that does not read; above it, stop reading it.
    # Large enough that a client which writes a whole pipeline before reading never deadlocks.
    max_output: int = 32 << 20
    max_reply: int = 64 << 20  # one reply (MGET/SCAN of large values)
    max_clients: int = 1024
    max_scan_count: int = 100_000

    def __post_init__(self) -> None:
        # A request must be able to carry the largest key and value allowed.
        floor = self.max_value + self.max_key + 4096
        if self.max_request < floor:
            object.__setattr__(self, "max_request", floor)


def simple(s: bytes) -> bytes:
    return b"+" + s + CRLF


def error(msg: str) -> bytes:
    # An error line must not contain CR/LF: a key echoed into a message could carry them.
    return b"-" + msg.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + CRLF


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def null(proto: int) -> bytes:
    return NULL3 if proto == 3 else QUEUED_NULL2


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def bulk_or_null(b: bytes | None, proto: int) -> bytes:
    if b is None:
        return NULL3 if proto == 3 else QUEUED_NULL2
    return b"$%d\r\n%s\r\n" % (len(b), b)


def array(items: list[bytes]) -> bytes:
    """`items` are already-encoded replies."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def bulk_array(values: Iterable[bytes | None], proto: int) -> bytes:
    nil = NULL3 if proto == 3 else QUEUED_NULL2
    parts = [b""]
    n = 0
    for v in values:
        n += 1
        parts.append(nil if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
    parts[0] = b"*%d\r\n" % n
    return b"".join(parts)


def map_reply(pairs: list[tuple[bytes, bytes]], proto: int) -> bytes:
    """`pairs` are (encoded key, encoded value); a flat array in RESP2."""
    head = b"%%%d\r\n" % len(pairs) if proto == 3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def value(v: object, proto: int) -> bytes:
    """Encode a plain Python value (str, bytes, int, None, list, dict) for HELLO, COMMAND..."""
    if v is None:
        return null(proto)
    if isinstance(v, bool):
        return integer(int(v))
    if isinstance(v, int):
        return integer(v)
    if isinstance(v, str):
        return bulk(v.encode())
    if isinstance(v, bytes):
        return bulk(v)
    if isinstance(v, dict):
        return map_reply([(value(k, proto), value(x, proto)) for k, x in v.items()], proto)
    if isinstance(v, list | tuple):
        return array([value(x, proto) for x in v])
    raise TypeError(f"cannot encode {type(v).__name__}")
