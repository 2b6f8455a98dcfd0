"""Failure drills: a workload against a live cluster, faults, a linearizability check, a report.

`kvstore drill list` / `kvstore drill run SCENARIO`; see runner.py for the flow.
`history` is the record a workload writes, `checker` judges it (linearizability per key,
lost writes, availability), `report` presents it (HTML page, terminal summary;
matplotlib is imported only when a page is written).
"""

from kvstore.drills.checker import KeyVerdict, Verdict, availability, check, lost_writes
from kvstore.drills.history import Fault, History, Op, OpKind, Outcome

__all__ = [
    "Fault",
    "History",
    "KeyVerdict",
    "Op",
    "OpKind",
    "Outcome",
    "Verdict",
    "availability",
    "check",
    "lost_writes",
]
