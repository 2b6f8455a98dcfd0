"""Client worker processes: spawned once per benchmark, driven over pipes.

A worker runs `handler(msg)` for every message and answers ("ok", result) or
("error", text); ("exit",) or a closed pipe ends it. The pool never waits forever:
a worker that does not answer in time fails the step, and close() kills what is left.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from kvstore.bench.common import child_init, stop_process


class BenchError(Exception):
    pass


def worker_loop(conn: Connection, handler: Callable[[Any], Any]) -> None:
    child_init()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "exit":
            return
        try:
            reply: tuple[str, Any] = ("ok", handler(msg))
        except Exception as e:  # reported to the benchmark, which decides
            detail = f"{type(e).__name__}: {e}"
            if not str(e):
                detail += " at " + traceback.format_exc(limit=-1).strip().splitlines()[-3].strip()
            reply = ("error", detail)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class Pool:
    def __init__(self, target: Callable[..., None], n: int, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        try:
            for i in range(n):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=target, args=(i, child), name=f"{name}-{i}", daemon=True)
                p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.conns)

    def send(self, i: int, msg: Any) -> None:
        self.conns[i].send(msg)

    def recv(self, i: int, timeout: float) -> Any:
        c = self.conns[i]
        deadline = time.monotonic() + timeout
        while not c.poll(0.2):
            if not self.procs[i].is_alive():
                raise BenchError(f"client worker {i} died (exit code {self.procs[i].exitcode})")
            if time.monotonic() > deadline:
                raise BenchError(f"client worker {i} did not answer within {timeout:.0f}s")
        try:
            kind, payload = c.recv()
        except EOFError:
            raise BenchError(f"client worker {i} died") from None
        if kind == "error":
            raise BenchError(payload)
        return payload

    def call(self, msgs: list[Any], timeout: float) -> list[Any]:
        """Send msgs[i] to worker i, all at once, then collect every answer."""
        for i, m in enumerate(msgs):
            self.send(i, m)
        out, first_error = [], None
        for i in range(len(msgs)):
            try:
                out.append(self.recv(i, timeout))
            except BenchError as e:
                first_error = first_error or e
                out.append(None)
        if first_error is not None:
            raise first_error
        return out

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("exit",))
            except OSError:
                pass
        for p in self.procs:
            stop_process(p, grace=2.0)
        for c in self.conns:
            c.close()
        self.conns, self.procs = [], []
