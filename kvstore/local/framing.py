"""Requests from bytes: hiredis parses, this module checks what hiredis cannot.

No hand parser: hiredis turns bytes into requests. But hiredis waits for all the bytes a
header announces before it returns anything (so `$999999999999` would hang the client
and buffer forever), and it allocates an array as soon as it reads `*N`. So we check
sizes ourselves, cheaply: the bytes of every request hiredis returns are counted (a
request's encoding is canonical, hiredis refuses any other), which tells whether a read
ends inside a request; only then, and for rare suspicious array headers, does
`FrameGuard` walk headers, never bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import hiredis

from kvstore.local.resp import CRLF, Limits

# An array header of 1,000,000 elements or more (8 MB for hiredis to allocate at once).
_SUSPECT = re.compile(rb"\*[1-9][0-9]{6}")
# A read holding exactly one `GET key` and nothing else: what a client that waits for
# each reply sends, the commonest request of all. One match recognises it, where hiredis
# and the checks around it cost about three times as much (~1 µs a request here, near a
# tenth of the node's CPU per unpipelined GET). Canonical encoding only (no leading
# zero in the length): anything else goes to hiredis as before.
_ONE_GET = re.compile(rb"\*2\r\n\$3\r\n(GET|get)\r\n\$([1-9][0-9]{0,2})\r\n(.*)\r\n\Z", re.DOTALL)


_GET_HEAD = b"*2\r\n$3\r\nGET\r\n$"  # a GET request up to its key's length
_GET_HEAD_LOWER = b"*2\r\n$3\r\nget\r\n$"
_GET_KEYLEN = len(_GET_HEAD)
_FIXED_PATTERNS = 64  # key lengths with a findall pattern of their own, at most


def plain_gets(max_key: int) -> Callable[[bytes], list[bytes] | None]:
    """A recogniser of reads that hold nothing but whole `GET key` requests (GET or get,
    canonical encoding, keys of 1..max_key bytes): what redis-benchmark and any client
    that pipelines reads sends. recognise(data) -> the keys in order, or None: anything
    else (another command, a cut request, a bad length), which hiredis parses.

    Every loop runs in C. The first request's key length L gives the size of a request;
    one request is checked by hand; more, when all have L-byte keys (redis-benchmark's,
    and most pipelines of one kind of key), by one `findall` of a pattern made for L:
    matches that do not overlap and add up to the whole read cover it exactly. Keys of
    mixed lengths: one split at CRLF, and the pieces must come in fives that say
    `*2`, `$3`, `GET`, `$<len>`, `<key>` (a key holding CRLF fails the length compare,
    and hiredis takes that read).
    """
    # lens[n]: the length line of an n-byte key; n = 0 never matches (an empty key is an
    # error reply), n > max_key is an IndexError (over the limit: an error reply too).
    lens = [b"$%d" % n for n in range(max_key + 1)]
    lens[0] = b"-"
    length_line = lens.__getitem__
    length_of = {b"%d" % n: n for n in range(1, max_key + 1)}.get  # canonical digits only
    digits_end = _GET_KEYLEN + len(str(max_key)) + 2
    patterns: dict[int, Callable[[bytes], list[bytes]]] = {}

    def mixed(data: bytes) -> list[bytes] | None:
        p = data.split(CRLF)
        if p.pop() or len(p) % 5 or not p:
            return None
        n = len(p) // 5
        keys = p[4::5]
        try:
            if (
                p[0::5].count(b"*2") == n
                and p[1::5].count(b"$3") == n
                and p[3::5] == list(map(length_line, map(len, keys)))
            ):
                names = p[2::5]
                if (g := names.count(b"GET")) == n or g + names.count(b"get") == n:
                    return keys
        except IndexError:
            pass
        return None

    def recognise(data: bytes) -> list[bytes] | None:
        if not (data.startswith(_GET_HEAD) or data.startswith(_GET_HEAD_LOWER)):
            return None
        e = data.find(CRLF, _GET_KEYLEN, digits_end)
        if e < 0 or (size := length_of(data[_GET_KEYLEN:e])) is None:
            return None
        end = e + size + 4  # one request's bytes
        if end == len(data):
            return [data[e + 2 : -2]] if data.endswith(CRLF) else None
        if end > len(data):
            return None
        findall = patterns.get(size)
        if findall is None:
            if len(patterns) >= _FIXED_PATTERNS:
                return mixed(data)
            findall = patterns[size] = re.compile(
                rb"\*2\r\n\$3\r\n(?:GET|get)\r\n\$%d\r\n(.{%d})\r\n" % (size, size), re.DOTALL
            ).findall
        keys = findall(data)
        if len(keys) * end == len(data):
            return keys
        return mixed(data)

    return recognise


class RequestParser:
    """Bytes in, requests (lists of bytes) out; one per connection."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.reader = hiredis.Reader()
        self.guard = FrameGuard(limits)
        self.carry = 0  # bytes of an incomplete request held by hiredis

    def feed(self, data: bytes, frames: list[Any]) -> None:
        """Append the complete requests in `data` to `frames`; FrameError after the last
        good one if the bytes break the protocol or a limit."""
        if not self.carry and (m := _ONE_GET.match(data)) is not None:
            name, size, key = m.groups()
            if len(key) == int(size):
                frames.append([name, key])
                return
        reader = self.reader
        start = resolved = 0
        if self.carry:
            # An incomplete request is pending: check the rest of its headers before
            # hiredis sees them (a huge `*N` or `$N` would make it allocate or wait).
            end = self.guard.feed(data)
            if end < 0:
                self.carry += len(data)
                if self.carry > self.limits.max_request:
                    raise FrameError("request too large")
                reader.feed(data)
                return
            self.carry = 0
            start, resolved = end, 1
        failure = None
        if _SUSPECT.search(data, start):
            # hiredis allocates an array as soon as it reads `*N`: walk these headers first.
            bad = _first_bad_frame(data, start, self.guard)
            if bad is not None:
                pos, failure = bad
                data = data[:pos]  # the requests before it are still answered
        reader.feed(data)
        gets, append = reader.gets, frames.append
        first = len(frames)
        try:
            while (f := gets()) is not False:
                append(f)
        except hiredis.ProtocolError as e:
            failure = str(e).removeprefix("Protocol error, ")
        except MemoryError:
            failure = "request too large"
        try:
            if resolved:
                if len(frames) == first:
                    raise FrameError("lost track of the request stream")
                frame_size(frames[first])  # checks it is a list of bytes
            rest = len(data) - start
            # Does a read end inside a request? The requests hiredis returned must
            # account for every byte; if not, the guard checks the rest's headers.
            used = 0
            skip = first + resolved
            for f in frames[skip:] if skip else frames:
                # frame_size(f), with a shortcut for the commonest shape (GET key): this
                # runs for every request, and a loop over the arguments costs more.
                if type(f) is list and len(f) == 2:
                    a, b = f
                    if type(a) is bytes and type(b) is bytes and len(a) < 10 and len(b) < 100:
                        used += 16 + len(a) + len(b) + (len(b) >= 10)
                        continue
                used += frame_size(f)  # also checks it is a list of bytes
            if used != rest and failure is None:
                if used > rest:
                    raise FrameError("lost track of the request stream")
                self.carry = rest - used
                if self.carry > self.limits.max_request:
                    raise FrameError("request too large")
                self.guard.reset()
                if self.guard.feed(data, len(data) - self.carry) >= 0:
                    raise FrameError("lost track of the request stream")
        except FrameError:
            # Keep the well-formed requests before the first bad one.
            for i in range(first, len(frames)):
                if not _well_formed(frames[i]):
                    del frames[i:]
                    break
            raise
        if failure is not None:
            raise FrameError(failure)


