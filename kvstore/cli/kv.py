"""`kvstore put/get/delete/scan`: one request to the cluster, over a node's socket or gRPC."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click

from kvstore.cluster import manage, procs
from kvstore.errors import KVError, NotFound, Unavailable, UsageError

T = TypeVar("T")


class KVClient(Protocol):
    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> int: ...

    def scan(self, prefix: bytes, limit: int | None, linearizable: bool) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class SocketKV:
    def __init__(self, path: str) -> None:
        from kvstore.local.client import Client

        self.path = path
        self.c = Client(path, timeout=10.0)

    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        if not linearizable:
            self.c.readonly()
        return self.c.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.c.put(key, value)

    def delete(self, key: bytes) -> int:
        return int(self.c.delete(key))

    def scan(self, prefix: bytes, limit: int | None, linearizable: bool) -> Iterator[tuple[bytes, bytes]]:
        if not linearizable:
            self.c.readonly()
        n = 0
        for kv in self.c.scan(prefix):
            if limit is not None and n >= limit:
                return
            n += 1
            yield kv

    def close(self) -> None:
        self.c.close()


class GrpcKV:
    def __init__(self, endpoint: str, data_dir: Path | None = None) -> None:
        from kvstore.rpc.client import GrpcClient

        channel = None
        if data_dir is not None and manage.config_path(data_dir).exists():
            from kvstore.tls import client_channel

            cfg = manage.load(data_dir)
            name = next((n.name for n in cfg.nodes if n.grpc_address == endpoint), None)
            channel = client_channel(cfg, data_dir, endpoint, name)
        self.c = GrpcClient(endpoint, channel=channel)

    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        return self.c.get(key, linearizable=linearizable)

    def put(self, key: bytes, value: bytes) -> None:
        self.c.put(key, value)

    def delete(self, key: bytes) -> int:
        return self.c.delete(key)

    def scan(self, prefix: bytes, limit: int | None, linearizable: bool) -> Iterator[tuple[bytes, bytes]]:
        return self.c.scan(prefix, limit=limit, linearizable=linearizable)

    def close(self) -> None:
        self.c.close()


def _candidates(obj: dict[str, Any], node: str | None, socket: str | None,
                endpoint: str | None) -> list[Callable[[], KVClient]]:
    chosen = [x for x in (node, socket, endpoint) if x]
    if len(chosen) > 1:
        raise UsageError("give at most one of --node, --socket, --endpoint")
    if socket:
        return [lambda: SocketKV(socket)]
    if endpoint:
        return [lambda: GrpcKV(endpoint, obj["dir"])]
    d: Path = obj["dir"]
    cfg = manage.load(d)
    names = [node] if node else [n.name for n in cfg.nodes]
    if node:
        cfg.node(node)
    out: list[Callable[[], KVClient]] = []
    for name in names:
        nc = cfg.node(name)
        if procs.live_pid(d, name) is None and not node:
            continue
        path = nc.socket or str(d / name / "kv.sock")
        out.append(lambda path=path: SocketKV(path))  # type: ignore[misc]
    if not out:
        raise Unavailable(f"no node of the cluster in {d} is running; start it with `kvstore cluster up`")
    return out


def _run(obj: dict[str, Any], node: str | None, socket: str | None, endpoint: str | None,
         fn: Callable[[KVClient], T]) -> T:
    """Try each candidate node until one answers; connection failures move on to the next."""
    last: Exception | None = None
    for make in _candidates(obj, node, socket, endpoint):
        try:
            c = make()
        except (OSError, Unavailable) as e:
            last = e
            continue
        try:
            return fn(c)
        except (ConnectionError, FileNotFoundError) as e:
            last = e
        finally:
            c.close()
    if isinstance(last, KVError):
        raise last
    raise Unavailable(f"no node answered: {last}")


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--endpoint", metavar="HOST:PORT", help="A node's gRPC address (remote clients).")(f)
    f = click.option("--socket", type=click.Path(dir_okay=False), help="A node's UNIX socket.")(f)
    f = click.option("--node", help="A node of the cluster in --dir, by name.")(f)
    return f


consistency_option = click.option(
    "--consistency", type=click.Choice(["linearizable", "local"]), default="linearizable", show_default=True,
    help="linearizable: confirmed with the leader; local: this node's state, fast, possibly stale.")


@click.command()
@click.argument("key")
@click.argument("value")
@target_options
@click.pass_obj
def put(obj: dict[str, Any], key: str, value: str, node: str | None, socket: str | None,
        endpoint: str | None) -> None:
    """Set KEY to VALUE; returns once a majority has it durably."""
    _run(obj, node, socket, endpoint, lambda c: c.put(key.encode(), value.encode()))
    click.echo("OK")


@click.command()
@click.argument("key")
@target_options
@consistency_option
@click.pass_obj
def get(obj: dict[str, Any], key: str, node: str | None, socket: str | None, endpoint: str | None,
        consistency: str) -> None:
    """Print KEY's value; exit 1 when it is absent."""
    v = _run(obj, node, socket, endpoint, lambda c: c.get(key.encode(), linearizable=consistency == "linearizable"))
    if v is None:
        raise NotFound(f"{key}: not found")
    sys.stdout.buffer.write(v + b"\n")


@click.command()
@click.argument("key")
@target_options
@click.pass_obj
def delete(obj: dict[str, Any], key: str, node: str | None, socket: str | None, endpoint: str | None) -> None:
    """Delete KEY; exit 1 when it was absent."""
    n = _run(obj, node, socket, endpoint, lambda c: c.delete(key.encode()))
    if not n:
        raise NotFound(f"{key}: not found")
    click.echo("deleted")


@click.command()
@click.argument("prefix", default="")
@click.option("--limit", type=int, help="At most this many keys.")
@target_options
@consistency_option
@click.pass_obj
def scan(obj: dict[str, Any], prefix: str, limit: int | None, node: str | None, socket: str | None,
         endpoint: str | None, consistency: str) -> None:
    """Print KEY<TAB>VALUE lines in key order, for keys starting with PREFIX."""
    def go(c: KVClient) -> int:
        n = 0
        out = sys.stdout.buffer
        for k, v in c.scan(prefix.encode(), limit, consistency == "linearizable"):
            out.write(k + b"\t" + v + b"\n")
            n += 1
        return n

    _run(obj, node, socket, endpoint, go)


COMMANDS = [put, get, delete, scan]
