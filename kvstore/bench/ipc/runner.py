"""Drive the IPC benchmark: for each mechanism, a server process, then 1 and N clients.

One server process per mechanism, started here and stopped here (also on Ctrl-C or an
error: try/finally); one pool of client worker processes for the whole run. Each timed
run starts at the same CLOCK_MONOTONIC instant in every client and ends at another;
throughput counts the requests between them, the server's CPU is read from /proc at
both instants, each client reads its own rusage.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kvstore.bench.common import (
    child_init,
    dataset,
    key_sequence,
    latency_summary,
    machine_info,
    proc_cpu_s,
    self_cpu_s,
    stop_process,
)
from kvstore.bench.ipc import MECHANISMS, get_mechanism
from kvstore.bench.ipc.base import Conn, Mechanism, Owned, run_loop, verify, wait_until
from kvstore.bench.workers import BenchError, Pool, worker_loop

MAX_SAMPLES = 1_000_000  # latencies kept per client and run (requests are all counted)
KEYS_IN_LOOP = 4096  # a power of two: the loop picks keys[n & mask]


@dataclass
class IpcOptions:
    duration: float = 3.0
    clients: int = 8
    nkeys: int = 10_000
    seed: int = 1
    only: tuple[str, ...] = ()
    prestart: bool = False  # start every server at once (--quick)
    server_start_timeout: float = 60.0


# ---------------------------------------------------------------- the server process


def server_main(name: str, args: Any, owned: Owned, nkeys: int, seed: int, ctrl: Connection) -> None:
    child_init(on_orphan=owned.remove)
    mech = get_mechanism(name)
    lock = threading.Lock()

    def send(msg: Any) -> None:
        with lock:
            ctrl.send(msg)

    def control() -> None:  # any message, or the benchmark going away, ends the server
        try:
            ctrl.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=control, name="control", daemon=True).start()
    try:
        mech.serve(args, dataset(nkeys, seed), lambda info: send(("ready", info)))
    except BaseException as e:
        send(("error", f"{type(e).__name__}: {e}"))
        time.sleep(30)  # the benchmark stops us
        os._exit(1)


# ---------------------------------------------------------------- a client worker


class _ClientState:
    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.data: dict[bytes, bytes] = {}

    def handle(self, msg: Any) -> Any:
        op = msg[0]
        if op == "connect":
            _, name, args, info, nkeys, seed = msg
            self.close()
            if len(self.data) != nkeys:
                self.data = dataset(nkeys, seed)
            self.conn = get_mechanism(name).connect(args, info)
            verify(self.conn, self.data)
            return None
        if op == "run":
            _, t_start, t_end, nkeys, seed = msg
            assert self.conn is not None
            keys = key_sequence(nkeys, KEYS_IN_LOOP, seed)
            wait_until(t_start)
            cpu0 = self_cpu_s()
            n, misses, lat = run_loop(self.conn, keys, t_start, t_end)
            cpu = self_cpu_s() - cpu0
            if len(lat) > MAX_SAMPLES:  # keep an even spread of the run, not its start
                step = len(lat) // MAX_SAMPLES + 1
                lat = lat[::step]
            return {"requests": n, "misses": misses, "cpu_s": cpu, "lat": lat.tobytes()}
        if op == "close":
            self.close()
            return None
        raise ValueError(f"unknown message {op!r}")

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


def client_main(idx: int, conn: Connection) -> None:
    state = _ClientState()
    try:
        worker_loop(conn, state.handle)
    finally:
        state.close()


# ---------------------------------------------------------------- the benchmark


Progress = Callable[[str], None]


def _cell(pool: Pool, n: int, server_pid: int, opts: IpcOptions, salt: int) -> dict[str, Any]:
    import numpy as np

    lead = 0.05 + 0.01 * n  # time for every worker to get the message and wait
    t_start = time.monotonic_ns() + int(lead * 1e9)
    t_end = t_start + int(opts.duration * 1e9)
    for i in range(n):
        pool.send(i, ("run", t_start, t_end, opts.nkeys, opts.seed * 1000 + salt * 100 + i))
    wait_until(t_start)
    s0 = proc_cpu_s(server_pid)
    wait_until(t_end)
    s1 = proc_cpu_s(server_pid)
    replies = [pool.recv(i, opts.duration + 60) for i in range(n)]
    requests = sum(r["requests"] for r in replies)
    lat = np.concatenate([np.frombuffer(r["lat"], dtype=np.int64) for r in replies])
    lat.sort()
    span = (t_end - t_start) / 1e9
    per = 1e6 / requests if requests else float("nan")
    return {
        "clients": n,
        "duration_s": span,
        "requests": requests,
        "misses": sum(r["misses"] for r in replies),
        "ops_per_s": requests / span,
        "latency": latency_summary(lat),
        "client_cpu_us_per_req": sum(r["cpu_s"] for r in replies) * per,
        "server_cpu_us_per_req": (s1 - s0) * per if s0 is not None and s1 is not None else None,
    }


def _describe(m: Mechanism) -> dict[str, Any]:
    return {"name": m.name, "title": m.title, "kind": m.kind, "server_model": m.server_model}


class Server:
    """One mechanism's server process: spawned at once, waited for later, always stopped."""

    def __init__(self, m: Mechanism, nclients: int, opts: IpcOptions, workdir: Path) -> None:
        self.m, self.opts = m, opts
        self.setup = m.setup(workdir, nclients, secrets.token_hex(4))
        self.proc: Any = None
        self.ctrl: Connection | None = None
        self.info: Any = None
        ctx = multiprocessing.get_context("spawn")
        try:
            self.ctrl, child = ctx.Pipe()
            o = self.setup.owned
            self.proc = ctx.Process(target=server_main, name=f"bench-{m.name}-server", daemon=True,
                                    args=(m.name, self.setup.server_args, Owned(o.paths, o.mqueues, o.shm),
                                          opts.nkeys, opts.seed, child))
            self.proc.start()
            child.close()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def wait_ready(self) -> Any:
        assert self.ctrl is not None
        if not self.ctrl.poll(self.opts.server_start_timeout):
            raise BenchError(f"server did not start within {self.opts.server_start_timeout:.0f}s")
        kind, self.info = self.ctrl.recv()
        if kind != "ready":
            raise BenchError(f"server failed: {self.info}")
        return self.info

    def stop(self) -> None:
        if self.ctrl is not None:
            try:
                self.ctrl.send("stop")
            except OSError:
                pass
        if self.proc is not None:
            stop_process(self.proc, grace=3.0)
        if self.ctrl is not None:
            self.ctrl.close()
        self.ctrl = self.proc = None
        self.setup.owned.remove()


