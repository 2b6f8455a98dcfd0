"""Replication with real processes: a 3-node cluster on loopback, faults by signal and proxy."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from kvstore.cluster import procs
from kvstore.config import ClusterConfig
from kvstore.drills.proxy import ProxyMesh

from clusterutil import client, leader, running_cluster, sock, status, wait_until


def test_writes_at_a_follower_are_read_linearizably_everywhere(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        ld = leader(d)
        followers = [n for n in ("n1", "n2", "n3") if n != ld]
        for i in range(20):
            assert client(d, followers[i % 2]).set(f"k{i}", f"v{i}") is True
            for n in ("n1", "n2", "n3"):  # the very next read, anywhere, sees it
                assert client(d, n).get(f"k{i}") == f"v{i}".encode()
        c = client(d, followers[0])
        assert c.set("swap", "a", get=True) is None
        assert c.set("swap", "b", get=True) == b"a"
        assert c.set("swap", "c", nx=True) is None
        assert client(d, ld).get("swap") == b"b"


def test_pipelines_through_a_follower_keep_their_order_and_read_their_writes(tmp_path: Path) -> None:
    """Forwarded writes travel in batches (kvstore/forward.py): the next batch leaves once
    the leader answered the last, while this node waits to apply it. Several clients
    pipeline SET ... GET chains through one follower (so each reply names the value
    before it: any reordering breaks the chain), and each client's next local read on
    that follower sees its last write."""
    import threading

    from kvstore.local.client import Client

    with running_cluster(tmp_path) as d:
        ld = leader(d)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        errors: list[str] = []

        def chain(c: int) -> None:
            try:
                r = client(d, f, timeout=30)
                p = r.pipeline(transaction=False)
                for i in range(600):
                    p.set(f"chain{c}", str(i), get=True)
                got = p.execute()
                want = [None] + [str(i).encode() for i in range(599)]
                if got != want:
                    bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
                    errors.append(f"client {c}: reply {bad} is {got[bad]!r}, not {want[bad]!r}")
                with Client(sock(d, f), readonly=True) as local:
                    if local.get(f"chain{c}") != b"599":
                        errors.append(f"client {c}: a local read on {f} missed its last write")
                    for i in range(30):  # one write at a time, each read back locally at once
                        r.set(f"one{c}", str(i))
                        if local.get(f"one{c}") != str(i).encode():
                            errors.append(f"client {c}: a local read on {f} missed write {i}")
                            break
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"client {c}: {e!r}")

        threads = [threading.Thread(target=chain, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for c in range(4):
            assert client(d, ld).get(f"chain{c}") == b"599"


def test_killing_the_leader_elects_another_and_writes_resume(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        old = leader(d)
        survivor = next(n for n in ("n1", "n2", "n3") if n != old)
        client(d, survivor).set("before", "1")
        procs.stop_node(d, old, force=True)
        new = wait_until(lambda: (lambda ld: ld if ld and ld != old else None)(status(d)["leader"]),
                         what="a new leader")
        assert new != old
        c = client(d, survivor)
        wait_until(lambda: c.set("after", "2"), what="a write after failover")
        assert c.get("before") == b"1" and c.get("after") == b"2"
        # the old leader comes back as a follower and catches up
        procs.spawn(d, d / "cluster.toml", old)
        wait_until(lambda: client(d, old).execute_command("READONLY") and client(d, old).get("after") == b"2",
                   what="the restarted node to catch up")
        oc = client(d, old)
        oc.execute_command("READONLY")
        wait_until(lambda: oc.get("after") == b"2", what="catch-up visible in local reads")


def test_a_restarted_follower_catches_up_on_missed_writes(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        ld = leader(d)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        procs.stop_node(d, f)
        c = client(d, ld)
        for i in range(200):
            c.set(f"m{i}", str(i))
        procs.spawn(d, d / "cluster.toml", f)
        fc = client(d, f)
        wait_until(lambda: fc.execute_command("READONLY") == b"OK" or True)
        wait_until(lambda: fc.get("m199") == b"199", what="the follower to catch up")
        assert [fc.get(f"m{i}") for i in range(0, 200, 37)] == [str(i).encode() for i in range(0, 200, 37)]


def test_a_node_cut_off_rejoins_without_deposing_the_leader(tmp_path: Path) -> None:
    meshes: list[ProxyMesh] = []

    def env_for(cfg: ClusterConfig) -> dict[str, dict[str, str]]:
        meshes.append(ProxyMesh({n.name: n.grpc_address for n in cfg.nodes}, seed=1))
        return {n.name: meshes[0].node_env(n.name) for n in cfg.nodes}

    try:
        with running_cluster(tmp_path, env_for=env_for) as d:
            mesh = meshes[0]
            ld = leader(d)
            term = max(r["term"] for r in status(d)["nodes"] if r["term"] is not None)
            f = next(n for n in ("n1", "n2", "n3") if n != ld)
            mesh.isolate(f)
            c = client(d, ld)
            for i in range(20):  # the majority keeps serving
                c.set(f"p{i}", "x")
            time.sleep(1.5)  # several election timeouts for the cut-off node: let it try
            mesh.heal_all()
            fc = client(d, f)
            fc.execute_command("READONLY")
            wait_until(lambda: fc.get("p19") == b"x", what="the node to rejoin and catch up")
            st = status(d)
            assert st["leader"] == ld, "the rejoining node deposed the leader"
            assert max(r["term"] for r in st["nodes"] if r["term"] is not None) == term
    finally:
        for m in meshes:
            m.close()


def test_minority_cannot_write_and_says_tryagain_or_unknown(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        ld = leader(d)
        others = [n for n in ("n1", "n2", "n3") if n != ld]
        for n in others:
            pid = procs.live_pid(d, n)
            assert pid
            procs.signal_node(pid, signal.SIGSTOP)
        try:
            c = redis.Redis(unix_socket_path=str(d / ld / "kv.sock"), socket_timeout=30)
            with pytest.raises(redis.ResponseError) as ei:
                c.set("lonely", "x")
            assert str(ei.value).split()[0] in ("UNKNOWN", "TRYAGAIN")
        finally:
            for n in others:
                pid = procs.live_pid(d, n)
                if pid:
                    procs.signal_node(pid, signal.SIGCONT)


def test_resp_workers_share_the_socket_and_forward_writes(tmp_path: Path) -> None:
    import dataclasses

    def two_workers(cfg: ClusterConfig) -> ClusterConfig:
        return dataclasses.replace(cfg, local=dataclasses.replace(cfg.local, workers=2))

    with running_cluster(tmp_path, edit=two_workers) as d:
        ld = leader(d)
        pids = set()
        for i in range(30):  # new connections land on the node process or a worker
            c = client(d, ld)
            assert c.set(f"w{i}", str(i))
            info = c.info()
            pids.add(info.get("worker_pid", info.get("process_id")))
            for n in ("n1", "n2", "n3"):
                assert client(d, n).get(f"w{i}") == str(i).encode()
        assert len(pids) >= 2, f"every connection was served by one process: {pids}"
        from kvstore.local.client import Client

        with Client(str(d / ld / "kv.sock"), local=True) as lc:  # the shared-memory fast path
            assert lc.get("w7") == b"7"


def test_a_follower_catches_up_on_megabytes_of_log(tmp_path: Path) -> None:
    """Many large entries in flight at once must not exceed the gRPC message limit (regression)."""
    from kvstore.local.client import Client

    with running_cluster(tmp_path) as d:
        ld = leader(d)
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        procs.stop_node(d, f)
        with Client(str(d / ld / "kv.sock"), timeout=30) as c:
            for i in range(120):  # 120 entries of ~100 KB: 12 MB of log
                c.mset([(f"big{i}-{j}".encode(), b"x" * 1000) for j in range(100)])
        t0 = time.monotonic()
        procs.spawn(d, d / "cluster.toml", f)
        fc = client(d, f)
        fc.execute_command("READONLY")
        wait_until(lambda: fc.get("big119-99") == b"x" * 1000, timeout=60, what="the follower to catch up")
        assert time.monotonic() - t0 < 30
