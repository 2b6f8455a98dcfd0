"""Command dispatch: one request (a list of bytes) in, one encoded reply out.

Each command is registered with a kind that tells the connection what to do around it:
SYNC runs as is, READ runs after a read barrier (unless the session is READONLY),
WRITE parses into a statemachine `Command` that the connection hands to
`backend.write`, then formats the result. Handlers raise `CommandError` for `-ERR`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvstore import __version__, statemachine
from kvstore.local import resp
from kvstore.local.backend import Backend
from kvstore.local.glob import compile_glob, literal_prefix
from kvstore.local.resp import Limits

SYNC, READ, WRITE = 0, 1, 2
REDIS_VERSION = "7.0.0"


class CommandError(Exception):
    """An error reply; the message includes its prefix (`ERR ...`, `NOPROTO ...`)."""


class LimitError(CommandError):
    pass


@dataclass(slots=True, eq=False)
class Session:
    id: int
    uid: int = -1
    pid: int = -1
    proto: int = 2
    readonly: bool = False
    name: str = ""
    lib_name: str = ""
    lib_ver: str = ""
    created: float = field(default_factory=time.monotonic)
    last_cmd: str = "NULL"


class ServerView(Protocol):
    """What INFO and CLIENT need to know about the server."""

    started: float
    path: str

    def sessions(self) -> Iterable[Session]: ...

    def counters(self) -> dict[str, int]: ...


Formatter = Callable[[statemachine.Result, int], bytes]
Handler = Callable[[Session, list[bytes]], Any]


@dataclass(frozen=True, slots=True)
class Spec:
    kind: int
    arity: int  # Redis style: n exact, -n at least n (the name included)
    fn: Handler
    flags: tuple[str, ...]
    keys: tuple[int, int, int]  # first, last, step


def _int(b: bytes, what: str = "value is not an integer or out of range") -> int:
    try:
        return int(b)
    except ValueError:
        raise CommandError(f"ERR {what}") from None


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class Commands:
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
        return resp.OK

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

    def hello(self, s: Session, a: list[bytes]) -> bytes:
        proto = s.proto
        i = 1
        if len(a) > 1:
            try:
                proto = int(a[1])
            except ValueError:
                raise CommandError("ERR Protocol version is not an integer or out of range") from None
            if proto not in (2, 3):
                raise CommandError("NOPROTO unsupported protocol version")
            i = 2
        name = None
        while i < len(a):
            opt = a[i].upper()
            if opt == b"AUTH" and i + 2 < len(a):
                i += 3  # access is by uid (SO_PEERCRED); credentials are accepted and ignored
            elif opt == b"SETNAME" and i + 1 < len(a):
                name = _client_name(a[i + 1])
                i += 2
            else:
                raise CommandError(f"ERR Syntax error in HELLO option '{_text(a[i])}'")
        s.proto = proto
        if name is not None:
            s.name = name
        return resp.value(
            {
                "server": "redis",
                "version": REDIS_VERSION,
                "proto": proto,
                "id": s.id,
                "mode": "standalone",
                "role": "master",
                "modules": [],
                "kvstore": __version__,
            },
            proto,
        )

    def client(self, s: Session, a: list[bytes]) -> bytes:
        sub = a[1].upper()
        if sub == b"SETNAME" and len(a) == 3:
            s.name = _client_name(a[2])
            return resp.OK
        if sub == b"GETNAME" and len(a) == 2:
            return resp.bulk_or_null(s.name.encode() if s.name else None, s.proto)
        if sub == b"ID" and len(a) == 2:
            return resp.integer(s.id)
        if sub == b"SETINFO" and len(a) == 4:
            attr = a[2].upper()
            if attr == b"LIB-NAME":
                s.lib_name = _client_name(a[3])
            elif attr == b"LIB-VER":
                s.lib_ver = _client_name(a[3])
            else:
                raise CommandError(f"ERR Unrecognized option '{_text(a[2])}'")
            return resp.OK
        if sub == b"INFO" and len(a) == 2:
            return resp.bulk(self._client_line(s).encode())
        if sub == b"LIST":
            return resp.bulk("".join(self._client_line(x) for x in self.server.sessions()).encode())
        if sub in (b"NO-EVICT", b"NO-TOUCH") and len(a) == 3:
            return resp.OK
        if sub == b"REPLY" and len(a) == 3 and a[2].upper() == b"ON":
            return resp.OK
        raise CommandError(
            f"ERR unknown subcommand or wrong number of arguments for '{_text(a[1])}'. Try CLIENT HELP."
        )

    def _client_line(self, s: Session) -> str:
        age = int(time.monotonic() - s.created)
        return (
            f"id={s.id} addr={self.server.path}:0 laddr={self.server.path}:0 fd=-1 name={s.name} age={age} "
            f"idle=0 flags={'r' if s.readonly else 'N'} db=0 sub=0 psub=0 ssub=0 multi=-1 "
            f"cmd={s.last_cmd.lower()} user=default lib-name={s.lib_name} lib-ver={s.lib_ver} "
            f"resp={s.proto} uid={s.uid} pid={s.pid}\n"
        )

    def command(self, s: Session, a: list[bytes]) -> bytes:
        sub = a[1].upper() if len(a) > 1 else b""
        names = sorted({n.upper() for n in self.table})
        if sub == b"":
            return resp.array([self._command_info(n, s.proto) for n in names])
        if sub == b"COUNT":
            return resp.integer(len(names))
        if sub == b"INFO":
            want = [n.upper() for n in a[2:]] or names
            return resp.array(
                [self._command_info(n, s.proto) if n in names else resp.null(s.proto) for n in want]
            )
        if sub == b"DOCS":
            return resp.map_reply([], s.proto)
        if sub == b"LIST":
            return resp.bulk_array([n.lower() for n in names], s.proto)
        if sub == b"GETKEYS":
            spec = self.lookup(a[2:])
            first, last, step = spec.keys
            args = a[2:]
            if first == 0:
                raise CommandError("ERR The command has no key arguments")
            stop = len(args) if last < 0 else last + 1
            return resp.bulk_array(args[first:stop:step], s.proto)
        raise CommandError(f"ERR unknown subcommand '{_text(a[1])}'. Try COMMAND HELP.")

    def _command_info(self, name: bytes, proto: int) -> bytes:
        spec = self.table[name]
        first, last, step = spec.keys
        return resp.value(
            [name.lower(), spec.arity, list(spec.flags), first, last, step, [], [], [], []], proto
        )

    def config(self, s: Session, a: list[bytes]) -> bytes:
        sub = a[1].upper()
        if sub == b"GET" and len(a) >= 3:
            known = {"save": "", "appendonly": "no", "databases": "1", "maxmemory": "0", "port": "0"}
            known["maxclients"] = str(self.limits.max_clients)
            known["proto-max-bulk-len"] = str(self.limits.max_value)
            pairs = []
            for k, v in known.items():
                if any(compile_glob(p.lower())(k.encode()) for p in a[2:]):
                    pairs.append((resp.bulk(k.encode()), resp.bulk(v.encode())))
            return resp.map_reply(pairs, s.proto)
        if sub in (b"SET", b"RESETSTAT", b"REWRITE"):
            raise CommandError("ERR not supported: CONFIG " + _text(sub))
        raise CommandError(f"ERR unknown subcommand '{_text(a[1])}'. Try CONFIG HELP.")

    def info(self, s: Session, a: list[bytes]) -> bytes:
        want = {x.lower().decode("latin-1") for x in a[1:]}
        everything = not want or want & {"all", "everything", "default"}
        sections: list[tuple[str, dict[str, Any]]] = []
        c = self.server.counters()
        sections.append(
            (
                "server",
                {
                    "redis_version": f"{REDIS_VERSION}-kvstore",
                    "redis_mode": "standalone",
                    "kvstore_version": __version__,
                    "node": self.backend.node_name,
                    "process_id": os.getpid(),
                    "unix_socket": self.server.path,
                    "uptime_in_seconds": int(time.monotonic() - self.server.started),
                    "uptime_in_days": int((time.monotonic() - self.server.started) // 86400),
                },
            )
        )
        sections.append(
            ("clients", {"connected_clients": c["connected_clients"], "maxclients": self.limits.max_clients})
        )
        sections.append(("stats", {k: v for k, v in c.items() if k != "connected_clients"}))
        try:
            extra = self.backend.info()
        except Exception as e:  # INFO must answer even when the node is unwell
            extra = {"errors": {"backend_info": str(e)}}
        sections += list(extra.items())
        if everything or "keyspace" in want:
            sections.append(("keyspace", {"db0": f"keys={self.backend.count()},expires=0,avg_ttl=0"}))
        lines: list[str] = []
        for title, fields in sections:
            if not everything and title.lower() not in want:
                continue
            if lines:
                lines.append("")
            lines.append("# " + title.capitalize())
            lines += [f"{k}:{_info_value(v)}" for k, v in fields.items()]
        return resp.bulk(("\r\n".join(lines) + "\r\n").encode())


def _info_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return str(v).replace("\r", " ").replace("\n", " ")


def _client_name(b: bytes) -> str:
    if any(c <= 32 or c > 126 for c in b):
        raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")
    return b.decode("ascii")


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
