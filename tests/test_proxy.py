"""The fault-injecting TCP proxy: bytes pass, cuts partition, heals restore, delays delay."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from kvstore.drills.proxy import Proxy, ProxyMesh, ring_cuts

QUIET_S = 0.3  # how long "nothing arrives" is watched for


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[str]:
    srv = _Server(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy(seed=1) as p:
        yield p


def _connect(address: str, timeout: float = 5.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _silent(s: socket.socket, quiet: float = QUIET_S) -> bool:
    """True when nothing arrives for `quiet` seconds (the connection stays open)."""
    s.settimeout(quiet)
    try:
        s.recv(1)  # data or an end of stream: either way, not silent
    except TimeoutError:
        return True
    finally:
        s.settimeout(5.0)
    return False


def test_bytes_pass_both_ways(proxy: Proxy, echo: str) -> None:
    ln = proxy.link(echo)
    with _connect(ln.address) as s:
        payload = bytes(range(256)) * 1000
        s.sendall(payload)
        assert _recv_exactly(s, len(payload)) == payload
    st = ln.snapshot()
    assert st["accepted"] == 1 and st["bytes_up"] == len(payload) and st["bytes_down"] == len(payload)


def test_cut_blackholes_existing_and_new_connections_and_heal_restores(proxy: Proxy, echo: str) -> None:
    ln = proxy.link(echo)
    old = _connect(ln.address)
    old.sendall(b"before")
    assert _recv_exactly(old, 6) == b"before"
    ln.cut()
    old.sendall(b"during")
    assert _silent(old)
    new = _connect(ln.address)  # a partition accepts, then says nothing: not a refusal
    new.sendall(b"hello")
    assert _silent(new)
    ln.heal()
    # TCP would have retransmitted: the held bytes arrive once the link heals
    assert _recv_exactly(old, 6) == b"during"
    assert _recv_exactly(new, 5) == b"hello"
    with _connect(ln.address) as fresh:
        fresh.sendall(b"after")
        assert _recv_exactly(fresh, 5) == b"after"
    old.close()
    new.close()


def test_cut_in_reset_mode_kills_existing_connections(proxy: Proxy, echo: str) -> None:
    ln = proxy.link(echo)
    with _connect(ln.address) as s:
        s.sendall(b"x")
        assert _recv_exactly(s, 1) == b"x"
        ln.cut(mode="reset")
        with pytest.raises((ConnectionError, OSError)):
            s.sendall(b"y")
            _recv_exactly(s, 1)
    assert ln.snapshot()["resets"] >= 1
    ln.heal()
    with _connect(ln.address) as s:
        s.sendall(b"z")
        assert _recv_exactly(s, 1) == b"z"


def test_delay_delays_each_direction(proxy: Proxy, echo: str) -> None:
    ln = proxy.link(echo)
    ln.set_delay(100, jitter_ms=20)
    with _connect(ln.address) as s:
        for _ in range(3):
            t0 = time.monotonic()
            s.sendall(b"ping")
            assert _recv_exactly(s, 4) == b"ping"
            assert time.monotonic() - t0 >= 0.2  # the request and the echo are each held 100 ms
        ln.set_delay(0)
        t0 = time.monotonic()
        s.sendall(b"pong")
        assert _recv_exactly(s, 4) == b"pong"


def test_loss_stalls_or_resets(proxy: Proxy, echo: str) -> None:
    ln = proxy.link(echo)
    ln.set_loss(1.0)
    with _connect(ln.address) as s:
        s.sendall(b"x")
        try:
            s.settimeout(5.0)
            s.recv(1)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = ln.snapshot()
        if st["stalls"] + st["resets"] >= 1:
            break
        time.sleep(0.01)
    st = ln.snapshot()
    assert st["stalls"] + st["resets"] >= 1
    ln.set_loss(0.0)
    with _connect(ln.address) as s:
        s.sendall(b"ok")
        assert _recv_exactly(s, 2) == b"ok"


def test_destination_down_closes_the_connection(proxy: Proxy) -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{tmp.getsockname()[1]}"  # bound, not listening: refused
        ln = proxy.link(dead)
        try:  # the reset may come before connect() even returns
            with _connect(ln.address) as s:
                assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert ln.snapshot()["refused"] == 1


def test_mesh_addresses_and_partitions(echo: str) -> None:
    nodes = {"n1": echo, "n2": echo, "n3": echo}
    with ProxyMesh(nodes, seed=3) as mesh:
        assert len(mesh.links) == 6
        addrs = mesh.peer_addresses("n1")
        assert set(addrs) == {"n2", "n3"}
        assert len({a for n in nodes for a in mesh.peer_addresses(n).values()}) == 6

        mesh.isolate("n1")
        cut = {p for p, ln in mesh.links.items() if ln.is_cut}
        assert cut == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
        with _connect(mesh.peer_addresses("n2")["n1"]) as s:
            s.sendall(b"x")
            assert _silent(s)
        with _connect(mesh.peer_addresses("n2")["n3"]) as s:
            s.sendall(b"y")
            assert _recv_exactly(s, 1) == b"y"

        mesh.bridge(["n1"], ["n3"], "n2")
        cut = {p for p, ln in mesh.links.items() if ln.is_cut}
        assert cut == {("n1", "n3"), ("n3", "n1")}

        mesh.partition([["n1", "n2"]])  # n3, in no group, is alone
        cut = {p for p, ln in mesh.links.items() if ln.is_cut}
        assert cut == {("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")}

        mesh.heal_all()
        assert not any(ln.is_cut for ln in mesh.links.values())
        with _connect(mesh.peer_addresses("n2")["n1"]) as s:
            s.sendall(b"z")
            assert _recv_exactly(s, 1) == b"z"


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_majorities_ring_each_node_hears_a_different_majority(n: int) -> None:
    order = [f"n{i}" for i in range(n)]
    cut = set(ring_cuts(order))
    hears = {v: frozenset(u for u in order if (u, v) not in cut) for v in order}
    for v, h in hears.items():
        assert v in h and len(h) == n // 2 + 1
    assert len(set(hears.values())) == n
    if (n // 2 + 1) % 2:  # odd majorities: a symmetric ring
        assert all((b, a) in cut for a, b in cut)
