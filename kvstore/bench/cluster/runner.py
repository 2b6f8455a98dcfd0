"""Drive `kvstore bench cluster`: each target started, loaded, measured at each client
count with each pattern, and stopped (always: try/finally), then ratios against the peers.

The clients of a cell are spread over a few worker processes (asyncio inside each); every
client starts at the same CLOCK_MONOTONIC instant and only requests completed inside the
window count. The servers' CPU is read from /proc for the same window.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kvstore.bench.cluster.targets import Etcd, Ours, Pattern, Redis, Target
from kvstore.bench.common import latency_summary, machine_info, proc_cpu_s
from kvstore.bench.ipc.base import wait_until
from kvstore.bench.workers import BenchError, Pool, worker_loop
from kvstore.errors import KVError

Progress = Callable[[str], None]


@dataclass
class ClusterOptions:
    clients: tuple[int, ...] = (1, 16, 64, 256)
    duration: float = 3.0
    peers: bool = False
    nkeys: int = 1000
    seed: int = 1
    workers: int = 2  # client processes a cell's clients are spread over


def client_main(idx: int, conn: Connection) -> None:
    from kvstore.bench.cluster.drivers import handle

    worker_loop(conn, handle)


def targets(opts: ClusterOptions) -> list[Target]:
    ts: list[Target] = [Ours()]
    if opts.peers:
        ts += [Redis(durable=False), Redis(durable=True), Etcd()]
    return ts


def steps(opts: ClusterOptions) -> int:
    """How many times run_cluster calls progress (for a progress bar)."""
    n = 0
    for t in targets(opts):
        if t.unavailable() is None:
            npat = {"kvstore": 6, "redis": 2, "redis-aof": 1, "etcd": 3}.get(t.name, 1)
            n += 2 + npat * len(opts.clients)
            if PIPELINE_CONNS in opts.clients and t.name != "etcd":
                n += 1
    return n


def _split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _server_cpu(pids: list[int]) -> float | None:
    total = 0.0
    for pid in pids:
        c = proc_cpu_s(pid)
        if c is None:
            return None
        total += c
    return total


def _cell(pool: Pool, t: Target, p: Pattern, clients: int, opts: ClusterOptions, salt: int) -> dict[str, Any]:
    import numpy as np

    shares = _split(clients, len(pool))
    t_start = time.monotonic_ns() + int((0.3 + 0.004 * clients) * 1e9)
    t_end = t_start + int(opts.duration * 1e9)
    first = 0
    for i, n in enumerate(shares):
        pool.send(i, ("run", p.spec, n, first, t_start, t_end, opts.nkeys, opts.seed * 100_000 + salt * 10 + i))
        first += n
    wait_until(t_start)
    c0 = _server_cpu(t.pids())
    wait_until(t_end)
    c1 = _server_cpu(t.pids())
    replies = [pool.recv(i, opts.duration + 90) for i in range(len(shares))]
    ok = sum(r["ok"] for r in replies)
    lat = np.sort(np.concatenate([np.frombuffer(r["lat"], dtype=np.int64) for r in replies]))
    span = (t_end - t_start) / 1e9
    errors = sum(r["errors"] for r in replies)
    wrong = sum(r["wrong"] for r in replies)
    per = 1e6 / ok if ok else None
    return {
        "target": t.name, "api": p.api, "op": p.op, "pattern": p.label, "clients": clients,
        "duration_s": span, "ok": ok, "errors": errors, "wrong": wrong,
        "error_sample": next((r["error"] for r in replies if r["error"]), None),
        "ops_per_s": ok / span,
        "latency": latency_summary(lat),
        "client_cpu_us_per_req": sum(r["cpu_s"] for r in replies) * per if per else None,
        "server_cpu_us_per_req": (c1 - c0) * per if per and c0 is not None and c1 is not None else None,
    }


PIPELINE = 16  # requests in flight per connection in the pipelined SET cell
PIPELINE_CONNS = 64


def _redis_benchmark(sock: str, n: int, nkeys: int, conns: int) -> tuple[dict[str, float], float]:
    """One `redis-benchmark -P 16` SET run: (its CSV row, wall seconds)."""
    args = ["redis-benchmark", "-s", sock, "-t", "set", "-n", str(n), "-d", "100", "-r", str(nkeys),
            "-c", str(conns), "-P", str(PIPELINE), "--csv"]
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    rows = list(csv.reader(line for line in out.stdout.splitlines() if line.strip()))
    if out.returncode != 0 or len(rows) < 2:
        raise BenchError(f"redis-benchmark failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}")
    return {k: float(v) for k, v in zip(rows[0][1:], rows[-1][1:], strict=False)}, took


def _pipelined_cell(t: Target, opts: ClusterOptions) -> dict[str, Any] | None:
    """SETs pipelined 16 deep on 64 connections by redis-benchmark (when installed), sized
    to last about --duration; for kvstore, every SET is checked against the applied index."""
    sock = t.pipeline_socket()
    if sock is None or shutil.which("redis-benchmark") is None:
        return None
    conns = PIPELINE_CONNS
    probe, took = _redis_benchmark(sock, conns * PIPELINE * 4, opts.nkeys, conns)
    n = max(conns * PIPELINE * 4, int(probe["rps"] * opts.duration))
    before = t.writes_applied()
    row, took = _redis_benchmark(sock, n, opts.nkeys, conns)
    after = t.writes_applied()
    ok = n if before is None or after is None else min(n, after - before)
    nan = float("nan")
    return {
        "target": t.name, "api": "RESP", "op": "set_pipelined",
        "pattern": f"SET pipelined (redis-benchmark -P {PIPELINE}, {conns} conns)", "clients": conns,
        "duration_s": took, "ok": ok, "errors": n - ok, "wrong": 0,
        "error_sample": None if ok == n else f"{n - ok} of {n} SETs did not take effect",
        "ops_per_s": row["rps"] * ok / n,
        "latency": {"samples": n, "mean_us": row.get("avg_latency_ms", nan) * 1000,
                    "p50_us": row.get("p50_latency_ms", nan) * 1000, "p99_us": row.get("p99_latency_ms", nan) * 1000,
                    "p999_us": nan, "max_us": row.get("max_latency_ms", nan) * 1000},
        "client_cpu_us_per_req": None, "server_cpu_us_per_req": None,
    }


# (our pattern, peer target, peer pattern): the comparisons worth a ratio
PAIRS = [
    (("RESP", "get"), "redis", ("RESP", "get")),
    (("RESP", "get_local"), "redis", ("RESP", "get")),
    (("RESP", "set"), "redis", ("RESP", "set")),
    (("RESP", "set"), "redis-aof", ("RESP", "set")),
    (("RESP", "set_pipelined"), "redis-aof", ("RESP", "set_pipelined")),
    (("gRPC", "get"), "etcd", ("gRPC", "get")),
    (("gRPC", "get_local"), "etcd", ("gRPC", "get_local")),
    (("gRPC", "set"), "etcd", ("gRPC", "set")),
    (("RESP", "set"), "etcd", ("gRPC", "set")),  # replicated, durable writes either way
]


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    idx = {(r["target"], r["api"], r["op"], r["clients"]): r for r in results}
    out = []
    for (api, op), peer, (papi, pop) in PAIRS:
        for (tname, a, o, c), ours in idx.items():
            if tname != "kvstore" or (a, o) != (api, op):
                continue
            theirs = idx.get((peer, papi, pop, c))
            if theirs is None or not theirs["ops_per_s"]:
                continue
            out.append({
                "ours": f"{api} {ours['pattern']}", "peer": peer, "peer_pattern": theirs["pattern"], "clients": c,
                "throughput_ratio": ours["ops_per_s"] / theirs["ops_per_s"],
                "p50_ratio": ours["latency"]["p50_us"] / theirs["latency"]["p50_us"]
                if theirs["latency"]["samples"] and ours["latency"]["samples"] else None,
            })
    return out


def run_cluster(opts: ClusterOptions, progress: Progress = lambda s: None) -> dict[str, Any]:
    info = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="kvbench-cluster-"))
    results: list[dict[str, Any]] = []
    tinfo: dict[str, Any] = {}
    pool: Pool | None = None
    try:
        pool = Pool(client_main, opts.workers, "bench-cluster-client")
        for ti, t in enumerate(targets(opts)):
            reason = t.unavailable()
            tinfo[t.name] = {"title": t.title, "available": reason is None, "reason": reason}
            if reason:
                continue
            try:
                progress(f"{t.name}: starting")
                t.start(workdir)
                progress(f"{t.name}: loading {opts.nkeys} keys")
                pool.call([("preload", t.preload_spec(), 0, opts.nkeys, 16)], timeout=120)
                for pi, p in enumerate(t.patterns()):
                    for c in opts.clients:
                        progress(f"{t.name}: {p.api} {p.label}, {c} client{'s' if c > 1 else ''}")
                        results.append(_cell(pool, t, p, c, opts, ti * 1000 + pi * 10 + c))
                if PIPELINE_CONNS in opts.clients:
                    progress(f"{t.name}: pipelined SET (redis-benchmark)")
                    cell = _pipelined_cell(t, opts)
                    if cell is not None:
                        results.append(cell)
            except (BenchError, KVError, OSError) as e:
                tinfo[t.name]["error"] = f"{type(e).__name__}: {e}"
                pool.close()
                pool = Pool(client_main, opts.workers, "bench-cluster-client")
            finally:
                t.stop()
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = list(os.getloadavg())
    return {"benchmark": "cluster", "machine": info, "options": asdict(opts), "targets": tinfo,
            "value_size": 100, "results": results, "ratios": ratios(results)}
