"""Live views of a running cluster: `cluster status --watch` and `cluster logs --follow`."""

from __future__ import annotations

import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from kvstore.cluster import manage, procs
from kvstore.cluster.table import status_table


def watch_status(data_dir: Path, console: Console, interval: float = 1.0, count: int = 0) -> None:
    """Refresh until Ctrl-C (or SIGTERM, or `count` refreshes); exits cleanly either way."""
    cfg = manage.load(data_dir)
    prev: dict[str, tuple[float, int]] = {}
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    old = signal.signal(signal.SIGTERM, on_term)
    n = 0
    try:
        # On a terminal the table redraws in place; piped, each refresh is printed in turn.
        with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal \
                else _Printer(console) as live:
            while not stop:
                st = manage.status(data_dir, cfg)
                now = time.monotonic()
                rates: dict[str, float] = {}
                for r in st["nodes"]:
                    # writes (commands), not log entries: a batch of writes is one entry
                    w = r.get("applied_writes")
                    if w is not None:
                        if r["name"] in prev and w >= prev[r["name"]][1]:  # less: it restarted
                            t0, w0 = prev[r["name"]]
                            rates[r["name"]] = (w - w0) / max(1e-6, now - t0)
                        prev[r["name"]] = (now, w)
                live.update(status_table(st, rates, time.strftime("%H:%M:%S")), refresh=True)
                n += 1
                if count and n >= count:
                    break
                deadline = now + interval
                while not stop and time.monotonic() < deadline:
                    time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)


class _Printer:
    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> _Printer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, renderable: Any, refresh: bool = True) -> None:
        self.console.print(renderable)
        self.console.file.flush()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return list(deque(f, maxlen=lines))
    except OSError:
        return []


def show_logs(data_dir: Path, names: list[str], *, follow: bool, lines: int, prefix: bool) -> None:
    out = sys.stdout
    pos: dict[str, int] = {}
    for n in names:
        p = procs.log_file(data_dir, n)
        for line in _tail(p, lines):
            out.write(f"{n}: {line}" if prefix else line)
        pos[n] = p.stat().st_size if p.exists() else 0
    out.flush()
    if not follow:
        return
    try:
        while True:
            for n in names:
                p = procs.log_file(data_dir, n)
                try:
                    size = p.stat().st_size
                except OSError:
                    continue
                if size < pos[n]:
                    pos[n] = 0  # truncated or replaced
                if size > pos[n]:
                    with open(p, errors="replace") as f:
                        f.seek(pos[n])
                        chunk = f.read()
                        pos[n] = f.tell()
                    for line in chunk.splitlines(keepends=True):
                        out.write(f"{n}: {line}" if prefix else line)
                    out.flush()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
