"""Worker processes: more cores for the RESP socket.

The node's process binds and listens; `WorkerPool` starts N workers that inherit that
listening socket (the kernel hands each new connection to whichever process accepts it
first) and run the same `RespServer`, over a `ForwardingBackend`:

- reads are served in the worker from local state: the node's shared-memory cache,
  then LMDB opened read-only (each read is a fresh read transaction, so it sees every
  commit of the node: LMDB's MVCC works across processes);
- writes, and read barriers when the node's backend needs them, go to the node over an
  internal UNIX socket, as private RESP commands: `KVS.WRITE <statemachine encoding>`
  answers the encoded result; `KVS.BARRIER` answers once the node has passed a barrier.

A worker exits when the node does: PR_SET_PDEATHSIG where Linux has it, and a check of
its parent pid twice a second everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from kvstore import statemachine
from kvstore.errors import KVError, Unavailable
from kvstore.local.aclient import AsyncClient
from kvstore.local.backend import Backend
from kvstore.local.clientcore import RetryPolicy
from kvstore.local.fast import memo_reads
from kvstore.local.resp import Limits
from kvstore.local.server import RespServer
from kvstore.statemachine import Command, Result

log = logging.getLogger("kvstore.local.workers")

READY = b"kvstore-worker-ready\n"


class ForwardingBackend:
    """A worker's `Backend`: local reads, writes and barriers forwarded to the node."""

    # Writes travel one pipelined connection and the node runs them in arrival order.
    ordered_writes = True

    def __init__(
        self,
        internal_path: str,
        store: Any,
        cache: Any,
        *,
        node_name: str,
        barrier_free: bool = False,
        timeout: float = 30.0,
        cache_name: str | None = None,
        store_path: str | None = None,
    ) -> None:
        self.node_name = node_name
        self._storage = {"store_path": store_path or "", "cache_name": cache_name or ""}
        self.store = store
        self.cache = cache
        self.barrier_free = barrier_free
        self.node = AsyncClient(internal_path, timeout=timeout, retry=RetryPolicy(retries=0))
        self._info: dict[str, dict[str, Any]] = {}
        # For the RESP server's fast path (kvstore/local/fast.py): the cache alone (its
        # memo first, its table while that pays), and the store for the keys it missed,
        # in one read transaction.
        self.cache_get = self.cache_replies = None
        if cache is not None:
            self.cache_get, self.cache_replies, _ = memo_reads(cache)
        self.get_uncached = store.get_many

    async def write(self, cmd: Command) -> Result:
        reply = await self.node.execute(b"KVS.WRITE", statemachine.encode(cmd))
        return statemachine.decode_result(reply)

    async def read_barrier(self) -> None:
        if not self.barrier_free:
            await self.node.execute(b"KVS.BARRIER")

    def get(self, key: bytes) -> bytes | None:
        if self.cache is not None:
            v = self.cache.get(key)
            if v is not None:
                return v  # type: ignore[no-any-return]
        return self.store.get(key)  # type: ignore[no-any-return]

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.store.scan(start=start, limit=limit)  # type: ignore[no-any-return]

    def count(self) -> int:
        return self.store.count()  # type: ignore[no-any-return]

    def info(self) -> dict[str, dict[str, Any]]:
        worker = {"worker_pid": os.getpid(), "parent_pid": os.getppid()}
        return {**self._info, "storage": self._storage, "worker": worker}

    async def refresh_info(self) -> None:
        """The node's replication section, for INFO (which must answer without waiting)."""
        with contextlib.suppress(KVError, asyncio.TimeoutError):
            info = await asyncio.wait_for(self.node.info("replication"), 1.0)
            self._info = {"replication": info.get("replication", {})}

    async def aclose(self) -> None:
        await self.node.aclose()


class WorkerPool:
    def __init__(
        self,
        primary: Backend,
        listen_sock: socket.socket,
        *,
        workers: int,
        store_path: str,
        cache_name: str | None,
        internal_path: str,
        limits: Limits = Limits(),
        path: str = "",
    ) -> None:
        """`listen_sock`: the node's bound, listening RESP socket (e.g. `RespServer.socket`)."""
        self.primary = primary
        self.listen_sock = listen_sock
        self.workers = workers
        self.store_path = store_path
        self.cache_name = cache_name
        self.internal_path = internal_path
        self.limits = limits
        self.path = path
        self.internal: RespServer | None = None
        self.procs: list[asyncio.subprocess.Process] = []
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _config(self) -> str:
        return json.dumps(
            {
                "fd": self.listen_sock.fileno(),
                "parent": os.getpid(),
                "internal": self.internal_path,
                "store": self.store_path,
                "cache": self.cache_name,
                "node": self.primary.node_name,
                "path": self.path,
                "barrier_free": bool(getattr(self.primary, "barrier_free", False)),
                "limits": dataclasses.asdict(self.limits),
            }
        )

    async def start(self, timeout: float = 30.0) -> None:
        self.internal = RespServer(self.primary, self.internal_path, limits=self.limits, internal=True)
        await self.internal.start()
        try:
            for _ in range(self.workers):
                self.procs.append(await self._spawn(timeout))
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.get_running_loop().create_task(self._watchdog(timeout))

    async def _spawn(self, timeout: float) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kvstore.local.workers",
            self._config(),
            pass_fds=(self.listen_sock.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if line != READY:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise Unavailable(f"RESP worker did not start (exit code {proc.returncode})")
        log.info("RESP worker %d serving %s", proc.pid, self.path or "the node socket")
        return proc

    async def _watchdog(self, timeout: float) -> None:
        """Replace a worker that died, as long as the pool runs."""
        while not self._stopping:
            waits = {asyncio.ensure_future(p.wait()): p for p in self.procs}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if self._stopping:
                return
            for t in done:
                p = waits[t]
                log.warning("RESP worker %d exited with %s; starting another", p.pid, p.returncode)
                self.procs.remove(p)
                try:
                    self.procs.append(await self._spawn(timeout))
                except Unavailable:
                    log.exception("could not replace a RESP worker")
                    await asyncio.sleep(1)

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        self.procs = []
        if self.internal is not None:
            await self.internal.close()
            self.internal = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


# -- the worker process ----------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


async def _worker_main(cfg: dict[str, Any]) -> None:
    from kvstore.storage import Store

    store = Store(cfg["store"], readonly=True)
    cache = None
    if cfg["cache"]:
        from kvstore.cache import ShmCache

        cache = ShmCache.attach(cfg["cache"])
    backend = ForwardingBackend(
        cfg["internal"],
        store,
        cache,
        node_name=cfg["node"],
        barrier_free=cfg["barrier_free"],
        cache_name=cfg["cache"],
        store_path=cfg["store"],
    )
    await backend.refresh_info()
    sock = socket.socket(fileno=cfg["fd"])
    sock.setblocking(False)
    server = RespServer(backend, cfg["path"], sock=sock, limits=Limits(**cfg["limits"]))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    os.write(1, READY)
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if os.getppid() != cfg["parent"]:
                break
            await backend.refresh_info()
    finally:
        await server.close(grace=2.0)
        await backend.aclose()
        store.close()
        if cache is not None:
            cache.close()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    _die_with_parent(cfg["parent"])
    logging.basicConfig(level=logging.WARNING, format=f"worker {os.getpid()}: %(levelname)s %(message)s")
    import uvloop

    uvloop.run(_worker_main(cfg))


if __name__ == "__main__":
    main()
