"""What command handlers share: the kinds, the session, the error type, the spec."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvstore import statemachine

SYNC, READ, WRITE = 0, 1, 2
REDIS_VERSION = "7.0.0"


class CommandError(Exception):
    """An error reply; the message includes its prefix (`ERR ...`, `NOPROTO ...`)."""


class LimitError(CommandError):
    pass


@dataclass(slots=True, eq=False)
class Session:
    id: int
    uid: int = -1
    pid: int = -1
    proto: int = 2
    readonly: bool = False
    name: str = ""
    lib_name: str = ""
    lib_ver: str = ""
    created: float = field(default_factory=time.monotonic)
    last_cmd: bytes = b"NULL"


class ServerView(Protocol):
    """What INFO and CLIENT need to know about the server."""

    started: float
    path: str

    def sessions(self) -> Iterable[Session]: ...

    def counters(self) -> dict[str, int]: ...


Formatter = Callable[[statemachine.Result, int], bytes]
Handler = Callable[[Session, list[bytes]], Any]
# (args, proto) -> the reply, or None: "not this one, take the general path" (which
# then produces the error reply, if any). For the commonest requests only; see fast.py.
FastHandler = Callable[[list[bytes], int], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Spec:
    kind: int
    arity: int  # Redis style: n exact, -n at least n (the name included)
    fn: Handler
    flags: tuple[str, ...]
    keys: tuple[int, int, int]  # first, last, step


def _int(b: bytes, what: str = "value is not an integer or out of range") -> int:
    try:
        return int(b)
    except ValueError:
        raise CommandError(f"ERR {what}") from None


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")
