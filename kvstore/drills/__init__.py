"""Failure drills: a workload against a live cluster, faults, a linearizability check, a report.

`kvstore drill list` / `kvstore drill run SCENARIO`; see runner.py for the flow.
"""
