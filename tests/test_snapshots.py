"""Log compaction and snapshots with real processes: wiped, partitioned and interrupted followers,
and streams resumed after a break (in-process cases: test_snapshot_resume.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from kvstore import snapshots
from kvstore.cluster import procs
from kvstore.config import ClusterConfig
from kvstore.drills.proxy import ProxyMesh
from kvstore.local.client import Client
from kvstore.snapshots import Partial
from kvstore.storage import Store

from clusterutil import client, digest, leader, running_cluster, status, wait_until


def small_snapshots(cfg: ClusterConfig) -> ClusterConfig:
    return dataclasses.replace(cfg, raft=dataclasses.replace(cfg.raft, snapshot_entries=200))


def fill(d: Path, node: str, n: int, prefix: str = "k", size: int = 100) -> None:
    # A leader puts the writes that arrive together into one log entry: pipelines of 5
    # make n / 5 entries, enough for the leader to compact (snapshot_entries above).
    with Client(str(d / node / "kv.sock"), timeout=30) as c:
        for i in range(0, n, 5):
            c.pipeline([(b"SET", f"{prefix}{j:06d}".encode(), (f"{j}-" * size)[:size].encode())
                        for j in range(i, min(n, i + 5))])


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


def test_the_log_is_compacted_by_its_bytes_when_entries_are_few_and_large(tmp_path: Path) -> None:
    # A batch entry holds up to 1,024 writes: counting entries alone would let the log
    # (in memory and in LMDB) grow far past what snapshot_entries suggests.
    def by_bytes(cfg: ClusterConfig) -> ClusterConfig:
        return dataclasses.replace(cfg, raft=dataclasses.replace(
            cfg.raft, snapshot_entries=1_000_000, snapshot_bytes=256 << 10))

    with running_cluster(tmp_path, edit=by_bytes) as d:
        ld = leader(d)
        fill(d, ld, 2000, size=1000)  # ~2 MB of log in a few hundred entries
        wait_until(lambda: all(r["snapshot_index"] > 0 and r["applied_index"] == r["last_index"]
                               for r in status(d)["nodes"]), what="every node to compact its log")
        for r in status(d)["nodes"]:
            # every entry holds at least one 1,000-byte value: at most ~256 KiB of them stay
            assert r["log_length"] <= 270, r
            assert r["snapshot_index"] >= r["last_index"] - 270, r
            assert "compacted the log up to" in (d / r["name"] / "node.log").read_text()
        assert digest(d, "n1") == digest(d, "n2") == digest(d, "n3")


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


# The sender sleeps after each 1 MiB chunk, so that a test can interrupt a stream midway.
SLOW = {snapshots.CHUNK_DELAY_ENV: "0.1"}


def slow_senders(cfg: ClusterConfig) -> dict[str, dict[str, str]]:
    return {n.name: SLOW for n in cfg.nodes}


def kept(d: Path, node: str) -> dict[str, Any]:
    """The sidecar of the bytes a node holds of a snapshot stream ({} if none)."""
    try:
        return dict(json.loads((d / node / Partial.SIDECAR).read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def digest_on_disk(d: Path, node: str) -> tuple[int, str]:
    """clusterutil.digest of a stopped node, read from its LMDB files."""
    h = hashlib.sha256()
    n = 0
    store = Store(d / node / "data", readonly=True)
    try:
        with store.read_txn_snapshot() as (_, items):
            for k, v in items:
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
                n += 1
    finally:
        store.close()
    return n, h.hexdigest()


def start_snapshot_to_a_lagging_follower(d: Path) -> tuple[str, str, tuple[int, str]]:
    """Leave a follower behind the leader's compacted log and restart it: the leader streams
    it an ~8 MB snapshot, slowly. Returns (leader, follower, the follower's old digest)."""
    ld = leader(d)
    f = next(n for n in ("n1", "n2", "n3") if n != ld)
    fill(d, ld, 300, prefix="old")
    wait_until(lambda: digest(d, f)[0] == 300, what="the follower to have the first keys")
    old = digest(d, f)
    procs.stop_node(d, f)
    fill(d, ld, 800, prefix="big", size=10_000)
    procs.spawn(d, d / "cluster.toml", f, extra_env=SLOW)
    # part of the stream is on the follower's disk (it records only what it flushed)
    wait_until(lambda: kept(d, f).get("length", 0) > 0, timeout=60, what="a snapshot stream to be half-way")
    return ld, f, old


def test_a_receiver_killed_mid_snapshot_keeps_its_old_state_and_resumes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, env_for=slow_senders, edit=small_snapshots) as d:
        ld, f, old = start_snapshot_to_a_lagging_follower(d)
        procs.stop_node(d, f, force=True)
        assert not (d / f / "kv.sock").exists()
        held = kept(d, f)
        assert digest_on_disk(d, f) == old  # its state is the old, consistent one
        procs.spawn(d, d / "cluster.toml", f, extra_env=SLOW)
        wait_until(lambda: same_as_leader(d, f), timeout=90, what="the resumed snapshot to complete")
        assert digest(d, f)[0] == 1100 and digest(d, f) != old
        sid, offset = held["id"], held["length"]
        assert f"resumed snapshot {sid} from {ld} at offset {offset} " in (d / f / "node.log").read_text()
        assert f"resumed snapshot {sid} to {f} at offset {offset} " in (d / ld / "node.log").read_text()
        assert kept(d, f) == {} and not (d / f / Partial.DATA).exists()


def test_a_sender_killed_mid_snapshot_leaves_the_old_state_and_the_next_leader_starts_over(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path, env_for=slow_senders, edit=small_snapshots) as d:
        ld, f, old = start_snapshot_to_a_lagging_follower(d)
        first = kept(d, f)["id"]
        procs.stop_node(d, ld, force=True)
        assert digest(d, f) == old  # still serving its old state: a new leader is yet to stream
        new: str = wait_until(lambda: (status(d)["leader"] or ld) != ld and status(d)["leader"], timeout=30,
                              what="a new leader")
        wait_until(lambda: digest(d, f) == digest(d, new), timeout=90, what="the new leader's snapshot")
        assert digest(d, f)[0] == 1100
        log = (d / f / "node.log").read_text()
        assert f"bytes of snapshot {first} from {ld}: {new} sends snapshot " in log
        assert f"installed snapshot {first}" not in log and "resumed snapshot" not in log
        procs.spawn(d, d / "cluster.toml", ld)  # clears what the killed node left; stopped cleanly below
        wait_until(lambda: same_as_leader(d, ld), timeout=60, what="the old leader to catch up")
