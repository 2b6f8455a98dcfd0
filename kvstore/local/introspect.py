"""Introspection commands: HELLO, CLIENT, COMMAND, CONFIG, INFO.

Enough of each for redis-cli, redis-py and redis-benchmark to be at home; see the
contract ("Local protocol") for what the server promises.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kvstore import __version__
from kvstore.local import resp
from kvstore.local.backend import Backend
from kvstore.local.cmdbase import REDIS_VERSION, CommandError, ServerView, Session, Spec, _text
from kvstore.local.glob import compile_glob
from kvstore.local.resp import Limits


class Introspection:
    backend: Backend
    limits: Limits
    server: ServerView
    table: dict[bytes, Spec]

    def lookup(self, args: list[bytes]) -> Spec:
        raise NotImplementedError

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
            f"cmd={s.last_cmd.decode('latin-1')[:32].lower()} user=default lib-name={s.lib_name} lib-ver={s.lib_ver} "
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
