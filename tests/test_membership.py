"""Membership changes while clients write: 3 -> 5 -> 3 nodes, the leader removed too, no acknowledged write lost."""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from clusterutil import kv, leader, running_cluster, status, wait_until


class Writer(threading.Thread):
    """Writes unique values round-robin over whatever nodes exist; records what was acknowledged."""

    def __init__(self, d: Path, nodes: list[str]) -> None:
        super().__init__(daemon=True)
        self.d, self.nodes = d, nodes
        self.acked: dict[str, str] = {}
        self.later: dict[str, list[str]] = {}  # writes after the last ack whose outcome is unknown
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            node = self.nodes[i % len(self.nodes)]
            key, val = f"w{i % 50}", f"v{i}"
            try:
                c = redis.Redis(unix_socket_path=str(self.d / node / "kv.sock"), socket_timeout=10)
                if c.set(key, val):
                    self.acked[key] = val
                    self.later[key] = []
            except (redis.RedisError, OSError):
                self.errors += 1
                self.later.setdefault(key, []).append(val)
            i += 1


def test_grow_to_five_and_shrink_back_to_three_under_writes(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        w = Writer(d, ["n1", "n2", "n3"])
        w.start()
        try:
            for n in ("n4", "n5"):
                r = kv(d, "cluster", "add-node", n, timeout=120)
                assert r.returncode == 0, r.stderr
                assert f"added {n}" in r.stdout
            st = status(d)
            voters = next(x for x in st["nodes"] if x["name"] == st["leader"])["voters"]
            assert sorted(voters) == ["n1", "n2", "n3", "n4", "n5"]
            # remove the leader itself (it hands over first), then one more
            old = leader(d)
            for n in (old, "n5" if old != "n5" else "n4"):
                w.nodes = [x for x in w.nodes if x != n] or ["n4"]
                r = kv(d, "cluster", "remove-node", n, timeout=120)
                assert r.returncode == 0, r.stderr
            wait_until(lambda: status(d)["leader"] not in (None, old), what="a leader after the removals")
        finally:
            w.stop.set()
            w.join(30)
        st = status(d)
        live = [x["name"] for x in st["nodes"]]
        assert len(live) == 3 and old not in live
        voters = next(x for x in st["nodes"] if x["name"] == st["leader"])["voters"]
        assert sorted(voters) == sorted(live)
        assert len(w.acked) > 10
        c = redis.Redis(unix_socket_path=str(d / st["leader"] / "kv.sock"), socket_timeout=10)
        for k, v in w.acked.items():  # the last acknowledged value, or a later write that may have applied
            got = (c.get(k) or b"").decode()
            assert got == v or got in w.later.get(k, []), (k, got, v)