class FrameError(Exception):
    """A request frame the server refuses; the message follows `Protocol error: `."""


_MAX_HEADER = 24  # '*' or '$', up to 20 digits, CRLF


class FrameGuard:
    """Walks the headers of the one request frame hiredis holds incomplete.

    `feed` checks each header as it arrives (array length, element type, bulk length),
    skipping bulk bodies without copying them, and returns the offset in `data` where
    the frame ends, or -1 while it is still incomplete. It raises FrameError on a
    header over the limits, a nested or non-bulk element, or a malformed number.
    """

    __slots__ = ("head", "elems", "skip", "size", "max_args", "max_bulk")

    def __init__(self, limits: Limits) -> None:
        self.max_args = limits.max_args
        self.max_bulk = limits.max_request
        self.reset()

    def reset(self) -> None:
        self.head = b""  # a header line split across reads
        self.elems = -1  # elements still to come; -1: the array header itself
        self.skip = 0  # body bytes (and CRLF) still to skip
        self.size = 0  # declared size of the frame so far

    def feed(self, data: bytes, start: int = 0) -> int:
        pos = start
        n = len(data)
        while True:
            if self.skip:
                if pos + self.skip > n:
                    self.skip -= n - pos
                    return -1
                pos += self.skip
                self.skip = 0
            if self.elems == 0:
                self.reset()
                return pos
            if pos >= n:
                return -1
            if self.head:
                need = _MAX_HEADER - len(self.head)
                chunk = self.head + data[pos : pos + need]
                e = chunk.find(CRLF)
                if e < 0:
                    if len(chunk) >= _MAX_HEADER:
                        raise FrameError("too big header")
                    self.head = chunk
                    return -1
                line = chunk[:e]
                pos += e + 2 - len(self.head)
                self.head = b""
            else:
                e = data.find(CRLF, pos, pos + _MAX_HEADER)
                if e < 0:
                    if n - pos >= _MAX_HEADER:
                        raise FrameError("too big header")
                    self.head = data[pos:]
                    return -1
                line = data[pos:e]
                pos = e + 2
            self._header(line)

    def _header(self, line: bytes) -> None:
        kind = line[:1]
        try:
            num = int(line[1:])
        except ValueError:
            raise FrameError("invalid length") from None
        if self.elems < 0:
            if kind != b"*":
                raise FrameError(f"expected '*', got '{kind.decode('latin-1')}'")
            if num > self.max_args:
                raise FrameError("invalid multibulk length")
            self.elems = max(num, 0)
            return
        if kind != b"$":
            raise FrameError(f"expected '$', got '{kind.decode('latin-1')}'")
        if num < 0 or num > self.max_bulk:
            raise FrameError("invalid bulk length")
        self.size += num
        if self.size > self.max_bulk:
            raise FrameError("request too large")
        self.elems -= 1
        self.skip = num + 2


def frame_size(args: object) -> int:
    """Bytes of the canonical RESP encoding of a request (hiredis refuses any other).

    Raises FrameError unless `args` is what a request must be: a list of bulk strings.
    """
    if type(args) is not list:
        raise FrameError("expected an array of bulk strings")
    n = len(args)
    s = 4 if n < 10 else 3 + len(str(n))
    for a in args:
        if type(a) is not bytes:
            raise FrameError("expected an array of bulk strings")
        la = len(a)
        s += la + (6 if la < 10 else 7 if la < 100 else 5 + len(str(la)))
    return s


def _well_formed(f: Any) -> bool:
    return type(f) is list and all(type(x) is bytes for x in f)


def _first_bad_frame(data: bytes, pos: int, guard: FrameGuard) -> tuple[int, str] | None:
    """Offset and reason of the first request in data[pos:] whose headers break a limit."""
    guard.reset()
    try:
        while pos < len(data):
            try:
                end = guard.feed(data, pos)
            except FrameError as e:
                return pos, str(e)
            if end < 0:
                return None
            pos = end
        return None
    finally:
        guard.reset()
