"""What `kvstore bench cluster` runs against, each started and stopped by the benchmark.

- ours: a 3-node kvstore cluster in a temp dir (kvstore.cluster.manage create/up/down);
- redis: redis-server on a temp UNIX socket, nothing persisted;
- redis-aof: the same with appendonly yes + appendfsync always (durable, like us);
- etcd: 3 etcd members on loopback, driven through etcd's own gRPC KV API.

Each has patterns: (api, op) pairs the drivers know, with the endpoints to use.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.bench.workers import BenchError


@dataclass
class Pattern:
    api: str  # "RESP" or "gRPC"
    op: str  # "get", "get_local", "set"
    label: str  # what the table says
    spec: dict[str, Any] = field(default_factory=dict)


class Target:
    name = ""
    title = ""

    def unavailable(self) -> str | None:
        return None

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def patterns(self) -> list[Pattern]:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return []

    def preload_spec(self) -> dict[str, Any]:
        """A spec whose "set" writes the keys the reads will find."""
        return self.patterns()[-1].spec

    def pipeline_socket(self) -> str | None:
        """A UNIX socket for redis-benchmark's pipelined SETs, if this target speaks RESP."""
        return None

    def writes_applied(self) -> int | None:
        """A counter of writes that took effect (to check a pipelined run), if known."""
        return None


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise BenchError(f"{what} did not come up within {timeout:.0f}s" + (f": {last}" if last else ""))


def _stop_popen(p: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


class Ours(Target):
    name = "kvstore"
    title = "kvstore (3 nodes)"

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.sockets: list[str] = []
        self.grpc: list[str] = []
        self._pids: list[int] = []

    def start(self, workdir: Path) -> None:
        from kvstore.cluster import manage

        self.dir = workdir / "kvstore"
        manage.create(self.dir, 3, None)
        manage.up(self.dir, 3, None, timeout=60)

        def all_serving() -> bool:
            assert self.dir is not None
            st = manage.status(self.dir)
            ok = st["leader"] is not None and all(n["role"] in ("leader", "follower") for n in st["nodes"])
            if ok:
                self.sockets = [n["socket"] for n in st["nodes"]]
                self.grpc = [n["grpc"] for n in st["nodes"]]
                self._pids = [n["pid"] for n in st["nodes"]]
            return ok

        _wait("the kvstore cluster", all_serving, 60)
        if manage.load(self.dir).tls.enabled:
            raise BenchError("the benchmark's cluster has TLS on; it drives plain gRPC")

    def stop(self) -> None:
        if self.dir is not None and (self.dir / "cluster.toml").exists():
            from kvstore.cluster import manage

            manage.down(self.dir)

    def pids(self) -> list[int]:
        return self._pids

    def patterns(self) -> list[Pattern]:
        resp = {"kind": "resp", "endpoints": self.sockets}
        kv = {"kind": "kv", "endpoints": self.grpc}
        return [
            Pattern("RESP", "get", "GET (linearizable)", {**resp, "op": "get"}),
            Pattern("RESP", "get_local", "GET after READONLY (local)", {**resp, "op": "get_local"}),
            Pattern("RESP", "set", "SET", {**resp, "op": "set"}),
            Pattern("gRPC", "get", "KV.Get LINEARIZABLE", {**kv, "op": "get"}),
            Pattern("gRPC", "get_local", "KV.Get LOCAL", {**kv, "op": "get_local"}),
            Pattern("gRPC", "set", "KV.Put", {**kv, "op": "set"}),
        ]

    def preload_spec(self) -> dict[str, Any]:
        return {"kind": "resp", "endpoints": self.sockets, "op": "set"}

    def pipeline_socket(self) -> str | None:
        """The leader's socket: pipelined writes there need no forwarding."""
        from kvstore.cluster import manage

        assert self.dir is not None
        st = manage.status(self.dir)
        return next((n["socket"] for n in st["nodes"] if n["name"] == st["leader"]), None)

    def writes_applied(self) -> int:
        """How many writes really took effect: the commands the nodes applied (a log
        entry may hold a batch of them)."""
        from kvstore.cluster import manage

        assert self.dir is not None
        st = manage.status(self.dir)
        return max(int(n.get("applied_writes") or 0) for n in st["nodes"])


class Redis(Target):
    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self.name = "redis-aof" if durable else "redis"
        self.title = "redis-server, AOF fsync always" if durable else "redis-server, no persistence"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = ""

    def unavailable(self) -> str | None:
        return None if shutil.which("redis-server") else "redis-server is not installed"

    def start(self, workdir: Path) -> None:
        d = workdir / self.name
        d.mkdir(parents=True, exist_ok=True)
        self.sock = str(d / "redis.sock")
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args = ["redis-server", "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--save", "", "--dir", str(d), "--daemonize", "no", "--maxclients", "1024", *persist]
        with open(d / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

        def pong() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"redis-server exited ({self.proc.returncode}); see {d}/redis.log")
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.sock)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        _wait("redis-server", pong, 20)

    def stop(self) -> None:
        _stop_popen(self.proc)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def pipeline_socket(self) -> str | None:
        return self.sock

    def patterns(self) -> list[Pattern]:
        spec = {"kind": "resp", "endpoints": [self.sock]}
        pats = [Pattern("RESP", "set", "SET", {**spec, "op": "set"})]
        if not self.durable:  # reads are the same whatever the persistence
            pats.insert(0, Pattern("RESP", "get", "GET", {**spec, "op": "get"}))
        return pats


