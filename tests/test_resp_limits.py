"""Who may connect and how many: socket mode, SO_PEERCRED uid check, max clients, stale sockets."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore.errors import KVError
from kvstore.local.resp import Limits
from kvstore.local.server import bind_unix
from kvstore.local.testing import ServerThread


def first_reply(path: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        try:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused already: the reason is waiting to be read
        data = b""
        while chunk := s.recv(4096):
            data += chunk
            if data.endswith(b"\r\n"):
                break
        return data
    finally:
        s.close()


def test_socket_mode_default_and_group() -> None:
    with ServerThread() as st:
        assert stat.S_IMODE(os.stat(st.path).st_mode) == 0o600
    with ServerThread(socket_mode=0o660) as st:
        assert stat.S_IMODE(os.stat(st.path).st_mode) == 0o660


def test_other_uids_are_refused() -> None:
    with ServerThread(allowed_uids=set()) as st:  # not even ours: as if we were another user
        assert first_reply(st.path).startswith(b"-ERR permission denied")
        assert st.server is not None and st.server.stats["rejected_connections"] == 1
    with ServerThread(allowed_uids={os.getuid()}) as st:
        assert first_reply(st.path) == b"+PONG\r\n"


def test_max_clients() -> None:
    with ServerThread(limits=Limits(max_clients=3)) as st:
        held = [redis.Redis(unix_socket_path=st.path) for _ in range(3)]
        try:
            for c in held:
                assert c.ping()
            assert first_reply(st.path).startswith(b"-ERR max number of clients reached")
            held.pop().close()
            deadline = time.monotonic() + 5
            while first_reply(st.path) != b"+PONG\r\n":  # a slot frees up once the close is seen
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            for c in held:
                c.close()


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a killed node leaves
    with ServerThread(path=path) as st:
        assert first_reply(st.path) == b"+PONG\r\n"
        with pytest.raises(KVError, match="another server"):
            bind_unix(path)
    assert not os.path.exists(path)
    (tmp_path / "file").write_text("not a socket")
    with pytest.raises(KVError, match="not a socket"):
        bind_unix(str(tmp_path / "file"))


def test_small_limits_are_configurable() -> None:
    limits = Limits(max_key=8, max_value=16, max_request=1024)
    with ServerThread(limits=limits) as st:
        r = redis.Redis(unix_socket_path=st.path, retry=Retry(NoBackoff(), 0))
        try:
            with pytest.raises(redis.ResponseError, match="key too large"):
                r.set("123456789", "v")
            with pytest.raises(redis.ResponseError, match="value too large"):
                r.set("k", "x" * 17)
            assert r.set("k", "x" * 16)
            # Over max_request: refused (an error reply, or the connection closed when it
            # arrived in pieces), nothing stored.
            with pytest.raises((redis.ConnectionError, redis.ResponseError)):
                r.set("k", "y" * 1_000_000)
            assert r.get("k") == b"x" * 16
        finally:
            r.close()
