#!/usr/bin/env python3
"""Pipelined GET with many keys against few (issue 6), on one node, with redis-benchmark.

A single node (no replication, writes fsynced, 64 MiB shared-memory cache) is loaded
through its socket with 100-byte values under redis-benchmark's key names
(`key:%012d`), first --small keys, then up to --keys; after each load,

    redis-benchmark -s SOCK -t get -P 16 -c 50 -n N -r KEYS

reads random keys over the whole keyspace. At 10,000 keys every value is in the cache;
at 1,000,000 most are not (the cache holds ~390,000 such entries), so most GETs read
LMDB. The figure of merit is the ratio of the two rates (target >= 0.8). Each rate is
the median of --runs, after one warm-up run; the node's CPU time per request is given
too (the machine is shared: CPU per request is steadier than the rate).

    .venv/bin/python scripts/bench/bench_get_scale.py [--keys 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_resp import cpu_seconds, start_kvstore  # noqa: E402

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


def measure(sock: str, pids: list[int], keys: int, args: argparse.Namespace) -> dict[str, Any]:
    get_rate(sock, pids, keys, args.n, args.pipeline, args.clients)  # warm-up
    runs = [get_rate(sock, pids, keys, args.n, args.pipeline, args.clients) for _ in range(args.runs)]
    return {
        "keys": keys,
        "rps": statistics.median(r for r, _ in runs),
        "cpu_us_per_req": statistics.median(c for _, c in runs),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-n", type=int, default=1_000_000, help="requests per redis-benchmark run")
    ap.add_argument("-P", "--pipeline", type=int, default=16)
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="RESP worker processes besides the node's own")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "get_scale.json"))
    args = ap.parse_args()
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "json"},
    }
    with tempfile.TemporaryDirectory(prefix="kvs-getscale-") as d:
        t = start_kvstore(d, args.workers, True)
        try:
            pids = server_pids(t.proc.pid)
            out["load_small_s"] = round(load(t.sock, 0, args.small), 1)
            small = measure(t.sock, pids, args.small, args)
            print(f"{args.small:,} keys: {small['rps']:,.0f} GET/s, {small['cpu_us_per_req']:.2f} µs CPU/request",
                  flush=True)  # fmt: skip
            out["load_big_s"] = round(load(t.sock, args.small, args.keys), 1)
            big = measure(t.sock, pids, args.keys, args)
            print(f"{args.keys:,} keys: {big['rps']:,.0f} GET/s, {big['cpu_us_per_req']:.2f} µs CPU/request",
                  flush=True)  # fmt: skip
        finally:
            t.stop()
    out["small"], out["big"] = small, big
    out["ratio"] = round(big["rps"] / small["rps"], 2)
    out["cpu_ratio"] = round(small["cpu_us_per_req"] / big["cpu_us_per_req"], 2)
    print(f"ratio {args.keys:,} / {args.small:,} keys: {out['ratio']:.2f} by rate, "
          f"{out['cpu_ratio']:.2f} by CPU per request (target >= 0.8)")  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
