#!/usr/bin/env python3
"""Local protocol benchmark: our node's RESP socket against redis-server, in one run.

For each target (our node with 0..N worker processes; redis-server from the distro,
started here on a tmp UNIX socket with no persistence):

- `redis-benchmark -s SOCK -t set -c 50 -n N -q --csv`, then `-t get` (finding the key
  SET wrote), without and with `-P 16`; with the server's CPU time per request
  (/proc: user + system, all its processes), steadier than rates on a shared machine;
- one redis-py client doing GETs in a loop;
- (ours only) one `kvstore.local.Client(local=True)` doing GETs from shared memory.

Each figure is the median of --runs; the table gives ratios against redis-server, and
the whole result goes to --json. Our node fsyncs every commit (group commit) unless
--no-sync; redis-server runs with --save '' --appendonly no: it keeps nothing.

    .venv/bin/python scripts/bench/bench_resp.py [--runs 3] [--workers 0,1] [-n 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kvstore.bench.common import machine_info, proc_cpu_s  # noqa: E402

# -- our node, in a child process ----------------------------------------------------------


async def _serve(d: str, workers: int, sync: bool, cache: str, cache_mb: int) -> None:
    from kvstore.local.server import RespServer
    from kvstore.local.single import SingleNodeBackend
    from kvstore.local.workers import WorkerPool

    backend = SingleNodeBackend.open(
        f"{d}/data", cache_name=cache, cache_size=cache_mb << 20, sync=sync, map_size=256 << 20
    )
    server = RespServer(backend, f"{d}/kv.sock")
    await server.start()
    pool = None
    if workers:
        assert server.socket is not None
        pool = WorkerPool(
            backend,
            server.socket,
            workers=workers,
            store_path=f"{d}/data",
            cache_name=cache,
            internal_path=f"{d}/internal.sock",
            path=f"{d}/kv.sock",
        )
        await pool.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    if pool is not None:
        await pool.stop()
    await server.close()
    await backend.aclose()


def serve_main(argv: list[str]) -> None:
    import uvloop

    d, workers, sync, cache, cache_mb = argv[0], int(argv[1]), argv[2] == "1", argv[3], int(argv[4])
    uvloop.run(_serve(d, workers, sync, cache, cache_mb))


class Target:
    def __init__(self, name: str, sock: str, proc: subprocess.Popen[Any], cache: str | None) -> None:
        self.name, self.sock, self.proc, self.cache = name, sock, proc, cache

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_kvstore(d: str, workers: int, sync: bool, cache_mb: int = 64) -> Target:
    cache = f"/kvs-bench-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", d, str(workers), "1" if sync else "0", cache, str(cache_mb)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("our node did not start")
    return Target(f"kvstore w={workers}", f"{d}/kv.sock", proc, cache)


def start_redis(d: str) -> Target:
    sock = f"{d}/redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", d],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)
    return Target("redis-server", sock, proc, None)


# -- measurements ---------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc; gone ones count 0)."""
    return sum(proc_cpu_s(pid) or 0.0 for pid in pids)