class Etcd(Target):
    name = "etcd"
    title = "etcd (3 members)"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[str] = []

    def unavailable(self) -> str | None:
        return None if shutil.which("etcd") else "etcd is not installed (Debian: etcd-server)"

    def start(self, workdir: Path) -> None:
        from kvstore.cluster.manage import free_port

        d = workdir / "etcd"
        d.mkdir(parents=True, exist_ok=True)
        names = ["e1", "e2", "e3"]
        peer = {n: f"http://127.0.0.1:{free_port()}" for n in names}
        client = {n: f"127.0.0.1:{free_port()}" for n in names}
        initial = ",".join(f"{n}={u}" for n, u in peer.items())
        token = "kvbench-" + secrets.token_hex(4)
        for n in names:
            args = ["etcd", "--name", n, "--data-dir", str(d / n),
                    "--listen-client-urls", f"http://{client[n]}", "--advertise-client-urls", f"http://{client[n]}",
                    "--listen-peer-urls", peer[n], "--initial-advertise-peer-urls", peer[n],
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", token, "--logger", "zap", "--log-level", "warn"]
            with open(d / f"{n}.log", "ab") as log:
                self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        self.clients = [client[n] for n in names]
        _wait("the etcd cluster", lambda: self._healthy(d), 60)

    def _healthy(self, d: Path) -> bool:
        import grpc

        from kvstore.bench.cluster import etcdkv

        for p in self.procs:
            if p.poll() is not None:
                raise BenchError(f"etcd exited ({p.returncode}); see {d}/*.log")
        m = etcdkv.messages()
        for ep in self.clients:
            with grpc.insecure_channel(ep) as ch:
                _, put = etcdkv.stubs(ch)
                put(m["PutRequest"](key=b"kvbench:probe", value=b"1"), timeout=2)
        return True

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            _stop_popen(p)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def patterns(self) -> list[Pattern]:
        spec = {"kind": "etcd", "endpoints": self.clients}
        return [
            Pattern("gRPC", "get", "Range (linearizable)", {**spec, "op": "get"}),
            Pattern("gRPC", "get_local", "Range serializable (local)", {**spec, "op": "get_local"}),
            Pattern("gRPC", "set", "Put", {**spec, "op": "set"}),
        ]
