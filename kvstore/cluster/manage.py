"""A local cluster under one data directory: create, start, stop, look at.

DIR/cluster.toml is the cluster's definition (written once, by `cluster up`, with a
fresh cluster id and the ports it picked); every node and every later command reads it.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Any

import grpc

from kvstore import config as cfgmod
from kvstore.cluster import procs
from kvstore.config import ClusterConfig, NodeConfig
from kvstore.errors import KVError, Unavailable, UsageError
from kvstore.rpc.pb import kv_pb2, kv_pb2_grpc


def config_path(data_dir: Path) -> Path:
    return data_dir / "cluster.toml"


def load(data_dir: Path) -> ClusterConfig:
    p = config_path(data_dir)
    if not p.exists():
        raise UsageError(f"no cluster in {data_dir} (no cluster.toml); start one with `kvstore cluster up`")
    return cfgmod.load(p)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_config(n: int) -> ClusterConfig:
    return ClusterConfig(nodes=tuple(NodeConfig(name=f"n{i + 1}") for i in range(n)))


def create(data_dir: Path, nodes: int, config: Path | None) -> ClusterConfig:
    """Write DIR/cluster.toml for a new cluster (fresh id, free ports for every port 0)."""
    if nodes < 1:
        raise UsageError("--nodes must be at least 1")
    base = cfgmod.load(config) if config else default_config(nodes)
    if config is None and nodes != len(base.nodes):
        base = dataclasses.replace(base, nodes=default_config(nodes).nodes)
    fixed = []
    for nd in base.nodes:
        fixed.append(dataclasses.replace(
            nd, grpc_port=nd.grpc_port or free_port(nd.host),
            metrics_port=nd.metrics_port or free_port(nd.host)))
    cfg = dataclasses.replace(base, nodes=tuple(fixed), path=str(config_path(data_dir))).with_id()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path(data_dir).write_text(cfgmod.dump(cfg))
    return cfgmod.load(config_path(data_dir))


def admin_stub(cfg: ClusterConfig, data_dir: Path, node: NodeConfig) -> tuple[grpc.Channel, kv_pb2_grpc.AdminStub]:
    from kvstore.tls import client_channel

    ch = client_channel(cfg, data_dir, node.grpc_address, node.name)
    return ch, kv_pb2_grpc.AdminStub(ch)


def node_status(data_dir: Path, cfg: ClusterConfig, node: NodeConfig, timeout: float = 1.0) -> dict[str, Any]:
    pid = procs.live_pid(data_dir, node.name)
    row: dict[str, Any] = {
        "name": node.name, "pid": pid, "alive": pid is not None, "role": "down", "term": None,
        "commit_index": None, "applied_index": None, "leader": None,
        "socket": str(Path(node.socket) if node.socket else (data_dir / node.name / "kv.sock").resolve()),
        "grpc": node.grpc_address, "metrics": f"http://{node.host}:{node.metrics_port}/metrics",
        "paused": bool(pid and procs.is_paused(pid)),
    }
    if pid is None or row["paused"]:
        return row
    ch, stub = admin_stub(cfg, data_dir, node)
    try:
        s = stub.Status(kv_pb2.StatusRequest(), timeout=timeout)
    except grpc.RpcError:
        row["role"] = "starting"
        return row
    finally:
        ch.close()
    row.update(role=s.role, term=s.term, commit_index=s.commit_index, applied_index=s.applied_index,
               leader=s.leader or None, last_index=s.last_index, snapshot_index=s.snapshot_index,
               log_length=s.log_length, voters=list(s.voters), learners=list(s.learners),
               applied_writes=s.applied_writes)
    if s.metrics:
        row["metrics"] = s.metrics
    return row


def status(data_dir: Path, cfg: ClusterConfig | None = None) -> dict[str, Any]:
    cfg = cfg or load(data_dir)
    rows = [node_status(data_dir, cfg, n) for n in cfg.nodes]
    leaders = [r["name"] for r in rows if r["role"] == "leader"]
    # Two nodes may both think they lead for a moment (an old leader cut off); the higher term wins.
    leader = max(leaders, key=lambda n: next(r["term"] for r in rows if r["name"] == n)) if leaders else None
    return {"cluster_id": cfg.id, "leader": leader, "nodes": rows}


def wait_for_leader(data_dir: Path, cfg: ClusterConfig, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st = status(data_dir, cfg)
    while time.monotonic() < deadline:
        if st["leader"] is not None:
            return st
        time.sleep(0.1)
        st = status(data_dir, cfg)
    raise Unavailable(f"no leader elected within {timeout:.0f}s; see the logs in {data_dir}/*/node.log")


def up(data_dir: Path, nodes: int, config: Path | None, timeout: float = 20.0) -> tuple[dict[str, Any], list[str]]:
    """Start every node that is not running; returns the status and the names started."""
    cfg = load(data_dir) if config_path(data_dir).exists() else create(data_dir, nodes, config)
    started = []
    for n in cfg.nodes:
        if procs.live_pid(data_dir, n.name) is None:
            procs.cleanup_node(data_dir, n.name, cfg)
            procs.spawn(data_dir, config_path(data_dir), n.name)
            started.append(n.name)
    return wait_for_leader(data_dir, cfg, timeout), started


def down(data_dir: Path, grace: float = 5.0) -> list[str]:
    cfg = load(data_dir)
    pids = {}
    for n in cfg.nodes:
        pid = procs.live_pid(data_dir, n.name)
        if pid is not None:
            pids[n.name] = pid
    for pid in pids.values():
        procs.signal_node(pid, signal.SIGCONT)
        procs.signal_node(pid, signal.SIGTERM)
    left = procs.wait_gone(list(pids.values()), grace)
    for pid in left:
        procs.signal_node(pid, signal.SIGKILL)
    procs.wait_gone(left, 5.0)
    for n in cfg.nodes:
        procs.cleanup_node(data_dir, n.name, cfg)
    return sorted(pids)


def _admin_call(data_dir: Path, cfg: ClusterConfig, call: Any, timeout: float) -> Any:
    """Call an Admin RPC on the leader, following leadership changes until the deadline."""
    deadline = time.monotonic() + timeout
    last = "no leader"
    while time.monotonic() < deadline:
        st = status(data_dir, cfg)
        ld = st["leader"]
        if ld is None:
            time.sleep(0.1)
            continue
        ch, stub = admin_stub(cfg, data_dir, cfg.node(ld))
        try:
            return call(stub, max(1.0, deadline - time.monotonic()))
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                last = details
                time.sleep(0.1)
                continue
            raise KVError(f"{ld}: {details}") from None
        finally:
            ch.close()
    raise Unavailable(f"membership change did not complete: {last}")


def add_node(data_dir: Path, name: str, timeout: float = 90.0) -> tuple[list[str], list[str]]:
    """Add NAME to the cluster: define it, start it, join it as a learner, promote it."""
    cfg = load(data_dir)
    if any(n.name == name for n in cfg.nodes):
        node = cfg.node(name)
    else:
        host = cfg.nodes[0].host if cfg.nodes else "127.0.0.1"
        node = NodeConfig(name=name, host=host, grpc_port=free_port(host), metrics_port=free_port(host),
                          initial=False)
        cfg = dataclasses.replace(cfg, nodes=(*cfg.nodes, node))
        config_path(data_dir).write_text(cfgmod.dump(cfg))
    if procs.live_pid(data_dir, name) is None:
        procs.cleanup_node(data_dir, name, cfg)
        procs.spawn(data_dir, config_path(data_dir), name)
    r = _admin_call(data_dir, cfg, lambda stub, t: stub.AddNode(
        kv_pb2.MemberRequest(name=name, address=node.grpc_address), timeout=t), timeout)
    return list(r.voters), list(r.learners)


def remove_node(data_dir: Path, name: str, timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """Take NAME out of the cluster (a leader hands over first), stop it, retire its data."""
    cfg = load(data_dir)
    cfg.node(name)
    r = _admin_call(data_dir, cfg, lambda stub, t: stub.RemoveNode(
        kv_pb2.MemberRequest(name=name), timeout=t), timeout)
    procs.stop_node(data_dir, name)
    cfg = dataclasses.replace(cfg, nodes=tuple(n for n in cfg.nodes if n.name != name))
    config_path(data_dir).write_text(cfgmod.dump(cfg))
    home = data_dir / name
    if home.exists():  # a removed member's log must never rejoin as is
        home.rename(data_dir / f"{name}.removed-{int(time.time())}")
    return list(r.voters), list(r.learners)
