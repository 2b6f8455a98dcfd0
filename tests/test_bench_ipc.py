"""`kvstore bench ipc` and `kvstore bench cluster`: every transport answers exactly what
was stored (so a broken one fails here, not as a fast wrong number), the quick benchmark
runs end to end, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posix_ipc
import pytest

from kvstore.bench.common import MISSING_KEY, Fd, dataset
from kvstore.bench.ipc import MECHANISMS
from kvstore.bench.ipc.base import Conn, Mechanism, WrongAnswer, verify
from kvstore.bench.ipc.runner import IpcOptions, Server

ROOT = Path(__file__).resolve().parent.parent
NKEYS = 64
AVAILABLE = [m for m in MECHANISMS if m.unavailable() is None]


def _local(arg: Any) -> Any:
    """Client args for use in this process: fds duplicated, so that closing the client
    does not close the benchmark's copies (which Server.stop closes)."""
    if isinstance(arg, Fd):
        return Fd(os.dup(arg.fd))
    if isinstance(arg, tuple):
        return tuple(_local(a) for a in arg)
    return arg


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    """Every available mechanism's server, started together (2 client slots, 64 keys)."""
    opts = IpcOptions(nkeys=NKEYS, clients=2, server_start_timeout=90)
    with tempfile.TemporaryDirectory(prefix="kvb-test-") as tmp:
        started: dict[str, Server] = {}
        try:
            for m in AVAILABLE:
                started[m.name] = Server(m, 2, opts, Path(tmp))
            yield started
        finally:
            for s in started.values():
                s.stop()


def _check_all(m: Mechanism, conn: Conn, data: dict[bytes, bytes]) -> None:
    for k, v in data.items():
        got = conn.get(k)
        assert got == v, f"{m.name}: GET {k!r} answered {got!r}"
        assert type(got) is bytes
    assert conn.get(MISSING_KEY) is None, f"{m.name}: a missing key must be reported missing"


@pytest.mark.parametrize("mech", AVAILABLE, ids=lambda m: m.name)
def test_pair_answers_exactly_what_was_stored(mech: Mechanism, servers: dict[str, Server]) -> None:
    server = servers[mech.name]
    info = server.wait_ready()
    data = dataset(NKEYS, IpcOptions().seed)
    conns = [mech.connect(_local(server.setup.client_args[i]), info) for i in range(2)]
    try:
        _check_all(mech, conns[0], data)
        errors: list[BaseException] = []

        def other() -> None:  # the second client slot, at the same time as the first
            try:
                _check_all(mech, conns[1], data)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        verify(conns[0], data, sample=NKEYS)
        t.join(60)
        assert not t.is_alive() and not errors, errors
    finally:
        for c in conns:
            c.close()
    owned = server.setup.owned
    server.stop()
    for p in owned.paths:
        assert not os.path.exists(p), f"{mech.name} left {p}"
    for name in owned.mqueues:
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.MessageQueue(name)
    for name in owned.shm:
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.SharedMemory(name)


class _Liar:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def get(self, key: bytes) -> bytes | None:
        v = self.conn.get(key)
        return v[:-1] + b"?" if v else b""

    def close(self) -> None:
        pass


def test_verify_catches_wrong_values_and_phantom_keys() -> None:
    data = dataset(NKEYS)

    class Exact:
        def get(self, key: bytes) -> bytes | None:
            return data.get(key)

        def close(self) -> None:
            pass

    verify(Exact(), data)
    with pytest.raises(WrongAnswer):
        verify(_Liar(Exact()), data)

    class Phantom(Exact):
        def get(self, key: bytes) -> bytes | None:
            return data.get(key, b"")

    with pytest.raises(WrongAnswer, match="missing"):
        verify(Phantom(), data)


def test_corba_row_is_real_or_says_why() -> None:
    corba = next(m for m in MECHANISMS if m.name == "corba")
    reason = corba.unavailable()
    assert reason is None or "salome-omniorb" in reason


def _kvb_shm() -> set[str]:
    with contextlib.suppress(OSError):
        return {n for n in os.listdir("/dev/shm") if "kvb-" in n}
    return set()


