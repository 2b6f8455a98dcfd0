#!/usr/bin/env python3
"""Snapshots and scale: a node with many keys restarts fast and a wiped follower catches up.

    .venv/bin/python scripts/bench/bench_snapshot.py                 # 1,000,000 keys of 100 bytes
    .venv/bin/python scripts/bench/bench_snapshot.py --keys 200000 --overwrite-minutes 1

Measures, against a local 3-node cluster it starts and stops itself:
  - load time for N keys (MSET batches through the leader's socket)
  - time for a restarted follower to serve again (process start to a local read answering)
  - time for a wiped follower to catch up (data deleted, restarted; until its digest
    equals the leader's key count and a linearizable read answers)
  - GET throughput at N keys against 10,000 keys (same client pattern)
  - RSS of each node and LMDB file size before and after an overwrite workload
  - each node's RssAnon (its own heap) after the load, at its peak while the wiped
    follower's snapshot streams (sampled every 0.1 s), and 5 s after the catch-up
Targets (issue 6): restart < 3 s, catch-up < 15 s, GET at 1M >= 0.8x GET at 10k,
RSS < 200 MB per node besides the configured cache. Writes JSON (--json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kvstore import config as cfgmod  # noqa: E402
from kvstore.cluster import manage, procs  # noqa: E402
from kvstore.local.client import Client  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS counts LMDB's mapped file pages (page cache, shared, reclaimable) and the
    shared-memory cache too; RssAnon is the process's own heap."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def mem(pid: int) -> dict[str, int]:
    return {k: round(rss_mb(pid, k)) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


class Sampler:
    """Peak RssAnon per node, sampled in a thread while a phase runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        import threading

        self.pids = pids
        self.peak = {n: 0.0 for n in pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for n, pid in self.pids.items():
                try:
                    self.peak[n] = max(self.peak[n], rss_mb(pid, "RssAnon"))
                except OSError:
                    pass

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._t.join()
        return {n: round(v) for n, v in self.peak.items()}


def heap(d: Path) -> dict[str, int]:
    return {n: round(rss_mb(procs.live_pid(d, n) or 0, "RssAnon")) for n in ("n1", "n2", "n3")}


def lmdb_mb(d: Path, node: str) -> float:
    p = d / node / "data" / "data.mdb"
    return p.stat().st_size / 2**20 if p.exists() else 0.0


def load(sock: str, n: int, prefix: str, value: bytes, batch: int = 1000) -> float:
    t0 = time.perf_counter()
    with Client(sock, timeout=60) as c:
        for i in range(0, n, batch):
            c.mset([(f"{prefix}{j:08d}".encode(), value) for j in range(i, min(n, i + batch))])
    return time.perf_counter() - t0


def get_rate(sock: str, n: int, prefix: str, seconds: float) -> float:
    """Pipelined local GETs of random existing keys: ops/s."""
    import random

    rng = random.Random(1)
    done = 0
    with Client(sock, timeout=60, readonly=True) as c:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            c.pipeline([(b"GET", f"{prefix}{rng.randrange(n):08d}".encode()) for _ in range(100)])
            done += 100
        return done / (time.perf_counter() - t0)


def wait(cond, timeout: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.02)
    raise TimeoutError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--overwrite-minutes", type=float, default=10.0)
    ap.add_argument("--json", default="bench-results/snapshot.json")
    ap.add_argument("--skip-get", action="store_true", help="skip the GET-rate and restart measures (memory runs)")
    ap.add_argument("--get-seconds", type=float, default=3.0, help="seconds per GET-rate run (three runs per size)")
    ap.add_argument("--snapshot-entries", type=int, default=500,
                    help="raft.snapshot_entries; the wiped follower needs a snapshot only once the log was compacted "
                         "(MSETs of 1,000 keys: below --keys/1000 entries)")
    args = ap.parse_args()
    value = b"v" * 100
    d = Path(tempfile.mkdtemp(prefix="kvs-snapbench-"))
    out: dict[str, object] = {"keys": args.keys, "snapshot_entries": args.snapshot_entries, "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
    try:
        cfg = manage.create(d, 3, None)
        cfg = dataclasses.replace(cfg, raft=dataclasses.replace(cfg.raft, snapshot_entries=args.snapshot_entries))
        manage.config_path(d).write_text(cfgmod.dump(cfg))
        st, _ = manage.up(d, 3, None)
        ld = st["leader"]
        sock = lambda n: str(d / n / "kv.sock")  # noqa: E731
        load(sock(ld), 10_000, "s", value)
        if not args.skip_get:
            small = statistics.median(get_rate(sock(ld), 10_000, "s", args.get_seconds) for _ in range(3))
        out["load_s"] = round(load(sock(ld), args.keys, "k", value), 1)
        if not args.skip_get:
            big = statistics.median(get_rate(sock(ld), args.keys, "k", args.get_seconds) for _ in range(3))
            out["get_ops_10k"], out["get_ops_big"] = round(small), round(big)
            out["get_ratio"] = round(big / small, 2)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        last = f"k{args.keys - 1:08d}".encode()
        if not args.skip_get:
            # restart a follower: process start until it answers a local read of the last key
            procs.stop_node(d, f)
            t0 = time.monotonic()
            procs.spawn(d, manage.config_path(d), f)
            wait(lambda: Client(sock(f), readonly=True, timeout=2).get(last) == value, 120)
            out["restart_to_serving_s"] = round(time.monotonic() - t0, 2)
        out["leader"], out["wiped"] = ld, f
        out["heap_mb_after_load"] = heap(d)
        # wipe a follower: it comes back through a snapshot
        procs.stop_node(d, f)
        shutil.rmtree(d / f / "data")
        t0 = time.monotonic()
        procs.spawn(d, manage.config_path(d), f)
        sampler = Sampler({n: procs.live_pid(d, n) or 0 for n in ("n1", "n2", "n3")})
        try:
            wait(lambda: Client(sock(f), readonly=True, timeout=5).get(last) == value, 600)
        finally:
            out["heap_mb_peak_during_snapshot"] = sampler.stop()
        out["wiped_catch_up_s"] = round(time.monotonic() - t0, 2)
        # the install logs after the swap readers already see: give it a moment
        t1 = time.monotonic() + 10
        while "installed snapshot" not in (d / f / "node.log").read_text() and time.monotonic() < t1:
            time.sleep(0.2)
        out["wiped_installed_snapshot"] = "installed snapshot" in (d / f / "node.log").read_text()
        time.sleep(5)
        out["heap_mb_after_snapshot"] = heap(d)
        # overwrite workload: memory and file size stay bounded
        before = {n: (mem(procs.live_pid(d, n) or 0), round(lmdb_mb(d, n))) for n in ("n1", "n2", "n3")}
        t_end = time.monotonic() + args.overwrite_minutes * 60
        hot = min(args.keys, 100_000)
        rounds = 0
        while time.monotonic() < t_end:
            load(sock(ld), hot, "k", (b"w%d" % rounds).ljust(100, b"."))
            rounds += 1
        after = {n: (mem(procs.live_pid(d, n) or 0), round(lmdb_mb(d, n))) for n in ("n1", "n2", "n3")}
        out["overwrite_rounds"] = rounds
        out["memory_mb_before_after"] = {n: [before[n][0], after[n][0]] for n in before}
        out["lmdb_mb_before_after"] = {n: [before[n][1], after[n][1]] for n in before}
        out["cache_mb"] = cfg.cache.size_mb
        out["snapshot_bytes"] = cfg.raft.snapshot_bytes
    finally:
        try:
            manage.down(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(out, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
