"""The cluster definition: a TOML file naming every node and the settings they share.

`cluster/local.toml` is the commented reference. A node finds itself in the file by
name; everything it needs to reach its peers is here, so the same file serves every
host. Paths that are not absolute are relative to the data directory (`--dir`).
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kvstore.errors import UsageError


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0
    socket: str = ""  # default DIR/<name>/kv.sock
    initial: bool = True  # a voter from the start; false for a node that joins with `cluster add-node`

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class RaftSettings:
    tick_ms: int = 10  # one logical clock tick of the Raft core
    heartbeat_ticks: int = 3  # leader heartbeat every 30 ms
    election_ticks: int = 20  # follower waits 200-400 ms (randomized) before an election
    max_inflight: int = 64  # AppendEntries in flight per follower (pipelining)
    max_entries_per_msg: int = 1024
    max_bytes_per_msg: int = 4 << 20
    max_uncommitted: int = 20000
    request_timeout_ms: int = 5000  # how long a client write or read may wait
    snapshot_entries: int = 100_000  # compact the log after this many applied log entries (a batch of writes is one)
    # ... or once the applied log holds this many bytes: a batch entry holds up to 1,024
    # writes, so entries alone do not bound the log's memory and disk
    snapshot_bytes: int = 32 << 20


@dataclass(frozen=True)
class LimitSettings:
    max_key: int = 511
    max_value: int = 1 << 20
    max_clients: int = 1024
    max_pipeline: int = 20000
    grpc_max_message: int = 8 << 20


@dataclass(frozen=True)
class StorageSettings:
    map_size_mb: int = 64  # initial LMDB map; it grows as data grows
    max_map_size_mb: int = 0  # 0: no limit but the disk
    sync: bool = True  # fsync every commit; off only for throwaway benchmarks


@dataclass(frozen=True)
class CacheSettings:
    size_mb: int = 64
    max_value: int = 4096  # larger values are read from LMDB


@dataclass(frozen=True)
class LocalSettings:
    socket_mode: int = 0o600
    workers: int = 0  # extra RESP worker processes sharing the socket and the cache


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"  # debug, info, warning, error; `node run --log-level` overrides
    format: str = "text"  # text, or json: one object per line; `--log-format` overrides


@dataclass(frozen=True)
class TLSSettings:
    enabled: bool = False
    ca: str = "certs/ca.pem"
    cert: str = "certs/{node}.pem"  # {node} is replaced by the node's name
    key: str = "certs/{node}.key"


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "local"
    id: str = ""
    nodes: tuple[NodeConfig, ...] = ()
    raft: RaftSettings = field(default_factory=RaftSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    log: LogSettings = field(default_factory=LogSettings)
    path: str = ""  # where it was read from

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UsageError(f"node {name!r} is not in {self.path or 'the cluster config'} "
                         f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def with_id(self) -> ClusterConfig:
        return self if self.id else replace(self, id=uuid.uuid4().hex)


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise UsageError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise UsageError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))}")
    vals = dict(raw)
    defaults = {f.name: f.default for f in fields(cls)}
    if "socket_mode" in vals and isinstance(vals["socket_mode"], str):
        vals["socket_mode"] = int(vals["socket_mode"], 8)
    for k, v in vals.items():
        want = str if k == "name" else type(defaults[k])
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise UsageError(f"[{where}] {k} must be {want.__name__}, not {v!r}")
    return cls(**vals)


def parse(text: str, path: str = "") -> ClusterConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path or 'config'}: not valid TOML: {e}") from None
    cl = raw.get("cluster", {})
    nodes_raw = raw.get("nodes", [])
    if not isinstance(nodes_raw, list):
        raise UsageError("[[nodes]] must be an array of tables")
    nodes = []
    for i, n in enumerate(nodes_raw):
        if "name" not in n:
            raise UsageError(f"[[nodes]] entry {i + 1} has no name")
        nodes.append(_section(NodeConfig, n, f"nodes.{n['name']}"))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise UsageError("node names must be unique")
    unknown = set(raw) - {"cluster", "nodes", "raft", "limits", "storage", "cache", "local", "tls", "log"}
    if unknown:
        raise UsageError(f"unknown section(s): {', '.join(sorted(unknown))}")
    return ClusterConfig(
        name=str(cl.get("name", "local")),
        id=str(cl.get("id", "")),
        nodes=tuple(nodes),
        raft=_section(RaftSettings, raw.get("raft"), "raft"),
        limits=_section(LimitSettings, raw.get("limits"), "limits"),
        storage=_section(StorageSettings, raw.get("storage"), "storage"),
        cache=_section(CacheSettings, raw.get("cache"), "cache"),
        local=_section(LocalSettings, raw.get("local"), "local"),
        tls=_section(TLSSettings, raw.get("tls"), "tls"),
        log=_section(LogSettings, raw.get("log"), "log"),
        path=path,
    )


def load(path: str | Path) -> ClusterConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"cannot read cluster config {p}: {e.strerror}") from None
    return parse(text, str(p))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump(cfg: ClusterConfig) -> str:
    """Write a config back as TOML (what `cluster up` stores in DIR/cluster.toml)."""
    out = ["# Written by kvstore; edit with care: every node of the cluster reads it.", "",
           "[cluster]", f"name = {_toml_value(cfg.name)}", f"id = {_toml_value(cfg.id)}", ""]
    for sec in ("raft", "limits", "storage", "cache", "local", "tls", "log"):
        obj = getattr(cfg, sec)
        out.append(f"[{sec}]")
        for f in fields(obj):
            v = getattr(obj, f.name)
            out.append(f'{f.name} = "{v:o}"' if f.name == "socket_mode" else f"{f.name} = {_toml_value(v)}")
        out.append("")
    for n in cfg.nodes:
        out.append("[[nodes]]")
        for f in fields(n):
            v = getattr(n, f.name)
            if f.name == "socket" and not v:
                continue
            out.append(f"{f.name} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)
