"""One drill, start to end: a fresh cluster, a workload, faults, checks, a report, teardown.

1. a new cluster in DIR/drills/<scenario>-<seed>/, each node dialing its peers through
   the network under test (the proxy mesh, or network namespaces);
2. a leader, then the workload (N clients over RESP and gRPC);
3. the scenario's faults, for most of the duration; then everything healed and the
   workload left running to see the cluster recover;
4. the workload stopped, the cluster given time to settle, a final linearizable read of
   every key;
5. the checks (linearizability with a time budget, lost writes, availability), the
   history and the report written;
6. always, even on an error or Ctrl-C: every node stopped, sockets and shared memory
   removed, the proxies closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from kvstore import config as cfgmod
from kvstore.cluster import manage
from kvstore.config import ClusterConfig, NodeConfig, RaftSettings
from kvstore.drills import checker, report
from kvstore.drills.faults import DrillCluster, FaultLog, Network
from kvstore.drills.history import History, Op
from kvstore.drills.scenarios import DrillContext, Scenario, ScenarioSkipped, get
from kvstore.drills.workload import Workload, final_reads
from kvstore.errors import Unavailable, UsageError

NET_MODES = ("proxy", "netns")


@dataclass
class DrillOptions:
    scenario: str
    base_dir: Path  # the --dir of the CLI: drills go to base_dir/drills/<scenario>-<seed>/
    duration: float = 10.0
    clients: int = 10
    seed: int | None = None
    report_dir: Path | None = None
    net: str = "proxy"
    nodes: int = 3
    keys: int = 5
    client_timeout: float = 3.0
    request_timeout_ms: int = 2000  # the nodes' own deadline: shorter than the clients', so they say why
    check_budget_s: float = 30.0
    recover_timeout: float = 30.0
    node_env: dict[str, str] = field(default_factory=dict)  # extra environment for every node
    keep_data: bool = False  # keep the nodes' LMDB files after the drill
    write_report: bool = True  # the HTML page (matplotlib: a few seconds); the history is always saved


@dataclass
class DrillResult:
    scenario: str
    seed: int
    net: str
    net_detail: str
    nodes: int
    clients: int
    duration_s: float
    ops: dict[str, int]
    faults: int
    linearizable: bool | None
    lost_writes: int
    max_unavailable_ms: float
    recovered: bool
    recovery: str
    final_reads: dict[str, str | None]
    unread_keys: list[str]
    check: dict[str, Any]
    lost: list[dict[str, Any]]
    report: str | None
    history: str
    dir: str
    availability: dict[str, Any] = field(repr=False, default_factory=dict)
    verdict: checker.Verdict | None = field(repr=False, default=None)
    lost_ops: list[Op] = field(repr=False, default_factory=list)

    @property
    def failed(self) -> bool:
        return self.linearizable is False or self.lost_writes > 0

    def to_json(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("availability", "verdict", "lost_ops")
        }
        d["check"] = {k: v for k, v in self.check.items() if k != "keys"}
        d["max_unavailable_ms"] = round(self.max_unavailable_ms, 1)
        d["duration_s"] = round(self.duration_s, 3)
        return d


def drill_config(nodes: int, spares: int, request_timeout_ms: int, host: str = "127.0.0.1") -> ClusterConfig:
    ports = listen_ports(2 * (nodes + spares), host)
    ns = [NodeConfig(name=f"n{i + 1}", initial=i < nodes, grpc_port=ports[2 * i], metrics_port=ports[2 * i + 1])
          for i in range(nodes + spares)]
    return ClusterConfig(name="drill", nodes=tuple(ns), raft=RaftSettings(request_timeout_ms=request_timeout_ms))


def listen_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Free ports below the kernel's ephemeral range.

    A node killed by a drill must find its port free when it restarts; a port from the
    ephemeral range (what bind(0) hands out) may meanwhile become the local end of some
    outgoing connection (a client's, a proxy's) or a proxy's listener.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo, hi = 10000, max(10000 + 10 * n, low - 1)
    rng = random.SystemRandom()
    out: list[int] = []
    for _ in range(50 * n):
        if len(out) == n:
            return out
        port = rng.randrange(lo, hi)
        if port in out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        out.append(port)
    raise Unavailable(f"no {n} free ports between {lo} and {hi} on {host}")


def make_network(mode: str, nodes: dict[str, str], seed: int) -> Network:
    if mode == "proxy":
        from kvstore.drills.proxy import ProxyMesh

        return ProxyMesh(nodes, seed=seed)
    if mode == "netns":
        from kvstore.drills.netns import NetnsNetwork

        return NetnsNetwork(nodes, seed=seed)
    raise UsageError(f"--net must be one of {', '.join(NET_MODES)}, not {mode!r}")


class Progress:
    """The live line while a drill runs (on stderr), and one line per event."""

    def __init__(self, console: Console | None, duration: float) -> None:
        self.console = console
        self.duration = duration
        self.t0 = self.began = time.monotonic()  # t0: the workload's start, once it starts
        self.workload: Workload | None = None
        self.faults: FaultLog | None = None
        self.phase = "starting"
        self._live: Live | None = None

    def say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(f"[dim]{time.monotonic() - self.began:6.1f}s[/] {msg}", highlight=False)

    def render(self) -> Text:
        el = time.monotonic() - self.t0
        c = self.workload.snapshot() if self.workload else {"ok": 0, "failed": 0, "unknown": 0}
        t = Text()
        width = 20
        done = min(1.0, el / self.duration) if self.duration > 0 else 1.0
        t.append("[" + "#" * int(done * width) + "-" * (width - int(done * width)) + "] ", style="cyan")
        t.append(f"{el:5.1f}/{self.duration:.0f}s  ")
        t.append(f"ok {c['ok']}", style="green")
        t.append("  ")
        t.append(f"failed {c['failed']}", style="yellow")
        t.append("  ")
        t.append(f"unknown {c['unknown']}", style="magenta")
        t.append(f"  | {self.phase}")
        if self.faults is not None:
            t.append(f" | fault: {self.faults.now()}", style="bold red" if self.faults.current else "dim")
        return t

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if self.console is None or not self.console.is_terminal:
            yield
            return
        with Live(self.render(), console=self.console, refresh_per_second=4, transient=True) as live:
            stop = threading.Event()

            def refresh() -> None:
                while not stop.wait(0.25):
                    live.update(self.render())

            th = threading.Thread(target=refresh, daemon=True)
            th.start()
            try:
                yield
            finally:
                stop.set()
                th.join(1.0)


def _prepare_dir(d: Path) -> None:
    if d.exists():
        if manage.config_path(d).exists():
            with contextlib.suppress(Exception):
                manage.down(d, grace=2.0)
        shutil.rmtree(d)
    d.mkdir(parents=True, mode=0o700)


def run_drill(opts: DrillOptions, console: Console | None = None,
              on_start: Callable[[str], None] | None = None) -> DrillResult:
    """Run one drill; raises ScenarioSkipped, UsageError, Unavailable; always tears down."""
    try:
        scenario: Scenario = get(opts.scenario)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    reason = scenario.available()
    if reason:
        raise ScenarioSkipped(f"{scenario.name}: skipped: {reason}")
    if opts.net not in NET_MODES:
        raise UsageError(f"--net must be one of {', '.join(NET_MODES)}, not {opts.net!r}")
    if opts.nodes < 3:
        raise UsageError("a drill needs at least 3 nodes")
    if opts.duration <= 0 or opts.clients < 1:
        raise UsageError("--duration must be positive and --clients at least 1")
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    rng = random.Random(seed)
    drill_dir = (opts.base_dir / "drills" / f"{scenario.name}-{seed}").absolute()
    if opts.net == "netns":
        from kvstore.drills.netns import check_netns_usable

        check_netns_usable()
    _prepare_dir(drill_dir)
    prog = Progress(console, opts.duration)

    template = drill_dir / "drill.toml"
    template.write_text(cfgmod.dump(drill_config(opts.nodes, scenario.spares, opts.request_timeout_ms)))
    cfg = manage.create(drill_dir, opts.nodes + scenario.spares, template)
    net: Network | None = None
    cluster: DrillCluster | None = None
    workload: Workload | None = None
    try:
        net = make_network(opts.net, {n.name: n.grpc_address for n in cfg.nodes}, seed)
        hosts: dict[str, str] | None = getattr(net, "hosts", None)
        if hosts:  # netns: every node listens on its namespace's address
            cfg = dataclasses.replace(
                cfg, nodes=tuple(dataclasses.replace(n, host=hosts[n.name]) for n in cfg.nodes)
            )
            manage.config_path(drill_dir).write_text(cfgmod.dump(cfg))
            cfg = manage.load(drill_dir)
        prog.say(f"drill [bold]{scenario.name}[/] seed {seed}: {opts.nodes} nodes, {opts.clients} clients, "
                 f"{opts.duration:g}s; network: {net.describe()}")
        prog.say(f"cluster in {drill_dir}")
        if on_start:
            on_start(str(drill_dir))
        cluster = DrillCluster(drill_dir, cfg, net, opts.node_env, log=prog.say)
        cluster.start_all()
        leader = cluster.leader(timeout=30.0)
        if leader is None:
            raise Unavailable(f"the drill's cluster elected no leader within 30s ({_diagnose(cluster)}); "
                              f"see {drill_dir}/*/node.log")
        prog.say(f"leader: {leader}")

        history = History()
        faults = FaultLog(history)
        workload = Workload(history, cluster.targets(), clients=opts.clients, keys=opts.keys, seed=seed,
                            timeout=opts.client_timeout, serving=len(cluster.members))
        prog.workload, prog.faults = workload, faults
        prog.t0 = time.monotonic()
        t_end = prog.t0 + opts.duration
        warmup = min(1.0, 0.15 * opts.duration)
        ctx = DrillContext(cluster=cluster, net=net, history=history, faults=faults, rng=rng,
                           duration=opts.duration, fault_until=t_end - max(0.5, 0.2 * opts.duration),
                           say=lambda m: prog.say(f"fault: {m}"))
        with prog.live():
            workload.start()
            prog.phase = "warming up"
            ctx.sleep(warmup)
            prog.phase = "faults"
            try:
                scenario.run(ctx)
            finally:
                prog.phase = "healing"
                cluster.restore()
            prog.phase = "recovering under load"
            ctx.sleep(t_end - time.monotonic())
            prog.phase = "stopping clients"
            stuck = workload.stop()
            history.finish()
        if stuck:
            prog.say(f"clients still blocked after stop: {', '.join(stuck)}")
        c = workload.snapshot()
        prog.say(f"workload done: {c['ok']} ok, {c['failed']} failed, {c['unknown']} unknown; "
                 f"{faults.count} fault(s)")

        recovered, why = cluster.wait_recovered(opts.recover_timeout)
        prog.say(("recovered: " if recovered else "[red]did not recover[/]: ") + why)
        finals = final_reads(history, cluster.targets(), workload.keys, client=opts.clients,
                             deadline=time.monotonic() + (20.0 if recovered else 5.0),
                             timeout=opts.client_timeout)
        unread = [k for k in workload.keys if k not in finals]
        if unread:
            prog.say(f"[red]final reads failed[/] for {', '.join(unread)}: their lost writes go unjudged")

        prog.say(f"checking {len(history.ops)} operations (budget {opts.check_budget_s:g}s)...")
        verdict = checker.check(history, budget_s=opts.check_budget_s)
        lost = checker.lost_writes(history, finals)
        avail = checker.availability(history)
        hist_path = history.save(drill_dir / "history.jsonl")
        result = DrillResult(
            scenario=scenario.name, seed=seed, net=net.kind, net_detail=net.describe(), nodes=opts.nodes,
            clients=opts.clients, duration_s=history.duration, ops=history.counts(), faults=faults.count,
            linearizable=verdict.linearizable, lost_writes=len(lost),
            max_unavailable_ms=float(avail["max_unavailable_ms"]), recovered=recovered, recovery=why,
            final_reads=finals, unread_keys=unread, check=verdict.to_dict(),
            lost=[op.to_dict() for op in lost], report=None, history=str(hist_path), dir=str(drill_dir),
            availability=avail,
            verdict=verdict,
            lost_ops=lost,
        )
        if opts.write_report:
            report_dir = (opts.report_dir or drill_dir / "report").absolute()
            result.report = _write_report(report_dir, history, verdict, lost, avail, result)
        (drill_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
        return result
    finally:
        with _interrupts_deferred():  # a second Ctrl-C must not leave nodes behind
            if workload is not None:
                workload.stop(timeout=opts.client_timeout + 2)
            if cluster is not None:
                cluster.teardown()
            elif manage.config_path(drill_dir).exists():
                with contextlib.suppress(Exception):
                    manage.down(drill_dir, grace=2.0)
            if net is not None:
                net.close()
            if not opts.keep_data:
                for home in [drill_dir / n.name for n in cfg.nodes] + list(drill_dir.glob("*.removed-*")):
                    shutil.rmtree(home / "data", ignore_errors=True)


def _diagnose(cluster: DrillCluster) -> str:
    """Each node's state, and the last log line of those not serving."""
    parts = []
    for r in cluster.status()["nodes"]:
        if r["name"] not in cluster.members:
            continue
        part = f"{r['name']} {r['role']}"
        if r["role"] in ("down", "starting"):
            with contextlib.suppress(OSError, IndexError):
                last = (cluster.data_dir / r["name"] / "node.log").read_text().strip().splitlines()[-1]
                part += f": {last[-160:]}"
        parts.append(part)
    return "; ".join(parts)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while tearing down; re-raise Ctrl-C afterwards if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if got:
        raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a CI timeout) tears the drill down like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _write_report(out: Path, history: History, verdict: checker.Verdict, lost: list[Any],
                  avail: dict[str, Any], result: DrillResult) -> str:
    meta = {k: v for k, v in result.to_json().items() if k not in ("check", "lost", "report")}
    return str(report.write_report(out, history, verdict=verdict, lost=lost, availability=avail, meta=meta))
