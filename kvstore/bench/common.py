"""What the benchmarks share: the data set, percentiles, CPU time, child processes.

Child processes (servers, client workers) ignore SIGINT, so that Ctrl-C reaches only
the benchmark, which then stops them in order; and each watches its parent, so that
none outlives a benchmark that was killed outright.
"""

from __future__ import annotations

import datetime
import os
import platform
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.process import BaseProcess
from typing import Any

VALUE_SIZE = 100
MISSING_KEY = b"key:missing"


def key_of(i: int) -> bytes:
    return b"key:%06d" % i


def dataset(nkeys: int, seed: int = 1) -> dict[bytes, bytes]:
    """The same keys and 100-byte random values in every process that asks."""
    rng = random.Random(seed)
    return {key_of(i): rng.randbytes(VALUE_SIZE) for i in range(nkeys)}


def key_sequence(nkeys: int, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [key_of(rng.randrange(nkeys)) for _ in range(n)]


def latency_summary(sorted_ns: Any) -> dict[str, Any]:
    """p50/p99/p99.9 (nearest rank), mean and max, in microseconds, of sorted nanoseconds
    (a sorted list or numpy array)."""
    n = len(sorted_ns)
    if not n:
        nan = float("nan")
        return {"samples": 0, "mean_us": nan, "p50_us": nan, "p99_us": nan, "p999_us": nan, "max_us": nan}

    def pct(q: float) -> float:
        return float(sorted_ns[min(n - 1, max(0, int(q / 100.0 * n + 0.5) - 1))]) / 1000.0

    total = float(sorted_ns.sum()) if hasattr(sorted_ns, "sum") else float(sum(sorted_ns))
    return {"samples": n, "mean_us": total / n / 1000.0, "p50_us": pct(50), "p99_us": pct(99),
            "p999_us": pct(99.9), "max_us": float(sorted_ns[-1]) / 1000.0}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (Linux /proc); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Fd:
    """A file descriptor that survives pickling into another process (spawn or Connection.send).

    Built on multiprocessing's own fd passing: at spawn the child inherits a duplicate; sent
    over a Connection, the receiver fetches a duplicate over a UNIX socket (SCM_RIGHTS).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup: Any) -> Fd:
    return Fd(dup.detach())


def child_init(on_orphan: Callable[[], None] | None = None, interval: float = 0.5) -> None:
    """In a child: ignore Ctrl-C (the parent stops us) and exit if the parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != ppid:
                try:
                    if on_orphan is not None:
                        on_orphan()
                finally:
                    os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def stop_process(p: BaseProcess, grace: float = 2.0) -> None:
    """Wait, then SIGTERM, then SIGKILL; never leaves it running."""
    if p.pid is None:
        return
    p.join(grace)
    if p.is_alive():
        p.terminate()
        p.join(grace)
    if p.is_alive():
        p.kill()
        p.join(grace)


def sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM and SIGHUP (a closed terminal) raise KeyboardInterrupt, as Ctrl-C does,
    so that `finally` blocks stop what the benchmark started; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def undo() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return undo


def machine_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": affinity,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_start": list(os.getloadavg()),
    }


def command_line() -> str:
    return " ".join(["kvstore", *sys.argv[1:]])