@pytest.mark.timeout(300)
def test_quick_ipc_end_to_end(tmp_path: Path) -> None:
    """About 6 s of CPU: on an idle 2-core machine, a few seconds; the timeout allows for a busy one."""
    before = _kvb_shm()
    r = subprocess.run([sys.executable, "-m", "kvstore", "bench", "ipc", "--quick", "--duration", "0.05", "--json",
                        "--report", str(tmp_path / "rep")], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    rows = {m["name"]: m for m in out["mechanisms"]}
    assert set(rows) == {m.name for m in MECHANISMS}
    for m in MECHANISMS:
        row = rows[m.name]
        if m.unavailable():
            assert row["available"] is False and row["reason"]
            continue
        assert "error" not in row, row
        for cell in (row["one"], row["many"]):
            assert cell["requests"] > 0 and cell["ops_per_s"] > 0 and cell["misses"] == 0
        assert row["many"]["clients"] == 2
        lat = row["one"]["latency"]
        assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"]
        assert row["one"]["client_cpu_us_per_req"] > 0
    assert (tmp_path / "rep" / "ipc.json").exists() and (tmp_path / "rep" / "ipc.png").stat().st_size > 10_000
    assert _kvb_shm() <= before


# ---------------------------------------------------------------- bench cluster


def test_etcd_messages_match_etcds_wire_format() -> None:
    from kvstore.bench.cluster import etcdkv

    m = etcdkv.messages()
    assert m["PutRequest"](key=b"a", value=b"b").SerializeToString() == b"\n\x01a\x12\x01b"
    assert m["RangeRequest"](key=b"k", serializable=True).SerializeToString() == b"\n\x01k8\x01"
    # RangeResponse{header{revision: 5}, kvs[{key: "k", value: "v"}], count: 1}
    r = m["RangeResponse"].FromString(b"\n\x02\x18\x05\x12\x06\n\x01k*\x01v \x01")
    assert r.header.revision == 5 and r.count == 1 and [(kv.key, kv.value) for kv in r.kvs] == [(b"k", b"v")]


def test_ratios_pair_our_patterns_with_the_peers() -> None:
    from kvstore.bench.cluster.runner import _split, ratios

    def cell(target: str, api: str, op: str, c: int, ops: float, p50: float) -> dict[str, Any]:
        return {"target": target, "api": api, "op": op, "pattern": f"{api}-{op}", "clients": c, "ops_per_s": ops,
                "latency": {"samples": 10, "p50_us": p50}}

    res = [cell("kvstore", "RESP", "set", 16, 100, 2000), cell("redis-aof", "RESP", "set", 16, 400, 500),
           cell("kvstore", "gRPC", "get", 16, 50, 100), cell("etcd", "gRPC", "get", 1, 50, 100)]
    [r] = ratios(res)
    assert r["peer"] == "redis-aof" and r["throughput_ratio"] == 0.25 and r["p50_ratio"] == 4.0
    assert _split(256, 2) == [128, 128] and _split(5, 2) == [3, 2] and _split(1, 2) == [1]


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_resp_driver_against_redis(tmp_path: Path) -> None:
    """The load driver's clients really get what they set, and count only good answers."""
    import time

    from kvstore.bench.cluster.drivers import handle
    from kvstore.bench.cluster.targets import Redis

    t = Redis(durable=False)
    try:
        t.start(tmp_path)
        get, setp = (p.spec for p in t.patterns())
        assert handle(("preload", setp, 0, 30, 4)) == 30
        now = time.monotonic_ns()
        r = handle(("run", get, 3, 0, now, now + 200_000_000, 30, 1))
        assert r["ok"] > 0 and r["errors"] == 0 and r["wrong"] == 0
        now = time.monotonic_ns()
        r = handle(("run", get, 2, 0, now, now + 100_000_000, 60, 1))  # keys 30..59 were never set
        assert r["wrong"] > 0
    finally:
        t.stop()
    assert t.proc is not None and t.proc.poll() is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_cluster_end_to_end(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "kvstore", "bench", "cluster", "--quick", "--clients", "2,64",
                        "--duration", "0.3", "--json", "--report", str(tmp_path / "rep")],
                       cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["targets"]["kvstore"]["available"] and not out["targets"]["kvstore"].get("error")
    cells = {(c["api"], c["op"], c["clients"]): c for c in out["results"]}
    want = {(a, o, n) for a in ("RESP", "gRPC") for o in ("get", "get_local", "set") for n in (2, 64)}
    if shutil.which("redis-benchmark"):  # pipelined SETs, each checked against the applied index
        want.add(("RESP", "set_pipelined", 64))
    assert set(cells) == want
    for c in cells.values():
        assert c["ok"] > 0 and c["wrong"] == 0 and c["errors"] == 0, c
    assert (tmp_path / "rep" / "cluster.json").exists()
