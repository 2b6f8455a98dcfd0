"""What a mechanism is, to the IPC benchmark.

A mechanism has three sides, each run in a different process:

- `setup()` in the benchmark: names, files and fds the pair will use (and must be removed);
- `serve()` in the server process: holds the data (a dict), answers GETs until killed;
  calls `ready(info)` once clients may connect (info: a port, an IOR...);
- `connect()` in each client process: a `Conn` whose `get(key)` returns the value or None.

Every request is the same: get a 100-byte value by a 10-byte key; a missing key is
answered as missing, never as an empty value.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class WrongAnswer(Exception):
    """A transport answered, but not with the value stored."""


class Conn(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass
class Owned:
    """What a run creates outside its processes, removed at the end whatever happens."""

    paths: list[str] = field(default_factory=list)
    mqueues: list[str] = field(default_factory=list)
    shm: list[str] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # this process's copies, closed at the end

    def remove(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        for p in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(p)
        if self.mqueues or self.shm:
            import posix_ipc

            for name in self.mqueues:
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_message_queue(name)
            for name in self.shm:
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_shared_memory(name)
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_semaphore(name)


@dataclass
class Setup:
    server_args: Any = None
    client_args: list[Any] = field(default_factory=list)
    owned: Owned = field(default_factory=Owned)


Ready = Callable[[Any], None]


class Mechanism:
    name = ""
    title = ""
    kind = "ipc"  # "ipc": this machine only; "rpc": the same call works across machines
    server_model = ""  # how the server process serves, for the table's notes

    def unavailable(self) -> str | None:
        """Why this mechanism cannot run here, or None."""
        return None

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        return Setup(client_args=[None] * nclients)

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        raise NotImplementedError

    def connect(self, args: Any, info: Any) -> Conn:
        raise NotImplementedError


def run_loop(conn: Conn, keys: list[bytes], t_start: int, t_end: int) -> tuple[int, int, array[int]]:
    """Closed loop of gets from t_start to t_end (time.monotonic_ns, shared by all processes).

    Returns (requests, misses, latencies in ns). A conn may bring its own loop (`bench`),
    e.g. one that runs on an asyncio event loop.
    """
    own = getattr(conn, "bench", None)
    if own is not None:
        return own(keys, t_start, t_end)  # type: ignore[no-any-return]
    get = conn.get
    lat: array[int] = array("q")
    add = lat.append
    clock = time.monotonic_ns
    mask = len(keys) - 1
    n = misses = 0
    t = clock()
    while t < t_end:
        v = get(keys[n & mask])
        t1 = clock()
        add(t1 - t)
        if v is None:
            misses += 1
        n += 1
        t = clock()
    return n, misses, lat


def wait_until(t_ns: int) -> None:
    while True:
        left = t_ns - time.monotonic_ns()
        if left <= 0:
            return
        time.sleep(min(left / 1e9, 0.05))


def verify(conn: Conn, data: dict[bytes, bytes], sample: int = 16) -> None:
    """Raise WrongAnswer unless a few stored keys come back exactly and a missing key is None."""
    from kvstore.bench.common import MISSING_KEY

    keys = list(data)
    step = max(1, len(keys) // sample)
    for k in [*keys[::step], keys[-1]]:
        got = conn.get(k)
        if got != data[k]:
            shown = got[:24] + b"..." if isinstance(got, bytes) and len(got) > 24 else got
            raise WrongAnswer(f"GET {k.decode()}: got {shown!r} ({len(got) if got else 0} bytes), "
                              f"want the {len(data[k])}-byte value stored")
    got = conn.get(MISSING_KEY)
    if got is not None:
        raise WrongAnswer(f"GET of a missing key answered {got[:24]!r}, not 'missing'")