def server_pids(t: Target) -> list[int]:
    """The target's process and its children (our RESP workers)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(t.proc.pid)], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return [t.proc.pid, *map(int, out.split())]


def redis_benchmark(sock: str, test: str, n: int, clients: int, pipeline: int) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-s", sock, "-t", test, "-c", str(clients), "-n", str(n), "-q", "--csv",
         "-P", str(pipeline)],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return float(out.stdout.splitlines()[1].split(",")[1].strip('"'))


def redis_py_get_loop(sock: str, n: int) -> float:
    import redis

    r = redis.Redis(unix_socket_path=sock)
    r.set("bench:key", "x" * 100)
    t = time.perf_counter()
    for _ in range(n):
        r.get("bench:key")
    dt = time.perf_counter() - t
    r.close()
    return n / dt


def shm_get_loop(sock: str, n: int) -> float:
    from kvstore.local.client import Client

    with Client(sock, local=True) as c:
        c.put("bench:key", "x" * 100)
        assert c.cache is not None, "no shared-memory cache"
        t = time.perf_counter()
        for _ in range(n):
            c.get("bench:key")
        dt = time.perf_counter() - t
        assert c.cache_hits >= n
    return n / dt


def measure(t: Target, args: argparse.Namespace) -> dict[str, float]:
    """ops/s of each test; for redis-benchmark also the server's CPU µs per request
    (`... cpu_us`): the machine is shared, and CPU per request varies less than rates."""
    res: dict[str, float] = {}
    pids = server_pids(t)
    for p in (1, 16):
        for test in ("set", "get"):  # SET first: the GETs then find the key (as with -t get,set)
            c0 = cpu_seconds(pids)
            rps = redis_benchmark(t.sock, test, args.n, args.clients, p)
            name = f"redis-benchmark {test.upper()} -P {p}"
            res[name] = rps
            res[name + " cpu_us"] = (cpu_seconds(pids) - c0) / args.n * 1e6
    res["redis-py GET loop (1 client)"] = redis_py_get_loop(t.sock, args.loop)
    if t.cache is not None:
        res["Client shared-memory GET loop"] = shm_get_loop(t.sock, args.loop * 5)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", default="0,1", help="worker counts for our node, comma separated")
    ap.add_argument("-n", type=int, default=100_000, help="requests per redis-benchmark test")
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("--loop", type=int, default=20_000, help="GETs in the single-client loops")
    ap.add_argument("--no-sync", dest="sync", action="store_false", help="our node without fsync")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "resp.json"))
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as tmp:
        for run in range(args.runs):
            configs: list[tuple[str, Any]] = [("kvstore", int(w)) for w in args.workers.split(",")]
            configs.append(("redis", None))
            for kind, w in configs:
                d = tempfile.mkdtemp(dir=tmp)
                t = start_kvstore(d, w, args.sync) if kind == "kvstore" else start_redis(d)
                try:
                    print(f"run {run + 1}/{args.runs}: {t.name} ...", file=sys.stderr, flush=True)
                    runs.setdefault(t.name, []).append(measure(t, args))
                finally:
                    t.stop()
    report(runs, args)


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    base = med["redis-server"]
    tests = list(dict.fromkeys(k for m in med.values() for k in m))
    ours = [n for n in med if n != "redis-server"]
    rows = []
    for test in tests:
        row: dict[str, Any] = {"test": test, "redis-server": base.get(test)}
        for n in ours:
            v = med[n].get(test)
            row[n] = v
            ref = base.get(test) or base.get("redis-py GET loop (1 client)")
            row[f"{n} ratio"] = v / ref if v and ref else None
        rows.append(row)
    try:
        from rich.console import Console
        from rich.table import Table

        for title, cpu in (
            (f"ops/s, median of {args.runs} (ratio: ours / redis-server)", False),
            (f"server CPU µs per request, median of {args.runs} (ratio: ours / redis-server)", True),
        ):
            table = Table(title=title)
            table.add_column("test")
            for n in ours:
                table.add_column(n, justify="right")
                table.add_column("ratio", justify="right")
            table.add_column("redis-server", justify="right")
            for row in rows:
                if row["test"].endswith(" cpu_us") != cpu:
                    continue
                fmt = _fmt_us if cpu else _fmt
                cells = [row["test"].removesuffix(" cpu_us")]
                for n in ours:
                    cells += [fmt(row[n]), f"{row[n + ' ratio']:.2f}" if row[n + " ratio"] else "-"]
                cells.append(fmt(row["redis-server"]))
                table.add_row(*cells)
            Console().print(table)
    except ImportError:
        for row in rows:
            print(row)
    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "json"},
        "note": "the shared-memory loop's ratio is against redis-py's GET loop on redis-server",
        "median": med,
        "rows": rows,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
