"""`kvstore bench ipc` and `kvstore bench cluster`: every transport answers exactly what
was stored (so a broken one fails here, not as a fast wrong number), the quick benchmark
runs end to end, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def test_quick_ipc_end_to_end(tmp_path: Path) -> None:
    before = _kvb_shm()
    r = subprocess.run([sys.executable, "-m", "kvstore", "bench", "ipc", "--quick", "--json", "--report",
                        str(tmp_path / "rep")], cwd=ROOT, capture_output=True, text=True, timeout=110)
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
