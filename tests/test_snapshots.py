"""Log compaction and snapshots with real processes: wiped, partitioned and interrupted followers."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from kvstore.cluster import procs
from kvstore.config import ClusterConfig
from kvstore.drills.proxy import ProxyMesh
from kvstore.local.client import Client

from clusterutil import client, digest, leader, running_cluster, status, wait_until


def small_snapshots(cfg: ClusterConfig) -> ClusterConfig:
    return dataclasses.replace(cfg, raft=dataclasses.replace(cfg.raft, snapshot_entries=200))


def fill(d: Path, node: str, n: int, prefix: str = "k", size: int = 100) -> None:
    with Client(str(d / node / "kv.sock"), timeout=30) as c:  # one SET each: one log entry each
        for i in range(0, n, 100):
            c.pipeline([(b"SET", f"{prefix}{j:06d}".encode(), (f"{j}-" * size)[:size].encode())
                        for j in range(i, min(n, i + 100))])


def same_as_leader(d: Path, node: str) -> bool:
    return digest(d, node) == digest(d, leader(d))


def test_a_wiped_follower_comes_back_through_a_snapshot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, edit=small_snapshots) as d:
        ld = leader(d)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        fill(d, ld, 3000)
        wait_until(lambda: next(r for r in status(d)["nodes"] if r["name"] == ld)["snapshot_index"] > 0,
                   what="the leader to compact its log")
        procs.stop_node(d, f)
        shutil.rmtree(d / f / "data")
        procs.spawn(d, d / "cluster.toml", f)
        fill(d, ld, 500, prefix="during")  # the cluster keeps serving writes meanwhile
        wait_until(lambda: same_as_leader(d, f), timeout=60, what="the wiped follower to match the leader")
        assert digest(d, f)[0] == 3500
        log = (d / f / "node.log").read_text()
        assert "installed snapshot" in log
        # it lost its vote with its data: it voted again only after hearing from a leader
        assert "no votes until a leader is heard" in log and "voting again" in log


def test_a_partitioned_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    meshes: list[ProxyMesh] = []

    def env_for(cfg: ClusterConfig) -> dict[str, dict[str, str]]:
        meshes.append(ProxyMesh({n.name: n.grpc_address for n in cfg.nodes}, seed=2))
        return {n.name: meshes[0].node_env(n.name) for n in cfg.nodes}

    try:
        with running_cluster(tmp_path, env_for=env_for, edit=small_snapshots) as d:
            ld = leader(d)
            f = next(n for n in ("n1", "n2", "n3") if n != ld)
            # reset, not blackhole: a blackholed TCP link delivers what it held once healed
            # (as a real network does), which could replay the whole log to the follower
            meshes[0].isolate(f, mode="reset")
            # write until the leader has compacted well past everything the follower holds
            for round_ in range(20):
                fill(d, ld, 1000, prefix=f"r{round_}-")
                rows = {r["name"]: r for r in status(d)["nodes"]}
                if rows[ld]["snapshot_index"] > (rows[f]["last_index"] or 0) + 3000:
                    break
            else:
                raise AssertionError("the leader never compacted past the partitioned follower")
            meshes[0].heal_all()
            wait_until(lambda: same_as_leader(d, f), timeout=60, what="the partitioned follower to catch up")
            assert "installed snapshot" in (d / f / "node.log").read_text()
            assert client(d, f).get("r0-000999") is not None
    finally:
        for m in meshes:
            m.close()


def test_an_interrupted_snapshot_leaves_the_old_state_and_a_retry_completes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, edit=small_snapshots) as d:
        ld = leader(d)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        fill(d, ld, 300, prefix="old")
        wait_until(lambda: digest(d, f)[0] == 300, what="the follower to have the first keys")
        old = digest(d, f)
        procs.stop_node(d, f)
        fill(d, ld, 6000, prefix="big", size=2000)  # ~12 MB: the transfer takes a while
        procs.spawn(d, d / "cluster.toml", f)
        # kill the receiver in the middle of the stream
        wait_until(lambda: (d / f / "snapshot.partial").exists(), timeout=60, what="a snapshot transfer to start")
        procs.stop_node(d, f, force=True)
        assert not (d / f / "kv.sock").exists()
        # its state is the old, consistent one: start it with no peers to look at it
        procs.spawn(d, d / "cluster.toml", f)
        wait_until(lambda: same_as_leader(d, f), timeout=90, what="the retried snapshot to complete")
        assert digest(d, f)[0] == 6300 and digest(d, f) != old
