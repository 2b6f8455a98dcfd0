"""Network faults from the kernel (root only): each node in its own network namespace.

Layout, per drill: a private /24 (10.213.N.0/24, N picked so it is unused on this
host), one namespace per node with a veth pair to a bridge in the root namespace. Node i
has 10.213.N.(i+1); the bridge has .254, so the drill's own clients (gRPC) and status
calls reach every node. UNIX sockets and shared memory live in the filesystem and are
not affected.

Faults:

- a cut of link u -> v is a permanent neighbour entry in u's namespace that maps v's
  address to a MAC no one has: u's packets to v vanish on the wire, new connections
  time out rather than being refused, and existing ones resume (TCP retransmits) when
  the entry is removed. No iptables or tc needed. Because u's acknowledgements to v
  vanish too, a cut is per pair of addresses, not per connection as with the proxy.
- delay and loss are `tc qdisc ... netem` on each namespace's interface, when the
  kernel has netem; otherwise the network says so and flaky-network is skipped.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from kvstore.cluster import procs
from kvstore.drills.proxy import ring_cuts
from kvstore.errors import Unavailable, UsageError

PREFIX = "10.213"
BOGUS_MAC = "02:00:5e:00:de:ad"  # locally administered, unused: a black hole on the bridge


def check_netns_usable() -> None:
    """Raise a clear error when --net netns cannot work here."""
    if shutil.which("ip") is None:
        raise UsageError("--net netns needs the `ip` command (iproute2); use --net proxy")
    if os.geteuid() != 0:
        raise UsageError("--net netns needs root (network namespaces, veth, bridge); use --net proxy")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {p.stderr.strip() or p.returncode}")
    return p


def _free_subnet(rng: random.Random) -> int:
    used = (
        _ip("-4", "-o", "addr", "show", check=False).stdout + _ip("-4", "route", "show", check=False).stdout
    )
    names = _ip("-o", "link", "show", check=False).stdout
    for n in rng.sample(range(1, 250), 249):
        if f"{PREFIX}.{n}." not in used and f"kvd{n}br" not in names:
            return n
    raise Unavailable(f"no free {PREFIX}.N.0/24 subnet for the drill's namespaces")


class NetnsNetwork:
    kind = "netns"

    def __init__(self, nodes: dict[str, str], *, seed: int | None = None) -> None:
        check_netns_usable()
        self.rng = random.Random(seed)
        self.nodes = list(nodes)
        self.n = _free_subnet(random.Random())
        self.br = f"kvd{self.n}br"
        self.ns = {name: f"kvd{self.n}-{name}" for name in self.nodes}
        self.hosts = {name: f"{PREFIX}.{self.n}.{i + 1}" for i, name in enumerate(self.nodes)}
        self.dev = "eth0"
        self.cut: set[tuple[str, str]] = set()
        self.shaped = False
        self._delay = (0.0, 0.0)
        self._loss = 0.0
        self._created: list[tuple[str, str]] = []  # ("ns"|"link", name), for close()
        try:
            self._build()
            self.can_shape = self._probe_netem()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("link", "add", self.br, "type", "bridge")
        self._created.append(("link", self.br))
        _ip("addr", "add", f"{PREFIX}.{self.n}.254/24", "dev", self.br)
        _ip("link", "set", self.br, "up")
        for name in self.nodes:
            ns = self.ns[name]
            _ip("netns", "add", ns)
            self._created.append(("ns", ns))
            host_end = f"kvd{self.n}{name}"[:15]
            _ip("link", "add", host_end, "type", "veth", "peer", "name", self.dev, "netns", ns)
            _ip("link", "set", host_end, "master", self.br, "up")
            _ip("-n", ns, "addr", "add", f"{self.hosts[name]}/24", "dev", self.dev)
            _ip("-n", ns, "link", "set", self.dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _probe_netem(self) -> bool:
        if shutil.which("tc") is None:
            return False
        ns = self.ns[self.nodes[0]]
        p = subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", self.dev, "root", "netem", "delay", "1ms"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if p.returncode != 0:
            return False
        subprocess.run(
            ["tc", "-n", ns, "qdisc", "del", "dev", self.dev, "root"], capture_output=True, timeout=10
        )
        return True

    def describe(self) -> str:
        shaping = (
            "tc netem for delay and loss" if self.can_shape else "no tc netem in this kernel (no delay/loss)"
        )
        return (
            f"netns: {len(self.nodes)} network namespaces on bridge {self.br}, {PREFIX}.{self.n}.0/24; "
            f"cuts drop packets silently; {shaping}"
        )

    # -- nodes --

    def node_env(self, node: str) -> dict[str, str]:
        return {}

    def spawn(self, data_dir: Path, cfg_path: Path, node: str, env: dict[str, str]) -> int:
        """Like procs.spawn, inside the node's namespace (`ip netns exec` execs: same pid)."""
        home = data_dir / node
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        full_env = {**os.environ, **env}
        with open(procs.log_file(data_dir, node), "ab") as logf:
            p = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns[node],
                    sys.executable,
                    "-m",
                    "kvstore",
                    "--dir",
                    str(data_dir),
                    "node",
                    "run",
                    "--config",
                    str(cfg_path),
                    "--name",
                    node,
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
                close_fds=True,
            )
        procs.pid_file(data_dir, node).write_text(f"{p.pid}\n")
        return p.pid

    # -- partitions --

    def _set_cut(self, u: str, v: str, on: bool) -> None:
        ns = self.ns[u]
        if on:
            _ip(
                "-n",
                ns,
                "neigh",
                "replace",
                self.hosts[v],
                "lladdr",
                BOGUS_MAC,
                "nud",
                "permanent",
                "dev",
                self.dev,
            )
        else:
            _ip("-n", ns, "neigh", "del", self.hosts[v], "dev", self.dev, check=False)

    def _apply_cuts(self, cuts: Iterable[tuple[str, str]]) -> None:
        want = set(cuts)
        for u, v in sorted(self.cut - want):
            self._set_cut(u, v, False)
        for u, v in sorted(want - self.cut):
            self._set_cut(u, v, True)
        self.cut = want

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        group_of: dict[str, int] = {}
        for i, g in enumerate(groups):
            for n in g:
                if n not in self.ns:
                    raise ValueError(f"unknown node {n!r}")
                group_of[n] = i
        for i, n in enumerate(self.nodes):
            group_of.setdefault(n, -1 - i)
        self._apply_cuts(
            (a, b) for a in self.nodes for b in self.nodes if a != b and group_of[a] != group_of[b]
        )

    def isolate(self, node: str) -> None:
        self.partition([[node], [n for n in self.nodes if n != node]])

    def bridge(self, a_side: Iterable[str], b_side: Iterable[str], bridge_node: str) -> None:
        a, b = set(a_side), set(b_side)
        if a & b or bridge_node in a | b:
            raise ValueError("the sides and the bridge must not overlap")
        self._apply_cuts([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])

    def ring(self, order: Sequence[str] | None = None) -> None:
        self._apply_cuts(ring_cuts(list(order or self.nodes)))

    # -- shaping --

    def _need_netem(self) -> None:
        if not self.can_shape:
            raise NotImplementedError(
                "this kernel has no tc netem: delay and loss are unavailable with --net netns"
            )

    def _netem(self, args: list[str]) -> None:
        for ns in self.ns.values():
            subprocess.run(
                ["tc", "-n", ns, "qdisc", "replace", "dev", self.dev, "root", "netem", *args],
                capture_output=True,
                timeout=10,
                check=True,
            )
        self.shaped = True

    def set_delay(self, ms: float, jitter_ms: float = 0.0) -> None:
        self._need_netem()
        self._delay = (ms, jitter_ms)
        self._netem(self._netem_args())

    def set_loss(self, p: float) -> None:
        self._need_netem()
        self._loss = p
        self._netem(self._netem_args())

    def _netem_args(self) -> list[str]:
        ms, jit = self._delay
        loss = self._loss
        args = ["delay", f"{ms:.0f}ms", f"{jit:.0f}ms"] if ms or jit else []
        if loss:
            args += ["loss", f"{loss * 100:.2f}%"]
        return args or ["delay", "0ms"]

    def heal_all(self) -> None:
        self._apply_cuts(())
        if self.shaped:
            for ns in self.ns.values():
                subprocess.run(
                    ["tc", "-n", ns, "qdisc", "del", "dev", self.dev, "root"], capture_output=True, timeout=10
                )
            self.shaped = False
            self._delay, self._loss = (0.0, 0.0), 0.0

    def close(self) -> None:
        """Delete the namespaces (and with them the veths) and the bridge. Nodes must be gone."""
        for kind, name in reversed(self._created):
            with contextlib.suppress(Exception):
                if kind == "ns":
                    _ip("netns", "del", name, check=False)
                else:
                    _ip("link", "del", name, check=False)
        self._created.clear()
