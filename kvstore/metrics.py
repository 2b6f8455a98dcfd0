"""Prometheus metrics of a node, served over HTTP on the node's metrics port.

Gauges that mirror state the node already keeps (term, role, indexes, cache counters)
are read at scrape time by a collector, so they can never drift; events (requests,
proposals, fsyncs, batch sizes) are counted where they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

ROLES = ("leader", "follower", "candidate", "precandidate", "learner")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class _StateCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], cache_stats: Callable[[], dict[str, Any]],
                 clients: Callable[[], int], node: str) -> None:
        self.status = status
        self.cache_stats = cache_stats
        self.clients = clients
        self.node = node

    def collect(self) -> Iterable[Any]:
        s = self.status()
        for name, key, doc in (("term", "term", "Current Raft term"),
                               ("commit_index", "commit_index", "Highest log index known committed"),
                               ("applied_index", "applied_index", "Highest log index applied to LMDB"),
                               ("last_index", "last_index", "Last index in this node's log"),
                               ("snapshot_index", "snapshot_index", "Index of the latest snapshot"),
                               ("log_length", "log_length", "Entries in the durable log")):
            g = GaugeMetricFamily(f"kvstore_raft_{name}", doc, labels=["node"])
            g.add_metric([self.node], float(s.get(key) or 0))
            yield g
        g = GaugeMetricFamily("kvstore_raft_role", "1 for this node's current role", labels=["node", "role"])
        for r in ROLES:
            g.add_metric([self.node, r], 1.0 if s.get("role") == r else 0.0)
        yield g
        g = GaugeMetricFamily("kvstore_raft_proposals_in_flight", "Writes waiting to commit", labels=["node"])
        g.add_metric([self.node], float(s.get("proposals_in_flight", 0)))
        yield g
        g = GaugeMetricFamily("kvstore_connected_clients", "Connections on the UNIX socket", labels=["node"])
        g.add_metric([self.node], float(self.clients()))
        yield g
        cs = self.cache_stats()
        for key in ("hits", "misses", "evictions", "lock_recoveries"):
            c = CounterMetricFamily(f"kvstore_cache_{key}", f"Shared-memory cache {key.replace('_', ' ')}",
                                    labels=["node"])
            c.add_metric([self.node], float(cs.get(key, 0)))
            yield c
        g = GaugeMetricFamily("kvstore_cache_entries", "Entries in the shared-memory cache", labels=["node"])
        g.add_metric([self.node], float(cs.get("entries", 0)))
        yield g


class NodeMetrics:
    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kvstore_requests", "Client requests by command and outcome",
                                ["command", "outcome"], registry=r)
        self.request_latency = Histogram("kvstore_request_seconds", "Client request latency by command",
                                         ["command"], buckets=LATENCY_BUCKETS, registry=r)
        self.proposals = Counter("kvstore_raft_proposals", "Entries proposed by this node as leader", registry=r)
        self.batch_entries = Histogram("kvstore_raft_batch_entries", "Entries persisted per fsync (group commit)",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=r)
        self.fsync = Histogram("kvstore_raft_fsync_seconds", "Time to persist one Ready (one fsync)",
                               buckets=LATENCY_BUCKETS, registry=r)
        self.apply = Histogram("kvstore_apply_seconds", "Time to apply one batch of committed entries",
                               buckets=LATENCY_BUCKETS, registry=r)
        self.snapshots = Counter("kvstore_snapshots", "Snapshots taken, sent, installed, and streams resumed after a break",
                                 ["kind"], registry=r)
        self._counters: dict[tuple[str, str], Any] = {}
        self._latencies: dict[str, Any] = {}
        self.elections = Counter("kvstore_raft_leader_changes", "Leader changes seen", registry=r)

    def count(self, command: str, outcome: str, seconds: float | None = None, n: int = 1) -> None:
        """n requests served. Labelled children are looked up once: this is on every GET."""
        c = self._counters.get((command, outcome))
        if c is None:
            c = self._counters[(command, outcome)] = self.requests.labels(command, outcome)
        c.inc(n)
        if seconds is not None:
            h = self._latencies.get(command)
            if h is None:
                h = self._latencies[command] = self.request_latency.labels(command)
            h.observe(seconds)

    def watch(self, status: Callable[[], dict[str, Any]], cache_stats: Callable[[], dict[str, Any]],
              clients: Callable[[], int]) -> None:
        self.registry.register(_StateCollector(status, cache_stats, clients, self.node))

    def serve(self, host: str, port: int) -> Any:
        return start_http_server(port, addr=host, registry=self.registry)
