#!/usr/bin/env python3
"""GET at 1,000,000 keys against 10,000 keys (issue 6), on one node, with redis-server
as the peer in the same run.

Two single nodes (no replication, writes fsynced, 64 MiB shared-memory cache each) are
loaded through their sockets with 100-byte values under redis-benchmark's key names
(`key:%012d`), one with --small keys and one with --keys; then, for each depth P in
--depths, runs alternate between the two (so the shared machine's drift falls on both),

    redis-benchmark -s SOCK -t get -P P -c 50 -n N -r KEYS

reads random keys over each one's whole keyspace: P = 1 is redis-benchmark's default (each
client waits for its reply), P = 16 pipelines. At 10,000 keys every value is in the
node's cache; at 1,000,000 most are not (the cache holds ~390,000 such entries), so
most GETs read LMDB. The figure of merit is the ratio of the two rates (target >= 0.8).
redis-server, loaded and read the same way, shows what the same growth costs a store
that keeps everything in memory (two redis-servers, alternated the same way). After
the reads, the memory of the server holding --keys is read from /proc (VmRSS, and its
parts: own heap, mapped files, shared memory). Each rate is the median of --runs (4 by
default, so each server runs first in half of them), after one warm-up run; the
server's CPU time per request is given too (the machine is shared: CPU per request is
steadier than the rate).

    .venv/bin/python scripts/bench/bench_get_scale.py [--keys 1000000] [--runs 4] [--depths 1,16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_resp import cpu_seconds, start_kvstore, start_redis  # noqa: E402
from bench_snapshot import mem  # noqa: E402

from kvstore.bench.common import machine_info  # noqa: E402
from kvstore.local.client import Client  # noqa: E402

VALUE = b"v" * 100


def server_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, out)]


def load(sock: str, lo: int, hi: int, batch: int = 1000, depth: int = 8) -> float:
    """MSET keys lo..hi-1, `depth` MSETs of `batch` keys in flight (they share commits)."""
    t0 = time.perf_counter()
    with Client(sock, timeout=120) as c:
        i = lo
        while i < hi:
            cmds: list[tuple[Any, ...]] = []
            for _ in range(depth):
                if i >= hi:
                    break
                j = min(hi, i + batch)
                flat = [x for k in range(i, j) for x in (b"key:%012d" % k, VALUE)]
                cmds.append((b"MSET", *flat))
                i = j
            for r in c.pipeline(cmds):
                if isinstance(r, Exception):
                    raise r
    return time.perf_counter() - t0


def get_rate(
    sock: str, pids: list[int], keys: int, n: int, pipeline: int, clients: int
) -> tuple[float, float]:
    """(requests/s, node CPU µs per request) of one redis-benchmark GET run."""
    c0 = cpu_seconds(pids)
    out = subprocess.run(
        ["redis-benchmark", "-s", sock, "-t", "get", "-P", str(pipeline), "-c", str(clients), "-n", str(n),
         "-r", str(keys), "-q", "--csv"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    cpu = cpu_seconds(pids) - c0
    rps = float(out.stdout.splitlines()[1].split(",")[1].strip('"'))
    return rps, cpu / n * 1e6


def run_pair(name: str, start: Callable[[str], Any], d: str, args: argparse.Namespace,
             depths: list[int]) -> dict[str, Any]:
    """Two servers side by side, one loaded with --small keys and one with --keys; the
    runs at each depth alternate between them (small, big, then big, small, ...), so the
    machine's drift (it is shared) falls on both alike."""
    os.mkdir(f"{d}/small")
    os.mkdir(f"{d}/big")
    small = start(f"{d}/small")
    try:
        big = start(f"{d}/big")
        try:
            out: dict[str, Any] = {"load_small_s": round(load(small.sock, 0, args.small), 1),
                                   "load_big_s": round(load(big.sock, 0, args.keys), 1)}
            out["lmdb_file_mb"] = {k: round(os.path.getsize(f"{d}/{k}/data/data.mdb") / (1 << 20))
                                   for k in ("small", "big") if os.path.exists(f"{d}/{k}/data/data.mdb")}
            targets = {"small": (small, server_pids(small.proc.pid), args.small),
                       "big": (big, server_pids(big.proc.pid), args.keys)}
            for p in depths:
                n = args.n if p >= 16 else args.n * 3 // 10  # unpipelined runs: fewer, about as long
                runs: dict[str, list[tuple[float, float]]] = {"small": [], "big": []}
                for t, pids, keys in targets.values():
                    get_rate(t.sock, pids, keys, n, p, args.clients)  # warm-up
                for r in range(args.runs):
                    for which in ("small", "big") if r % 2 == 0 else ("big", "small"):
                        t, pids, keys = targets[which]
                        runs[which].append(get_rate(t.sock, pids, keys, n, p, args.clients))
                for which, (_, _, keys) in targets.items():
                    m = out.setdefault(which, {})[p] = {
                        "keys": keys, "pipeline": p,
                        "rps": statistics.median(r for r, _ in runs[which]),
                        "cpu_us_per_req": statistics.median(c for _, c in runs[which]),
                        "runs": runs[which],
                    }
                    print(f"{name}: {keys:,} keys, -P {p}: {m['rps']:,.0f} GET/s, "
                          f"{m['cpu_us_per_req']:.2f} µs CPU/request", flush=True)  # fmt: skip
            out["memory_mb"] = m = mem(big.proc.pid)  # after the reads at --keys
            print(f"{name}: memory at {args.keys:,} keys: VmRSS {m['VmRSS']} MB = own heap (RssAnon) {m['RssAnon']}"
                  f" + mapped files (RssFile: LMDB) {m['RssFile']} + shared memory (the cache) {m['RssShmem']}",
                  flush=True)  # fmt: skip
        finally:
            big.stop()
    finally:
        small.stop()
    out["ratio"] = {p: round(out["big"][p]["rps"] / out["small"][p]["rps"], 2) for p in depths}
    out["cpu_ratio"] = {
        p: round(out["small"][p]["cpu_us_per_req"] / out["big"][p]["cpu_us_per_req"], 2) for p in depths
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("-n", type=int, default=1_000_000, help="requests per redis-benchmark run (3/10 of it unpipelined)")
    ap.add_argument("--depths", default="1,16", help="pipeline depths, comma separated")
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="RESP worker processes besides the node's own")
    ap.add_argument("--cache-mb", type=int, default=64, help="the node's shared-memory cache, MiB")
    ap.add_argument("--no-redis", dest="redis", action="store_false", help="skip the redis-server peer")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "get_scale.json"))
    args = ap.parse_args()
    depths = [int(x) for x in args.depths.split(",")]
    for tool in ("redis-benchmark",) + (("redis-server",) if args.redis else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install redis-tools redis-server)")
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "json"},
    }
    with tempfile.TemporaryDirectory(prefix="kvs-getscale-") as d:
        os.mkdir(f"{d}/kvstore")
        out["kvstore"] = run_pair(
            "kvstore", lambda sub: start_kvstore(sub, args.workers, True, args.cache_mb), f"{d}/kvstore", args, depths
        )
        if args.redis:
            os.mkdir(f"{d}/redis")
            out["redis"] = run_pair("redis-server", start_redis, f"{d}/redis", args, depths)
    print(f"\nGET rate at {args.keys:,} keys / at {args.small:,} keys (target >= 0.8 for kvstore):")
    for p in depths:
        line = f"  -P {p:<3} kvstore {out['kvstore']['ratio'][p]:.2f} (by CPU per request " \
               f"{out['kvstore']['cpu_ratio'][p]:.2f})"
        if args.redis:
            line += f"   redis-server {out['redis']['ratio'][p]:.2f}"
        print(line)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
