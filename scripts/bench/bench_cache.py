#!/usr/bin/env python3
"""Benchmark the shared-memory cache's read path against its peers.

1. One process reading `--value-size`-byte values by uniformly random key: ShmCache.get
   (as attached by default, with its per-process memo of validated reads, and with the
   memo off: every get reads the shared table), py-lmdb with one read transaction reused,
   py-lmdb with a transaction per get, and a Python dict (the ceiling for anything called
   from Python).
2. Aggregate ShmCache.get throughput as reader processes go from 1 to `--max-readers`
   (with and without the memo), with LMDB (one reused read txn per process) as the peer.

Each figure is the median of `--runs` runs. Prints tables, writes JSON (`--json`).

    .venv/bin/python scripts/bench/bench_cache.py [--runs 5] [--json bench-results/cache.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kvstore.cache import ShmCache  # noqa: E402


def make_keys(n: int) -> list[bytes]:
    return [b"key:%08d" % i for i in range(n)]


def sample(keys: list[bytes], ops: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.choice(keys) for _ in range(ops)]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def rate(get: Callable[[bytes], Any], order: list[bytes], keys: list[bytes]) -> float:
    """Gets per second over `order`, after an untimed warm-up pass over every key."""
    for k in keys:
        get(k)
    t = clock()
    for k in order:
        get(k)
    return len(order) / (clock() - t)


def summary(runs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


# ---------------------------------------------------------------- reader processes


def reader_proc(
    kind: str, target: str, nkeys: int, seed: int, duration: float, ready: Any, start: Any, out: Any
) -> None:
    """Runs in a child: read random keys for `duration` seconds after `start` is set."""
    every = make_keys(nkeys)
    keys = sample(every, 100_000, seed)
    if kind.startswith("cache"):
        cache = ShmCache.attach(target, memo_entries=0 if kind == "cache-table" else 65536)
        get = cache.get
    else:
        env = lmdb.open(target, readonly=True, lock=True, max_readers=64)
        get = env.begin().get
    for k in every:
        get(k)
    ready.put(os.getpid())
    start.wait()
    n, i, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    deadline = t0 + duration
    while True:
        for k in keys[i : i + 1000]:
            get(k)
        n += 1000
        i = (i + 1000) % len(keys)
        if time.perf_counter() >= deadline:
            break
    out.put((n / (time.perf_counter() - t0), n / (time.process_time() - c0)))


def aggregate(
    kind: str, target: str, readers: int, nkeys: int, duration: float, seed: int
) -> tuple[float, float]:
    """(aggregate gets per wall second, mean gets per CPU second of one reader)."""
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=reader_proc, args=(kind, target, nkeys, seed + i, duration, ready, start, out))
        for i in range(readers)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:  # every child has imported, attached and warmed up
            ready.get(timeout=60)
        start.set()
        rates = [out.get(timeout=duration + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return sum(w for w, _ in rates), statistics.mean(c for _, c in rates)


# ---------------------------------------------------------------- main


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--ops", type=int, default=300_000, help="gets per single-process run")
    ap.add_argument("--max-readers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per multi-process run")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="single-process rates per wall second, or per CPU second (steadier on a shared machine)",
    )
    ap.add_argument("--json", default="bench-results/cache.json")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    console = Console(width=None if sys.stdout.isatty() else 140)  # logs: keep tables whole

    keys = make_keys(args.keys)
    rng = random.Random(7)
    values = {k: rng.randbytes(args.value_size) for k in keys}
    name = f"/kvs-bench-{uuid.uuid4().hex[:12]}"
    tmp = tempfile.mkdtemp(prefix="kvs-bench-")
    cache = ShmCache.create(name)
    env = lmdb.open(tmp, map_size=1 << 30, sync=False, max_readers=64)
    try:
        t = time.perf_counter()
        for k, v in values.items():
            cache.put(k, v)
        put_rate = len(values) / (time.perf_counter() - t)
        with env.begin(write=True) as txn:
            for k, v in values.items():
                txn.put(k, v)
        d = dict(values)
        order = sample(keys, args.ops, 11)
        assert all(cache.get(k) == values[k] for k in keys), "the cache lost entries"

        def lmdb_txn_per_get(k: bytes) -> bytes | None:
            with env.begin() as txn:
                return txn.get(k)

        table_only = ShmCache.attach(name, memo_entries=0)
        single: dict[str, list[float]] = {
            "shm cache": [],
            "shm cache, no memo": [],
            "lmdb, one txn": [],
            "lmdb, txn per get": [],
            "dict": [],
        }
        for _ in range(args.runs):
            single["shm cache"].append(rate(cache.get, order, keys))
            single["shm cache, no memo"].append(rate(table_only.get, order, keys))
            with env.begin() as txn:
                single["lmdb, one txn"].append(rate(txn.get, order, keys))
            single["lmdb, txn per get"].append(rate(lmdb_txn_per_get, order[: args.ops // 4], keys))
            single["dict"].append(rate(d.get, order, keys))
        results: dict[str, Any] = {
            "single_process": {k: summary(v) for k, v in single.items()},
            "cache_put_ops_s": put_rate,
        }

        multi: list[dict[str, Any]] = []
        for n in range(1, args.max_readers + 1):
            row: dict[str, Any] = {"readers": n}
            for kind, target in (("cache", name), ("cache-table", name), ("lmdb", tmp)):
                runs = [
                    aggregate(kind, target, n, args.keys, args.duration, 100 * r) for r in range(args.runs)
                ]
                row[kind] = summary([w for w, _ in runs])
                row[kind + " per reader per cpu s"] = summary([c for _, c in runs])
            multi.append(row)
        results["reader_processes"] = multi
        table_only.close()
    finally:
        cache.unlink()
        cache.close()
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)

    cache_med = results["single_process"]["shm cache"]["median"]
    t1 = Table(
        title=f"One process, {args.value_size}-byte values, {args.keys} keys, "
        f"gets per {args.clock} second, median of {args.runs}"
    )
    for col in ("reader", "gets/s", "min", "max", "cache is x faster"):
        t1.add_column(col, justify="right" if col != "reader" else "left")
    for label, s in results["single_process"].items():
        t1.add_row(
            label,
            f"{s['median']:,.0f}",
            f"{s['min']:,.0f}",
            f"{s['max']:,.0f}",
            f"{cache_med / s['median']:.2f}",
        )
    console.print(t1)
    console.print(f"(cache puts, one process: {put_rate:,.0f} per wall second)")

    t2 = Table(
        title=f"Reader processes, aggregate gets/s, median of {args.runs} x {args.duration}s ({os.cpu_count()} CPUs)"
    )
    cols = (
        "readers",
        "shm cache",
        "no memo",
        "lmdb, one txn each",
        "cache / lmdb",
        "cache, per reader-CPU-s",
        "lmdb, per reader-CPU-s",
    )
    for col in cols:
        t2.add_column(col, justify="right")
    for row in multi:
        c, t, m = row["cache"]["median"], row["cache-table"]["median"], row["lmdb"]["median"]
        cc, mc = row["cache per reader per cpu s"]["median"], row["lmdb per reader per cpu s"]["median"]
        t2.add_row(
            str(row["readers"]),
            f"{c:,.0f}",
            f"{t:,.0f}",
            f"{m:,.0f}",
            f"{c / m:.2f}",
            f"{cc:,.0f}",
            f"{mc:,.0f}",
        )
    console.print(t2)

    report = {
        "benchmark": "cache",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "params": vars(args),
        **results,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
