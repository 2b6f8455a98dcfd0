"""Command dispatch: one request (a list of bytes) in, one encoded reply out.

Each command is registered with a kind that tells the connection what to do around it:
SYNC runs as is, READ runs after a read barrier (unless the session is READONLY),
WRITE parses into a statemachine `Command` that the connection hands to
`backend.write`, then formats the result. Handlers raise `CommandError` for `-ERR`.
"""

from __future__ import annotations

from kvstore import statemachine
from kvstore.local import resp
from kvstore.local.backend import Backend
from kvstore.local.cmdbase import (
    READ,
    REDIS_VERSION,
    SYNC,
    WRITE,
    CommandError,
    Formatter,
    Handler,
    LimitError,
    ServerView,
    Session,
    Spec,
    _int,
    _text,
)
from kvstore.local.fast import FastPath
from kvstore.local.glob import compile_glob, literal_prefix
from kvstore.local.introspect import Introspection
from kvstore.local.resp import Limits

__all__ = [
    "READ",
    "REDIS_VERSION",
    "SYNC",
    "WRITE",
    "CommandError",
    "Commands",
    "Formatter",
    "Session",
    "Spec",
]


class Commands(Introspection):
    def __init__(
        self, backend: Backend, limits: Limits, server: ServerView, *, internal: bool = False
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.server = server
        self.table: dict[bytes, Spec] = {}
        r, w, f = ("readonly",), ("write",), ("fast",)
        reg = self._register
        reg("PING", SYNC, -1, self.ping, ("fast", "stale"))
        reg("ECHO", SYNC, 2, self.echo, f)
        reg("GET", READ, 2, self.get, r + f, (1, 1, 1))
        reg("MGET", READ, -2, self.mget, r + f, (1, -1, 1))
        reg("EXISTS", READ, -2, self.exists, r + f, (1, -1, 1))
        reg("SCAN", READ, -2, self.scan, r)
        reg("DBSIZE", READ, 1, self.dbsize, r + f)
        reg("SET", WRITE, -3, self.set, w + ("denyoom",), (1, 1, 1))
        reg("DEL", WRITE, -2, self.delete, w, (1, -1, 1))
        reg("MSET", WRITE, -3, self.mset, w + ("denyoom",), (1, -1, 2))
        reg("INFO", SYNC, -1, self.info, ("stale",))
        reg("HELLO", SYNC, -1, self.hello, ("fast", "stale", "no-auth"))
        reg("COMMAND", SYNC, -1, self.command, ("stale",))
        reg("CLIENT", SYNC, -2, self.client, ("stale",))
        reg("READONLY", SYNC, 1, self.readonly, f)
        reg("READWRITE", SYNC, 1, self.readwrite, f)
        reg("QUIT", SYNC, -1, self.quit, f)
        reg("SELECT", SYNC, 2, self.select, f)
        reg("CONFIG", SYNC, -2, self.config, ("stale",))
        reg("KVS.RANGE", READ, -3, self.range, r)
        if internal:
            reg("KVS.WRITE", WRITE, 2, self.forwarded_write, w)
            reg("KVS.BARRIER", READ, 1, self.barrier, r)
        # The commonest commands again, for the hot path (see fast.py).
        self.fast = FastPath(backend, limits)

    def _register(
        self,
        name: str,
        kind: int,
        arity: int,
        fn: Handler,
        flags: tuple[str, ...],
        keys: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        spec = Spec(kind, arity, fn, flags, keys)
        self.table[name.encode()] = spec
        self.table[name.lower().encode()] = spec

    def lookup(self, args: list[bytes]) -> Spec:
        name = args[0]
        spec = self.table.get(name)
        if spec is None:
            spec = self.table.get(name.upper())
            if spec is None:
                rest = " ".join(f"'{_text(a)[:64]}'" for a in args[1:6])
                raise CommandError(
                    f"ERR unknown command '{_text(name)[:64]}', with args beginning with: {rest}"
                )
        n = len(args)
        if (spec.arity >= 0 and n != spec.arity) or n < -spec.arity:
            raise CommandError(f"ERR wrong number of arguments for '{_text(name).lower()}' command")
        return spec

    # -- checks ------------------------------------------------------------------------

    def _key(self, key: bytes) -> bytes:
        if not key:
            raise LimitError(f"ERR key is empty; keys must be 1 to {self.limits.max_key} bytes")
        if len(key) > self.limits.max_key:
            raise LimitError(f"ERR key too large: {len(key)} bytes; the limit is {self.limits.max_key}")
        return key

    def _value(self, value: bytes) -> bytes:
        if len(value) > self.limits.max_value:
            raise LimitError(f"ERR value too large: {len(value)} bytes; the limit is {self.limits.max_value}")
        return value

    # -- simple --------------------------------------------------------------------------

    def ping(self, s: Session, a: list[bytes]) -> bytes:
        if len(a) > 2:
            raise CommandError("ERR wrong number of arguments for 'ping' command")
        return resp.bulk(a[1]) if len(a) == 2 else resp.PONG

    def echo(self, s: Session, a: list[bytes]) -> bytes:
        return resp.bulk(a[1])

    def readonly(self, s: Session, a: list[bytes]) -> bytes:
        s.readonly = True
        return resp.OK

    def readwrite(self, s: Session, a: list[bytes]) -> bytes:
        s.readonly = False
        return resp.OK

    def quit(self, s: Session, a: list[bytes]) -> bytes:
        return resp.OK  # the connection closes after sending it

    def select(self, s: Session, a: list[bytes]) -> bytes:
        if _int(a[1]) != 0:
            raise CommandError("ERR DB index is out of range")
        return resp.OK

    # -- reads (the connection has passed the read barrier when needed) -----------------

    def get(self, s: Session, a: list[bytes]) -> bytes:
        return resp.bulk_or_null(self.backend.get(self._key(a[1])), s.proto)

    def mget(self, s: Session, a: list[bytes]) -> bytes:
        get = self.backend.get
        values = [get(self._key(k)) for k in a[1:]]
        if sum(len(v) for v in values if v is not None) > self.limits.max_reply:
            raise LimitError(f"ERR reply too large; the limit is {self.limits.max_reply} bytes")
        return resp.bulk_array(values, s.proto)

    def exists(self, s: Session, a: list[bytes]) -> bytes:
        get = self.backend.get
        return resp.integer(sum(1 for k in a[1:] if get(self._key(k)) is not None))

    def dbsize(self, s: Session, a: list[bytes]) -> bytes:
        return resp.integer(self.backend.count())

    def scan(self, s: Session, a: list[bytes]) -> bytes:
        # Stateless cursor: 0, or the big-endian integer of 0x01 + the next key to read,
        # so it survives reconnects and any server restart.
        try:
            cursor = int(a[1])
        except ValueError:
            raise CommandError("ERR invalid cursor") from None
        if cursor < 0:
            raise CommandError("ERR invalid cursor")
        start = b""
        if cursor:
            raw = cursor.to_bytes((cursor.bit_length() + 7) // 8, "big")
            if raw[0] != 1:
                raise CommandError("ERR invalid cursor")
            start = raw[1:]
        count, match, only_strings = 10, None, True
        i = 2
        while i < len(a):
            opt = a[i].upper()
            if i + 1 >= len(a):
                raise CommandError("ERR syntax error")
            if opt == b"COUNT":
                count = _int(a[i + 1])
                if count < 1:
                    raise CommandError("ERR syntax error")
            elif opt == b"MATCH":
                match = a[i + 1]
            elif opt == b"TYPE":
                only_strings = a[i + 1].lower() == b"string"
            else:
                raise CommandError("ERR syntax error")
            i += 2
        count = min(count, self.limits.max_scan_count)
        prefix = literal_prefix(match) if match is not None else b""
        if prefix and start < prefix:
            start = prefix
        items = self.backend.scan(start, count)
        keys = [k for k, _ in items]
        done = len(items) < count
        if prefix:
            inside = [k for k in keys if k.startswith(prefix)]
            if len(inside) < len(keys):  # keys are in order: past the prefix, nothing more
                keys, done = inside, True
        if match is not None and match != prefix + b"*":
            fullmatch = compile_glob(match)
            keys = [k for k in keys if fullmatch(k)]
        if not only_strings:
            keys = []
        nxt = 0 if done or not items else int.from_bytes(b"\x01" + items[-1][0] + b"\x00", "big")
        return b"*2\r\n" + resp.bulk(b"%d" % nxt) + resp.bulk_array(keys, s.proto)

    def range(self, s: Session, a: list[bytes]) -> bytes:
        """KVS.RANGE start count [end] -> [next start or nil, [k1, v1, k2, v2, ...]].

        Keys in [start, end), in key order: what the Python client's scan() uses (one
        round trip per batch, where SCAN would need a MGET after it).
        """
        start, count = a[1], _int(a[2])
        end = a[3] if len(a) > 3 else None
        if count < 1 or len(a) > 4:
            raise CommandError("ERR syntax error")
        count = min(count, self.limits.max_scan_count)
        items = self.backend.scan(start, count)
        out: list[bytes | None] = []
        nxt: bytes | None = items[-1][0] + b"\x00" if len(items) == count else None
        size = 0
        for k, v in items:
            if end is not None and k >= end:
                nxt = None
                break
            size += len(k) + len(v)
            if size > self.limits.max_reply and out:
                nxt = k  # the reply is full: continue from here
                break
            out += (k, v)
        if nxt is not None and end is not None and nxt >= end:
            nxt = None
        return b"*2\r\n" + resp.bulk_or_null(nxt, s.proto) + resp.bulk_array(out, s.proto)

    def barrier(self, s: Session, a: list[bytes]) -> bytes:
        """KVS.BARRIER (internal): answered once the node passed a read barrier; the
        applied index when the backend tells it, else +OK."""
        applied = getattr(self.backend, "applied", None)
        return resp.integer(applied) if isinstance(applied, int) else resp.OK

    # -- writes: parse into a Command and a formatter for its result ---------------------

    def set(self, s: Session, a: list[bytes]) -> tuple[statemachine.Command, Formatter]:
        key, value = self._key(a[1]), self._value(a[2])
        nx = xx = get = False
        for opt in a[3:]:
            o = opt.upper()
            if o == b"NX" and not xx:
                nx = True
            elif o == b"XX" and not nx:
                xx = True
            elif o == b"GET":
                get = True
            elif o in (b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL", b"PERSIST"):
                raise CommandError(f"ERR not supported: {_text(o)} (keys do not expire)")
            else:
                raise CommandError("ERR syntax error")
        return statemachine.Set(key, value, nx, xx, get), _fmt_set_get if get else _fmt_set

    def delete(self, s: Session, a: list[bytes]) -> tuple[statemachine.Command, Formatter]:
        return statemachine.Delete(tuple(self._key(k) for k in a[1:])), _fmt_int

    def mset(self, s: Session, a: list[bytes]) -> tuple[statemachine.Command, Formatter]:
        if len(a) % 2 == 0:
            raise CommandError("ERR wrong number of arguments for 'mset' command")
        pairs = tuple((self._key(a[i]), self._value(a[i + 1])) for i in range(1, len(a), 2))
        if sum(len(k) + len(v) for k, v in pairs) > self.limits.max_request:
            raise LimitError("ERR request too large")
        return statemachine.MSet(pairs), _fmt_ok

    def forwarded_write(self, s: Session, a: list[bytes]) -> tuple[statemachine.Command, Formatter]:
        try:
            cmd = statemachine.decode(a[1])
        except ValueError as e:
            raise CommandError(f"ERR bad forwarded command: {e}") from None
        if cmd is None:
            raise CommandError("ERR empty forwarded command")
        return cmd, _fmt_encoded

    # -- introspection ---------------------------------------------------------------------


def _fmt_set(r: statemachine.Result, proto: int) -> bytes:
    assert isinstance(r, statemachine.SetResult)
    return resp.OK if r.applied else resp.null(proto)


def _fmt_set_get(r: statemachine.Result, proto: int) -> bytes:
    assert isinstance(r, statemachine.SetResult)
    return resp.bulk_or_null(r.old, proto)


def _fmt_int(r: statemachine.Result, proto: int) -> bytes:
    assert isinstance(r, int)
    return resp.integer(r)


def _fmt_ok(r: statemachine.Result, proto: int) -> bytes:
    return resp.OK


def _fmt_encoded(r: statemachine.Result, proto: int) -> bytes:
    return resp.bulk(statemachine.encode_result(r))
