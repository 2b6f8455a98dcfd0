"""Helpers for tests that run real node processes: start, wait, and always clean up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis

from kvstore import config
from kvstore.cache import ShmCache
from kvstore.cluster import manage, procs
from kvstore.config import ClusterConfig

T = TypeVar("T")


def kv(data_dir: Path, *args: str, timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would: a subprocess, real exit code, real output."""
    r = subprocess.run([sys.executable, "-m", "kvstore", "--dir", str(data_dir), *args],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kvstore {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_until(cond: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # a node may be restarting
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def status(data_dir: Path) -> dict[str, Any]:
    return manage.status(data_dir)


def leader(data_dir: Path) -> str:
    return wait_until(lambda: status(data_dir)["leader"], what="a leader")


def sock(data_dir: Path, node: str) -> str:
    return str(data_dir / node / "kv.sock")


def client(data_dir: Path, node: str, timeout: float = 10.0) -> redis.Redis:
    return redis.Redis(unix_socket_path=sock(data_dir, node), socket_timeout=timeout)


def leftovers(data_dir: Path, names: list[str]) -> list[str]:
    """Processes, sockets, shared memory or semaphores a stopped cluster left behind."""
    out = []
    for n in names:
        if procs.live_pid(data_dir, n):
            out.append(f"process of {n}")
        if (data_dir / n / "kv.sock").exists():
            out.append(f"socket of {n}")
        shm = ShmCache.name_for(str(data_dir.resolve()), n).lstrip("/")
        for f in os.listdir("/dev/shm"):
            if shm in f:
                out.append(f"/dev/shm/{f}")
    return out


@contextmanager
def running_cluster(data_dir: Path, nodes: int = 3,
                    env_for: Callable[[ClusterConfig], dict[str, dict[str, str]]] | None = None,
                    edit: Callable[[ClusterConfig], ClusterConfig] | None = None,
                    ) -> Iterator[Path]:
    """A cluster of real node processes; stopped and checked for leftovers however the test ends."""
    cfg = manage.create(data_dir, nodes, None)
    if edit is not None:
        cfg = edit(cfg)
        manage.config_path(data_dir).write_text(config.dump(cfg))
    env = env_for(cfg) if env_for else {}
    names = [n.name for n in cfg.nodes]
    try:
        for n in names:
            procs.spawn(data_dir, manage.config_path(data_dir), n, extra_env=env.get(n))
        leader(data_dir)
        yield data_dir
    finally:
        try:
            manage.down(data_dir, grace=5.0)
        finally:
            left = leftovers(data_dir, names)
            for n in names:
                log = data_dir / n / "node.log"
                if log.exists() and os.environ.get("KVSTORE_TEST_LOGS"):
                    print(f"--- {n} ---\n{log.read_text()[-3000:]}")
            assert not left, f"left behind: {left}"


def status_json(data_dir: Path) -> dict[str, Any]:
    r = kv(data_dir, "cluster", "status", "--json", check=True)
    return dict(json.loads(r.stdout))


def digest(data_dir: Path, node: str) -> tuple[int, str]:
    """(keys, hash of every key and value) of a node's local state, read over its socket."""
    import hashlib

    from kvstore.local.client import Client

    h = hashlib.sha256()
    n = 0
    with Client(sock(data_dir, node), readonly=True, timeout=30) as c:
        for k, v in c.scan():
            h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
            n += 1
    return n, h.hexdigest()
