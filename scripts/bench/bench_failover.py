#!/usr/bin/env python3
"""Leader failover: SIGKILL of the leader to the first acknowledged write, median of --runs.

    .venv/bin/python scripts/bench/bench_failover.py [--runs 7]

A 3-node cluster on loopback; a client keeps writing through a surviving node's socket
(writes there are forwarded to whoever leads); the leader is killed, and the time to the
first write acknowledged after the kill is recorded. The killed node is restarted and
the cluster settles before the next run. Target (issue 4): under 600 ms median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kvstore.cluster import manage, procs  # noqa: E402
from kvstore.local.client import Client  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", default="bench-results/failover.json")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="kvs-failover-"))
    results: list[float] = []
    try:
        st, _ = manage.up(d, 3, None)
        for run in range(args.runs):
            st = manage.wait_for_leader(d, manage.load(d), 30)
            ld = st["leader"]
            other = next(r["name"] for r in st["nodes"] if r["name"] != ld and r["role"] != "down")
            acked: list[float] = []
            stop = threading.Event()

            def writer(other: str = other, acked: list[float] = acked, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        with Client(str(d / other / "kv.sock"), timeout=5) as c:
                            while not stop.is_set():
                                c.put(b"k%d" % (i % 100), b"v%d" % i)
                                acked.append(time.monotonic())
                                i += 1
                    except Exception:
                        time.sleep(0.001)

            t = threading.Thread(target=writer, daemon=True)
            t.start()
            time.sleep(0.5)
            t_kill = time.monotonic()
            procs.stop_node(d, ld, force=True)
            deadline = t_kill + 10
            while time.monotonic() < deadline and not any(a > t_kill for a in acked):
                time.sleep(0.001)
            first = next((a for a in acked if a > t_kill), None)
            stop.set()
            t.join(10)
            if first is not None:
                results.append((first - t_kill) * 1000)
                print(f"run {run + 1}: killed {ld}, first acknowledged write after {results[-1]:.0f} ms")
            else:
                print(f"run {run + 1}: no write acknowledged within 10 s")
            procs.spawn(d, manage.config_path(d), ld)
            time.sleep(1.0)
    finally:
        try:
            manage.down(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    out = {"date": time.strftime("%Y-%m-%d"), "runs_ms": [round(x) for x in results],
           "median_ms": round(statistics.median(results)) if results else None}
    print(json.dumps(out))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
