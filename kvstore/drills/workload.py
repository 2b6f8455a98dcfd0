"""The drill workload: concurrent clients hammering a few keys, every operation recorded.

Each client is a thread with its own connection to one node, half of them over the
node's UNIX socket (RESP), half over gRPC. They share a handful of keys so operations
collide, and every write carries a value no one else writes (`c3-17`: client 3, its
17th), which is what lets the checker tell writes apart.

An operation's outcome, as the checker needs it:

- ok: the node answered;
- failed: certainly not applied: -TRYAGAIN, -ERR, a refused connection, a gRPC call
  that never reached the node;
- unknown: a timeout, -UNKNOWN, a connection that broke after the request left.

A client whose node is down (it cannot connect) moves on to the next node.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.drills.history import History, OpKind, Outcome
from kvstore.errors import KVError, LimitExceeded, TryAgain, Unavailable, Unknown, WrongCluster

DEFAULT_MIX = {OpKind.READ: 0.4, OpKind.WRITE: 0.3, OpKind.SWAP: 0.15, OpKind.DELETE: 0.15}


@dataclass(frozen=True)
class Target:
    """Where a client can reach one node."""

    name: str
    socket: str
    grpc: str


class _Moved(Exception):
    """The node is unreachable: the client should try another one."""


class _Result:
    __slots__ = ("outcome", "result", "error", "move")

    def __init__(self, outcome: Outcome, result: str | None = None, error: str | None = None,
                 move: bool = False) -> None:
        self.outcome, self.result, self.error, self.move = outcome, result, error, move


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


class RespSession:
    """One client's RESP connection to one node (the project's client, with retries off:
    every attempt is its own recorded operation)."""

    transport = "resp"

    def __init__(self, target: Target, timeout: float) -> None:
        from kvstore.local.client import Client, RetryPolicy

        self.target = target
        self.client = Client(target.socket, timeout=timeout, retry=RetryPolicy(retries=0))

    def close(self) -> None:
        self.client.close()

    def do(self, kind: OpKind, key: str, value: str | None) -> _Result:
        k = key.encode()
        try:
            if kind == OpKind.READ:
                return _Result(Outcome.OK, result=_text(self.client.get(k)))
            if kind == OpKind.WRITE:
                self.client.put(k, (value or "").encode())
                return _Result(Outcome.OK)
            if kind == OpKind.SWAP:
                return _Result(Outcome.OK, result=_text(self.client.set(k, (value or "").encode(), get=True)))
            self.client.delete(k)
            return _Result(Outcome.OK)
        except TryAgain as e:  # before Unavailable: its subclass
            return _Result(Outcome.FAILED, error=f"TRYAGAIN {e}")
        except Unknown as e:  # -UNKNOWN, or the connection broke after the request left
            lost = "connection lost" in str(e)
            return _Result(Outcome.UNKNOWN, error=f"UNKNOWN {e}", move=lost)
        except Unavailable as e:  # nothing sent (cannot connect), or a read that broke
            return _Result(Outcome.FAILED, error=f"unavailable: {e}", move=True)
        except KVError as e:  # -ERR ...: refused, nothing applied
            return _Result(Outcome.FAILED, error=f"{type(e).__name__}: {e}")


class GrpcSession:
    """One client's gRPC channel to one node (service KV, straight to the node: no proxy)."""

    transport = "grpc"

    def __init__(self, target: Target, timeout: float) -> None:
        from kvstore.rpc.client import GrpcClient

        self.target = target
        self.client = GrpcClient(target.grpc, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def do(self, kind: OpKind, key: str, value: str | None) -> _Result:
        k = key.encode()
        try:
            if kind == OpKind.READ:
                return _Result(Outcome.OK, result=_text(self.client.get(k)))
            if kind == OpKind.WRITE:
                self.client.put(k, (value or "").encode())
                return _Result(Outcome.OK)
            if kind == OpKind.SWAP:
                _, old = self.client.put(k, (value or "").encode(), get=True)
                return _Result(Outcome.OK, result=_text(old))
            self.client.delete(k)
            return _Result(Outcome.OK)
        except (TryAgain, LimitExceeded, WrongCluster) as e:
            return _Result(Outcome.FAILED, error=f"{type(e).__name__}: {e}")
        except Unknown as e:
            return _Result(Outcome.UNKNOWN, error=f"Unknown: {e}")
        except Unavailable as e:
            msg = str(e)
            if _not_sent(msg):
                return _Result(Outcome.FAILED, error=f"Unavailable: {msg}", move=True)
            return _Result(Outcome.UNKNOWN if kind != OpKind.READ else Outcome.FAILED,
                           error=f"Unavailable: {msg}", move=True)
        except KVError as e:
            return _Result(Outcome.UNKNOWN if kind != OpKind.READ else Outcome.FAILED,
                           error=f"{type(e).__name__}: {e}")


def _not_sent(details: str) -> bool:
    d = details.lower()
    return any(s in d for s in ("failed to connect", "connection refused", "no such file", "connect failed",
                                "dns resolution failed"))


Session = RespSession | GrpcSession


class Client(threading.Thread):
    def __init__(self, wl: Workload, cid: int, transport: str, start_at: int) -> None:
        super().__init__(name=f"drill-client-{cid}", daemon=True)
        self.wl = wl
        self.cid = cid
        self.transport = transport
        self.at = start_at
        self.rng = random.Random(wl.seed * 1000 + cid)
        self.seq = 0
        self.session: Session | None = None

    def _session(self) -> Session:
        if self.session is None:
            t = self.wl.targets[self.at % len(self.wl.targets)]
            self.session = (RespSession(t, self.wl.timeout) if self.transport == "resp"
                            else GrpcSession(t, self.wl.timeout))
        return self.session

    def _move(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.at += 1

    def _pick(self) -> OpKind:
        r = self.rng.random()
        acc = 0.0
        for kind, w in self.wl.mix.items():
            acc += w
            if r < acc:
                return kind
        return OpKind.READ

    def run(self) -> None:
        wl = self.wl
        fails_in_row = 0
        try:
            while not wl.stopping.is_set():
                kind = self._pick()
                key = self.rng.choice(wl.keys)
                value = None
                if kind in (OpKind.WRITE, OpKind.SWAP):
                    self.seq += 1
                    value = f"c{self.cid}-{self.seq}"
                sess = self._session()
                op = wl.history.invoke(self.cid, kind, key, value, node=sess.target.name)
                try:
                    res = sess.do(kind, key, value)
                except Exception as e:  # a bug here must not hide as a hung client
                    res = _Result(Outcome.UNKNOWN if kind != OpKind.READ else Outcome.FAILED,
                                  error=f"{type(e).__name__}: {e}", move=True)
                wl.history.complete(op, res.outcome, res.result, res.error)
                wl._count(res.outcome)
                if res.move:
                    self._move()
                if res.outcome == Outcome.OK:
                    fails_in_row = 0
                else:
                    fails_in_row += 1
                    # back off a little so a dead cluster is not spun on
                    wl.stopping.wait(min(0.2, 0.005 * (1 << min(fails_in_row, 6))))
                if wl.think_s:
                    wl.stopping.wait(self.rng.uniform(0, wl.think_s))
        finally:
            if self.session is not None:
                self.session.close()


class Workload:
    """`clients` threads over `targets`, recording into `history` until `stop()`."""

    def __init__(self, history: History, targets: Sequence[Target], *, clients: int = 10, keys: int = 5,
                 seed: int = 0, timeout: float = 3.0, mix: dict[OpKind, float] | None = None,
                 transports: Sequence[str] = ("resp", "grpc"), think_s: float = 0.0,
                 serving: int | None = None) -> None:
        """`serving`: how many of the first targets serve now (clients start there; the
        rest, spare nodes, are only reached by moving on)."""
        if not targets:
            raise ValueError("a workload needs at least one node")
        if clients < 1 or keys < 1:
            raise ValueError("a workload needs at least one client and one key")
        self.history = history
        self.targets = list(targets)
        self.keys = [f"k{i}" for i in range(keys)]
        self.seed = seed
        self.timeout = timeout
        self.think_s = think_s
        mix = dict(mix or DEFAULT_MIX)
        total = sum(mix.values())
        self.mix = {k: v / total for k, v in mix.items()}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.counts = {str(o): 0 for o in Outcome}
        first = max(1, min(serving or len(self.targets), len(self.targets)))
        self.clients = [Client(self, i, transports[i % len(transports)], i % first) for i in range(clients)]

    def _count(self, outcome: Outcome) -> None:
        with self._lock:
            self.counts[str(outcome)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def start(self) -> None:
        for c in self.clients:
            c.start()

    def stop(self, timeout: float | None = None) -> list[str]:
        """Ask every client to stop after its current op; returns the ones still running."""
        self.stopping.set()
        deadline = time.monotonic() + (self.timeout + 3.0 if timeout is None else timeout)
        for c in self.clients:
            c.join(max(0.0, deadline - time.monotonic()))
        return [c.name for c in self.clients if c.is_alive()]


def final_reads(history: History, targets: Sequence[Target], keys: Sequence[str], *, client: int,
                deadline: float, timeout: float = 3.0,
                progress: Callable[[str], None] | None = None) -> dict[str, str | None]:
    """A linearizable read of every key, from any node that answers, each recorded.

    Retries (other nodes, then again) until each key has been read or `deadline`
    (monotonic) passes; keys never read are left out of the result.
    """
    out: dict[str, str | None] = {}
    at = 0
    for key in keys:
        while time.monotonic() < deadline:
            t = targets[at % len(targets)]
            sess: Session = RespSession(t, timeout) if at % 2 == 0 else GrpcSession(t, timeout)
            try:
                op = history.invoke(client, OpKind.READ, key, None, node=t.name)
                res = sess.do(OpKind.READ, key, None)
                history.complete(op, res.outcome, res.result, res.error)
            finally:
                sess.close()
            if res.outcome == Outcome.OK:
                out[key] = res.result
                break
            if progress:
                progress(f"final read of {key} on {t.name}: {res.error}")
            at += 1
            time.sleep(0.05)
    return out
