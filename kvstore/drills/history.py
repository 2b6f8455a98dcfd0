"""The record of a drill: every operation a client invoked, how it ended, and the faults.

A workload (threads or asyncio tasks) calls `History.invoke` just before sending a
request and `History.complete` when the answer (or the give-up) comes back; the fault
injector calls `fault_start` / `fault_end`. Times are `time.monotonic()` seconds.

Serialised as one JSON document (`to_json`) or as JSON lines (`to_jsonl`: a header
line, then one line per op and per fault); `from_json` reads either.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class OpKind(StrEnum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    SWAP = "swap"  # SET key value GET: writes value, returns the old value (None when absent)


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # certainly not applied
    UNKNOWN = "unknown"  # may have been applied, at any time after invocation, or never


MUTATIONS = frozenset({OpKind.WRITE, OpKind.DELETE, OpKind.SWAP})


@dataclass(slots=True)
class Op:
    id: int
    client: int
    kind: OpKind
    key: str
    value: str | None  # the value written (WRITE, SWAP)
    invoke: float
    complete: float | None  # None: never returned
    outcome: Outcome
    result: str | None  # READ: the value read; SWAP: the old value; None = absent
    node: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = str(self.kind)
        d["outcome"] = str(self.outcome)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        return cls(
            id=int(d["id"]),
            client=int(d["client"]),
            kind=OpKind(d["kind"]),
            key=str(d["key"]),
            value=d.get("value"),
            invoke=float(d["invoke"]),
            complete=None if d.get("complete") is None else float(d["complete"]),
            outcome=Outcome(d["outcome"]),
            result=d.get("result"),
            node=d.get("node"),
            error=d.get("error"),
        )

    @property
    def latency(self) -> float | None:
        return None if self.complete is None else self.complete - self.invoke

    def describe(self) -> str:
        """One short human line, e.g. `c3 swap k1 'v9' -> 'v7' ok`."""
        arg = f" {self.value!r}" if self.kind in (OpKind.WRITE, OpKind.SWAP) else ""
        res = (
            f" -> {self.result!r}"
            if self.kind in (OpKind.READ, OpKind.SWAP) and self.outcome == Outcome.OK
            else ""
        )
        return f"c{self.client} {self.kind} {self.key}{arg}{res} {self.outcome}"


@dataclass(slots=True)
class Fault:
    name: str
    start: float
    end: float | None = None  # None: never healed within the run
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fault:
        end = d.get("end")
        return cls(
            str(d["name"]), float(d["start"]), None if end is None else float(end), str(d.get("detail", ""))
        )


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    end: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- recording (thread-safe; fine from asyncio too: nothing here blocks) --

    def invoke(
        self, client: int, kind: OpKind | str, key: str, value: str | None = None, node: str | None = None
    ) -> int:
        now = time.monotonic()
        with self._lock:
            op_id = len(self.ops)
            self.ops.append(
                Op(op_id, client, OpKind(kind), key, value, now, None, Outcome.UNKNOWN, None, node)
            )
        return op_id

    def complete(
        self, op_id: int, outcome: Outcome | str, result: str | None = None, error: str | None = None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            op = self.ops[op_id]
            op.complete = now
            op.outcome = Outcome(outcome)
            op.result = result
            op.error = error

    def fault_start(self, name: str, detail: str = "") -> int:
        with self._lock:
            self.faults.append(Fault(name, time.monotonic(), None, detail))
            return len(self.faults) - 1

    def fault_end(self, index: int) -> None:
        with self._lock:
            self.faults[index].end = time.monotonic()

    def finish(self) -> None:
        self.end = time.monotonic()

    # -- views --

    @property
    def stop(self) -> float:
        """The end of the run: `end` when set, else the last time anything happened."""
        if self.end is not None:
            return self.end
        times = [self.start]
        for op in self.ops:
            times.append(op.invoke if op.complete is None else op.complete)
        for f in self.faults:
            times.append(f.start if f.end is None else f.end)
        return max(times)

    @property
    def duration(self) -> float:
        return self.stop - self.start

    def counts(self) -> dict[str, int]:
        c = {str(o): 0 for o in Outcome}
        for op in self.ops:
            c[str(op.outcome)] += 1
        return c

    def keys(self) -> list[str]:
        return sorted({op.key for op in self.ops})

    # -- serialisation --

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "ops": [op.to_dict() for op in self.ops],
            "faults": [f.to_dict() for f in self.faults],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_jsonl(self) -> str:
        lines = [json.dumps({"type": "history", "start": self.start, "end": self.end})]
        lines += [json.dumps({"type": "op", **op.to_dict()}) for op in self.ops]
        lines += [json.dumps({"type": "fault", **f.to_dict()}) for f in self.faults]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(
            ops=[Op.from_dict(o) for o in d.get("ops", [])],
            faults=[Fault.from_dict(f) for f in d.get("faults", [])],
            start=float(d.get("start", 0.0)),
            end=None if d.get("end") is None else float(d["end"]),
        )

    @classmethod
    def from_json(cls, text: str) -> History:
        """Read `to_json` or `to_jsonl` output."""
        text = text.strip()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # more than one document: JSON lines
        if isinstance(doc, dict) and doc.get("type") is None:
            return cls.from_dict(doc)
        hist: dict[str, Any] = {"ops": [], "faults": []}
        for line in text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            kind = rec.pop("type", "op")
            if kind == "history":
                hist.update(rec)
            elif kind == "fault":
                hist["faults"].append(rec)
            else:
                hist["ops"].append(rec)
        if "start" not in hist and hist["ops"]:
            hist["start"] = min(float(o["invoke"]) for o in hist["ops"])
        return cls.from_dict(hist)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_jsonl() if path.suffix == ".jsonl" else self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_json(Path(path).read_text())
