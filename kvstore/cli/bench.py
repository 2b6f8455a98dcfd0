"""`kvstore bench ...`: IPC against RPC on this machine, and the cluster against its peers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kvstore.errors import CheckFailed, UsageError


@click.group(help="Benchmarks: IPC mechanisms against RPC stacks, and the cluster against redis and etcd.")
def bench() -> None:
    pass


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[str], None]]:
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=quiet) as p:
        task = p.add_task("starting", total=total)
        first = [True]

        def step(text: str) -> None:
            if not first[0]:
                p.advance(task)
            first[0] = False
            p.update(task, description=text)

        yield step
        p.update(task, completed=total)


def _emit(result: dict[str, Any], as_json: bool, table: Any) -> None:
    from kvstore.bench.report import to_json

    if as_json:
        click.echo(to_json(result))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
        for t in table if isinstance(table, list) else [table]:
            console.print(t)
        rep = result.get("report", {})
        if rep:
            click.echo("report: " + ", ".join(str(v) for v in rep.values()))


@bench.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-results/ipc"), show_default=True, help="Where to write ipc.json and ipc.png.")
@click.option("--duration", type=float, default=None, help="Seconds per timed run  [default: 3; --quick: 0.15]")
@click.option("--clients", type=int, default=None, help="Client processes of the many-client run  [default: 8; --quick: 2]")
@click.option("--quick", is_flag=True, help="A few seconds in all: short runs, 2 clients, servers started together.")
@click.option("--only", default="", help="Comma-separated mechanisms (shm, shm-memo, pipe, fifo, mqueue, unix, tcp, "
                                        "grpc, grpc-stream, jsonrpc, xmlrpc, corba).")
@click.option("--keys", "nkeys", type=int, default=None, help="Keys stored  [default: 10000; --quick: 1000]")
def ipc(as_json: bool, report_dir: Path, duration: float | None, clients: int | None, quick: bool, only: str,
        nkeys: int | None) -> None:
    """IPC mechanisms against RPC stacks, for the same GET from another process.

    The GET (a 100-byte value by key, served by a second process) goes over shared memory,
    pipes, FIFOs, POSIX message queues, UNIX and TCP sockets, gRPC, JSON-RPC, XML-RPC and
    CORBA: latency p50/p99/p99.9 with 1 client, throughput with 1 and N clients, CPU per
    request of client and server. Every server is started and stopped here."""
    from kvstore.bench.common import command_line, sigterm_as_interrupt
    from kvstore.bench.ipc import MECHANISMS
    from kvstore.bench.ipc.runner import IpcOptions, run_ipc
    from kvstore.bench.report import ipc_chart, ipc_table, write_json
    from kvstore.bench.workers import BenchError

    opts = IpcOptions(
        duration=duration if duration is not None else (0.15 if quick else 3.0),
        clients=clients if clients is not None else (2 if quick else 8),
        nkeys=nkeys if nkeys is not None else (1000 if quick else 10_000),
        only=tuple(s.strip() for s in only.split(",") if s.strip()),
        prestart=quick,
    )
    if opts.duration <= 0 or opts.clients < 1 or opts.nkeys < 20:
        raise UsageError("--duration must be > 0, --clients >= 1, --keys >= 20")
    names = {m.name for m in MECHANISMS}
    if set(opts.only) - names:
        raise UsageError(f"unknown mechanism(s) {', '.join(sorted(set(opts.only) - names))}; have {', '.join(sorted(names))}")
    steps = 1 + 3 * sum(1 for m in MECHANISMS if (not opts.only or m.name in opts.only) and not m.unavailable())
    undo = sigterm_as_interrupt()
    try:
        with _progress(steps, quiet=not sys.stderr.isatty()) as step:
            result = run_ipc(opts, step)
    except BenchError as e:
        raise CheckFailed(str(e)) from None
    finally:
        undo()
    result["command"] = command_line()
    result["report"] = {"json": str((report_dir / "ipc.json").absolute()), "chart": str((report_dir / "ipc.png").absolute())}
    ipc_chart(result, report_dir / "ipc.png")
    write_json(result, report_dir / "ipc.json")
    _emit(result, as_json, ipc_table(result))
    failed = [r["name"] for r in result["mechanisms"] if "error" in r]
    if failed:
        raise CheckFailed(f"mechanism(s) failed: {', '.join(failed)} (see the table)")


def _counts(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--clients wants numbers separated by commas, not {text!r}") from None
    if not out or min(out) < 1:
        raise UsageError("--clients wants positive numbers")
    return out


@bench.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the tables.")
@click.option("--clients", "clients_text", default=None, help="Concurrent clients per run  [default: 1,16,64,256; --quick: 1,8]")
@click.option("--duration", type=float, default=None, help="Seconds per run  [default: 3; --quick: 0.5]")
@click.option("--peers", is_flag=True, help="Also redis-server (no persistence, and AOF fsync always) and a 3-node etcd.")
@click.option("--quick", is_flag=True, help="Short runs at 1 and 8 clients (a smoke test).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-results/cluster"), show_default=True, help="Where to write cluster.json and cluster.png.")
def cluster(as_json: bool, clients_text: str | None, duration: float | None, peers: bool, quick: bool,
            report_dir: Path) -> None:
    """A local 3-node cluster under 1..256 clients, against redis and etcd with --peers.

    The cluster is started in a temp dir and stopped at the end: reads (linearizable and
    local) and writes over RESP and gRPC at each client count, with the same patterns
    against redis-server and a 3-node etcd when --peers, as ratios."""
    from kvstore.bench.cluster.runner import ClusterOptions, run_cluster, steps
    from kvstore.bench.common import command_line, sigterm_as_interrupt
    from kvstore.bench.report import cluster_chart, cluster_tables, write_json

    opts = ClusterOptions(
        clients=_counts(clients_text) if clients_text else ((1, 8) if quick else (1, 16, 64, 256)),
        duration=duration if duration is not None else (0.5 if quick else 3.0),
        peers=peers,
        nkeys=200 if quick else 1000,
    )
    if opts.duration <= 0:
        raise UsageError("--duration must be > 0")
    undo = sigterm_as_interrupt()
    try:
        with _progress(steps(opts), quiet=not sys.stderr.isatty()) as step:
            result = run_cluster(opts, step)
    finally:
        undo()
    result["command"] = command_line()
    result["report"] = {"json": str((report_dir / "cluster.json").absolute()),
                        "chart": str((report_dir / "cluster.png").absolute())}
    if result["results"]:
        cluster_chart(result, report_dir / "cluster.png")
    write_json(result, report_dir / "cluster.json")
    _emit(result, as_json, cluster_tables(result))
    broken = [n for n, t in result["targets"].items() if t.get("error")]
    if "kvstore" in broken or not any(r["target"] == "kvstore" for r in result["results"]):
        raise CheckFailed(f"the kvstore cluster run failed: {result['targets']['kvstore'].get('error')}")
