"""Node processes of a local cluster: start, signal, find, and clean up after them.

Each node runs as `python -m kvstore node run` in its own session (so a Ctrl-C in the
operator's terminal does not reach it), logs to DIR/<node>/node.log and writes
DIR/<node>/node.pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvstore.cache import ShmCache
from kvstore.config import ClusterConfig


def pid_file(data_dir: Path, node: str) -> Path:
    return data_dir / node / "node.pid"


def log_file(data_dir: Path, node: str) -> Path:
    return data_dir / node / "node.log"


def read_pid(data_dir: Path, node: str) -> int | None:
    try:
        return int(pid_file(data_dir, node).read_text().strip())
    except (OSError, ValueError):
        return None


def is_kvstore_process(pid: int) -> bool:
    """Alive, not a zombie, and really a kvstore node (pids get reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"kvstore" in cmd and b"node" in cmd


def is_paused(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def live_pid(data_dir: Path, node: str) -> int | None:
    pid = read_pid(data_dir, node)
    return pid if pid and is_kvstore_process(pid) else None


def spawn(data_dir: Path, cfg_path: Path, node: str, extra_env: dict[str, str] | None = None) -> int:
    home = data_dir / node
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ)
    if rejoining(data_dir, node):
        env["KVSTORE_REJOIN"] = "1"
    env.update(extra_env or {})
    with open(log_file(data_dir, node), "ab") as logf:
        p = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "--dir", str(data_dir), "node", "run",
             "--config", str(cfg_path), "--name", node],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
        )
    pid_file(data_dir, node).write_text(f"{p.pid}\n")
    return p.pid


SEEN_LEADER = "seen-leader"  # written by a node the first time it knows a leader


def rejoining(data_dir: Path, node: str) -> bool:
    """A node with no data, in a cluster that has already elected a leader: its data was
    lost (wiped, disk replaced). Such a node must not vote until it has heard from a
    leader, or it could vote twice in a term it already voted in."""
    if (data_dir / node / "data").exists():
        return False
    return any(p.parent.name != node for p in data_dir.glob(f"*/{SEEN_LEADER}"))


def signal_node(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until the processes are gone; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.waitpid(pid, os.WNOHANG)  # reap our own children
            except ChildProcessError:
                pass
            if not is_kvstore_process(pid):
                alive.remove(pid)
        if alive:
            time.sleep(0.02)
    return alive


def stop_node(data_dir: Path, node: str, *, grace: float = 5.0, force: bool = False) -> bool:
    """SIGTERM (or SIGKILL when force), escalate to SIGKILL after `grace`; True if it was running."""
    pid = live_pid(data_dir, node)
    if pid is None:
        cleanup_node(data_dir, node)
        return False
    if is_paused(pid):
        signal_node(pid, signal.SIGCONT)
    signal_node(pid, signal.SIGKILL if force else signal.SIGTERM)
    if wait_gone([pid], 0.0 if force else grace):
        signal_node(pid, signal.SIGKILL)
        wait_gone([pid], 5.0)
    cleanup_node(data_dir, node)
    return True


def cleanup_node(data_dir: Path, node: str, cfg: ClusterConfig | None = None) -> None:
    """What a killed node leaves: its pid file, socket, shared memory and semaphores."""
    if live_pid(data_dir, node) is not None:
        return
    pid_file(data_dir, node).unlink(missing_ok=True)
    sock = data_dir / node / "kv.sock"
    if cfg is not None:
        for n in cfg.nodes:
            if n.name == node and n.socket:
                sock = Path(n.socket)
    sock.unlink(missing_ok=True)
    remove_cache(ShmCache.name_for(str(data_dir.resolve()), node))


def remove_cache(name: str) -> None:
    try:
        c = ShmCache.attach(name)
    except Exception:
        return
    try:
        c.unlink()
    finally:
        c.close()