def bench_one(m: Mechanism, server: Server, pool: Pool, opts: IpcOptions, salt: int,
              progress: Progress) -> dict[str, Any]:
    row = _describe(m)
    connected = 0
    try:
        progress(f"{m.name}: starting the server")
        info = server.wait_ready()
        connected = len(pool)
        pool.call([("connect", m.name, server.setup.client_args[i], info, opts.nkeys, opts.seed)
                   for i in range(len(pool))], timeout=60)
        progress(f"{m.name}: 1 client")
        one = _cell(pool, 1, server.pid, opts, salt)
        progress(f"{m.name}: {len(pool)} clients")
        many = _cell(pool, len(pool), server.pid, opts, salt + 1)
        for r in (one, many):
            if r["misses"]:
                raise BenchError(f"{r['misses']} gets of stored keys answered 'missing'")
        return {**row, "available": True, "one": one, "many": many}
    finally:
        if connected:
            try:
                pool.call([("close",)] * connected, timeout=10)
            except BenchError:
                pass
        server.stop()


def run_ipc(opts: IpcOptions, progress: Progress = lambda s: None) -> dict[str, Any]:
    mechs = [m for m in MECHANISMS if not opts.only or m.name in opts.only]
    unknown = set(opts.only) - {m.name for m in MECHANISMS}
    if unknown:
        raise BenchError(f"unknown mechanism(s): {', '.join(sorted(unknown))}")
    info = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-ipc-"))
    rows: list[dict[str, Any]] = []
    pool: Pool | None = None
    servers: dict[str, Server] = {}
    try:
        progress("starting client processes")
        pool = Pool(client_main, opts.clients, "bench-client")
        available = []
        for m in mechs:
            reason = m.unavailable()
            if reason:
                rows.append({**_describe(m), "available": False, "reason": reason})
            else:
                available.append(m)
                if opts.prestart:  # all servers start together: quicker, but they share the CPU while they do
                    servers[m.name] = Server(m, opts.clients, opts, workdir)
        for i, m in enumerate(available):
            try:
                server = servers.get(m.name) or Server(m, opts.clients, opts, workdir)
                servers[m.name] = server
                rows.append(bench_one(m, server, pool, opts, 10 * i, progress))
            except (BenchError, OSError) as e:
                rows.append({**_describe(m), "available": True, "error": f"{type(e).__name__}: {e}"
                             if isinstance(e, OSError) else str(e)})
                pool.close()  # a worker may be stuck mid-request: start afresh
                pool = Pool(client_main, opts.clients, "bench-client")
    finally:
        for server in servers.values():
            server.stop()
        if pool is not None:
            pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    order = {m.name: i for i, m in enumerate(mechs)}
    rows.sort(key=lambda r: order[r["name"]])
    info["loadavg_end"] = list(os.getloadavg())
    return {"benchmark": "ipc", "machine": info, "options": asdict(opts),
            "request": "GET of a 100-byte value by a 10-byte key, served by another process",
            "mechanisms": rows}
