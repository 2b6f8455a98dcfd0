#!/usr/bin/env python3
"""How much of an LMDB file ends up in a reader's RSS (issue 6's memory target).

LMDB reads through a shared, read-only memory map of its data file. Pages a process
touches through a map count in its RSS (as RssFile, not RssAnon), and on a page fault
Linux maps not one page but the pages around it that are already in the page cache
("fault-around", 64 KiB by default: /sys/kernel/debug/fault_around_bytes, one setting for
the whole machine). So a few thousand random reads put most of the file in the reader's
RSS, however little of it the reads need.

This builds one LMDB environment of --keys keys (redis-benchmark's key names,
--value-size byte values, one write transaction, fsynced), then, for each count in
--reads, starts a fresh process that opens it read-only, reads that many random keys and
reports its memory from /proc/self/status: VmRSS = RssAnon (its own heap) + RssFile
(mapped files: the LMDB map, Python and its libraries) + RssShmem. The file is in the page
cache throughout (it was just written), as it is on a node that serves reads. Each count
runs with LMDB's readahead on (the node's setting) and off (MDB_NORDAHEAD, which advises
the kernel MADV_RANDOM): that advice governs reading from disk, not fault-around.

    .venv/bin/python scripts/bench/bench_lmdb_rss.py [--keys 1000000] [--reads 0,100,1000,10000,100000] [--json F]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lmdb  # noqa: E402
from bench_snapshot import rss_mb  # noqa: E402

from kvstore.bench.common import machine_info  # noqa: E402

MB = 1 << 20


def status() -> dict[str, float]:
    """VmRSS and its parts, in MB, of this process."""
    return {k: rss_mb(os.getpid(), k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


def build(path: Path, keys: int, value_size: int) -> tuple[float, int, int]:
    """Write the keys; return the time taken, the B-tree's depth and its page size."""
    t0 = time.perf_counter()
    env = lmdb.open(str(path), map_size=max(1 << 30, keys * (value_size + 64) * 3), sync=False)
    value = b"v" * value_size
    with env.begin(write=True) as txn:
        for i in range(keys):
            txn.put(b"key:%012d" % i, value)
    env.sync(True)
    st = env.stat()
    env.close()
    return time.perf_counter() - t0, st["depth"], st["psize"]


def probe(path: str, keys: int, reads: int, readahead: bool, seed: int) -> dict[str, Any]:
    """In a fresh process: open, read `reads` random keys, report memory (MB)."""
    env = lmdb.open(path, readonly=True, lock=False, readahead=readahead)
    rng = random.Random(seed)
    names = [b"key:%012d" % rng.randrange(keys) for _ in range(reads)]
    opened = status()
    t0 = time.perf_counter()
    found = 0
    with env.begin() as txn:
        for k in names:
            found += txn.get(k) is not None
    took = time.perf_counter() - t0
    after = status()
    assert found == reads, f"{reads - found} keys missing"
    return {"opened": opened, "after": after,
            "us_per_get": took / reads * 1e6 if reads else None}


def run_probe(path: Path, keys: int, reads: int, readahead: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", str(path), "--keys", str(keys), "--probe-reads", str(reads),
         "--probe-readahead", "1" if readahead else "0"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def fault_around() -> str:
    try:
        return Path("/sys/kernel/debug/fault_around_bytes").read_text().strip() + " bytes"
    except OSError:
        return "64 KiB (the kernel's default; debugfs is not mounted here, so not read)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--reads", default="0,100,1000,10000,100000", help="counts of random reads, one probe each")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-reads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-readahead", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe:
        print(json.dumps(probe(a.probe, a.keys, a.probe_reads, a.probe_readahead == "1", seed=a.probe_reads)))
        return
    counts = [int(x) for x in a.reads.split(",") if x.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="kvstore-lmdb-rss-"))
    try:
        print(f"building {a.keys:,} keys of {a.value_size} bytes in {tmp} ...", flush=True)
        took, depth, psize = build(tmp, a.keys, a.value_size)
        size = (tmp / "data.mdb").stat().st_size
        print(f"  {took:.1f} s; data.mdb {size / MB:.0f} MB; B-tree depth {depth} (a read touches at most "
              f"{depth} pages of {psize} bytes); fault-around: {fault_around()}\n")
        print(f"{'random reads':>12} {'readahead':>9} {'µs/get':>7} {'VmRSS':>7} {'RssAnon':>8} "
              f"{'RssFile':>8} {'touched, at most':>17} {'map in RSS':>11} {'of the file':>11}")
        rows = []
        for n in counts:
            for ra in (True, False):
                r = run_probe(tmp, a.keys, n, ra)
                opened, after = r["opened"], r["after"]
                mapped = (after["RssFile"] - opened["RssFile"]) * MB  # what the reads mapped
                touched = min(n * depth * psize, size)  # distinct pages the reads can need
                row = {"reads": n, "readahead": ra, "us_per_get": r["us_per_get"], "touched_mb": touched / MB,
                       "vmrss_mb": after["VmRSS"], "rss_anon_mb": after["RssAnon"],
                       "rss_file_mb": after["RssFile"], "map_in_rss_mb": mapped / MB,
                       "share_of_file": mapped / size}
                rows.append(row)
                us = f"{r['us_per_get']:.2f}" if r["us_per_get"] else "-"
                print(f"{n:>12,} {'on' if ra else 'off':>9} {us:>7} {row['vmrss_mb']:>5.0f}MB "
                      f"{row['rss_anon_mb']:>6.0f}MB {row['rss_file_mb']:>6.0f}MB {row['touched_mb']:>15.1f}MB "
                      f"{row['map_in_rss_mb']:>9.0f}MB "
                      f"{row['share_of_file']:>10.0%}", flush=True)
        if a.json:
            a.json.write_text(json.dumps({
                "date": datetime.date.today().isoformat(), "machine": machine_info(), "keys": a.keys,
                "value_size": a.value_size, "file_mb": size / MB, "depth": depth, "rows": rows}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
