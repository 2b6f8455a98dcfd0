"""The drill's hands on the cluster: node processes, the network, and the fault record.

`DrillCluster` starts, kills, pauses and restarts the node processes of a drill's
cluster (with the environment that routes their links through the network under
test), finds the leader with `manage.status`, and brings everything back at the end.
`Network` is what a scenario may do to the links; `proxy.ProxyMesh` and
`netns.NetnsNetwork` implement it. `FaultLog` records each fault in the History (name,
start, end) and tells the progress display what is going on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from kvstore.cluster import manage, procs
from kvstore.config import ClusterConfig
from kvstore.drills.history import History
from kvstore.drills.workload import Target


class Network(Protocol):
    """The links between nodes, as a scenario sees them. Each partition call replaces the last."""

    kind: str

    def describe(self) -> str: ...

    def node_env(self, node: str) -> dict[str, str]: ...

    def spawn(self, data_dir: Path, cfg_path: Path, node: str, env: dict[str, str]) -> int: ...

    def isolate(self, node: str) -> None: ...

    def partition(self, groups: Sequence[Iterable[str]]) -> None: ...

    def bridge(self, a_side: Iterable[str], b_side: Iterable[str], bridge_node: str) -> None: ...

    def ring(self, order: Sequence[str] | None = None) -> None: ...

    def set_delay(self, ms: float, jitter_ms: float = 0.0) -> None: ...

    def set_loss(self, p: float) -> None: ...

    def heal_all(self) -> None: ...

    def close(self) -> None: ...


class DrillCluster:
    """The node processes of one drill's cluster."""

    def __init__(self, data_dir: Path, cfg: ClusterConfig, net: Network,
                 node_env: dict[str, str] | None = None, log: Callable[[str], None] | None = None) -> None:
        self.data_dir = data_dir
        self.cfg = cfg
        self.cfg_path = manage.config_path(data_dir)
        self.net = net
        self.node_env = dict(node_env or {})
        self.log = log or (lambda msg: None)
        self.all_nodes = [n.name for n in cfg.nodes]
        self.members = [n.name for n in cfg.nodes if n.initial]  # voters now (membership drills change it)
        self.spares = [n for n in self.all_nodes if n not in self.members]
        self.retired: list[str] = []  # removed members (their data retired by remove-node)
        self.paused: set[str] = set()
        self._lock = threading.Lock()

    # -- where clients go --

    def targets(self) -> list[Target]:
        rows = {r["name"]: r for r in manage.status(self.data_dir, self.cfg)["nodes"]}
        order = self.members + self.spares
        return [Target(n, rows[n]["socket"], self.cfg.node(n).grpc_address) for n in order]

    # -- processes --

    def env_for(self, node: str) -> dict[str, str]:
        return {**self.net.node_env(node), **self.node_env}

    def pid(self, node: str) -> int | None:
        return procs.live_pid(self.data_dir, node)

    def is_up(self, node: str) -> bool:
        return self.pid(node) is not None

    def start(self, node: str) -> int:
        pid = self.pid(node)
        if pid is not None:
            return pid
        procs.cleanup_node(self.data_dir, node, self.cfg)
        self.paused.discard(node)
        return self.net.spawn(self.data_dir, self.cfg_path, node, self.env_for(node))

    def start_all(self) -> None:
        for n in self.members:
            self.start(n)

    def kill(self, node: str) -> None:
        """SIGKILL: a crash. What it leaves (socket, shared memory) is cleaned up."""
        procs.stop_node(self.data_dir, node, force=True)
        self.paused.discard(node)

    def stop(self, node: str) -> None:
        procs.stop_node(self.data_dir, node)
        self.paused.discard(node)

    def pause(self, node: str) -> None:
        pid = self.pid(node)
        if pid is not None:
            procs.signal_node(pid, signal.SIGSTOP)
            self.paused.add(node)

    def resume(self, node: str) -> None:
        pid = self.pid(node)
        if pid is not None:
            procs.signal_node(pid, signal.SIGCONT)
        self.paused.discard(node)

    # -- looking --

    def status(self) -> dict[str, Any]:
        return manage.status(self.data_dir, self.cfg)

    def leader(self, timeout: float = 10.0, stop: threading.Event | None = None) -> str | None:
        """The leader (the highest term's, when two think they are), or None at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["leader"] is not None and st["leader"] not in self.paused:
                return str(st["leader"])
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return None
            time.sleep(0.05)

    def followers(self, leader: str | None) -> list[str]:
        return [n for n in self.members if n != leader]

    def wait_recovered(self, timeout: float) -> tuple[bool, str]:
        """Every member up, one leader, every member applied what the leader had committed."""
        deadline = time.monotonic() + timeout
        target: int | None = None
        why = "no leader"
        while time.monotonic() < deadline:
            st = self.status()
            rows = {r["name"]: r for r in st["nodes"]}
            leader = st["leader"]
            down = [n for n in self.members if rows[n]["role"] in ("down", "starting")]
            if down:
                why = f"not serving: {', '.join(down)}"
            elif leader is None:
                why = "no leader"
            else:
                commit = rows[leader]["commit_index"] or 0
                if target is None:
                    target = commit
                lagging = [n for n in self.members if (rows[n]["applied_index"] or 0) < target]
                if not lagging:
                    return True, f"leader {leader}, every member applied index {target}"
                why = f"catching up to index {target}: {', '.join(lagging)}"
            time.sleep(0.1)
        return False, why

    # -- bringing everything back --

    def restore(self) -> None:
        """Heal the network, thaw paused nodes, restart dead members."""
        self.net.heal_all()
        for n in list(self.paused):
            self.resume(n)
        for n in self.all_nodes:
            pid = self.pid(n)
            if pid is not None and procs.is_paused(pid):
                procs.signal_node(pid, signal.SIGCONT)
        for n in self.members:
            if not self.is_up(n):
                self.start(n)

    def teardown(self) -> list[str]:
        """Kill every node (the data is throwaway) and clean up its socket and shared memory."""
        stopped = []
        for n in self.all_nodes:
            with contextlib.suppress(Exception):
                if procs.stop_node(self.data_dir, n, force=True):
                    stopped.append(n)
            with contextlib.suppress(Exception):
                procs.cleanup_node(self.data_dir, n, self.cfg)
        self.paused.clear()
        return stopped


class FaultLog:
    """Faults as the History records them, and the 'current fault' line of the display."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.current: list[str] = []
        self.count = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def window(self, name: str, detail: str = "") -> Iterator[None]:
        idx = self.history.fault_start(name, detail)
        label = f"{name} {detail}".strip()
        with self._lock:
            self.current.append(label)
            self.count += 1
        try:
            yield
        finally:
            self.history.fault_end(idx)
            with self._lock:
                self.current.remove(label)

    def now(self) -> str:
        with self._lock:
            return ", ".join(self.current) if self.current else "-"
