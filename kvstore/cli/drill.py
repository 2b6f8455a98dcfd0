"""`kvstore drill ...`: failure drills against a fresh local cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from kvstore.errors import CheckFailed


@click.group(help="Failure drills: a workload, injected faults, a linearizability check, a report.")
def drill() -> None:
    pass


@drill.command("list")
def list_() -> None:
    """The scenarios, one line each."""
    from kvstore.drills.scenarios import SCENARIOS

    console = Console()
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column("scenario", style="bold", no_wrap=True)
    t.add_column("what it does")
    for s in SCENARIOS.values():
        why = s.available()
        t.add_row(s.name, s.description + (f" [yellow](unavailable: {why})[/]" if why else ""))
    console.print(t)


@drill.command()
@click.argument("scenario")
@click.option("--duration", default=10.0, show_default=True, help="Seconds of workload (faults in the first ~80%).")
@click.option("--clients", default=10, show_default=True, help="Concurrent clients (half RESP, half gRPC).")
@click.option("--seed", type=int, default=None, help="Seed for every random choice (default: a fresh one).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the HTML report (default: DIR/drills/<scenario>-<seed>/report).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see the contract).")
@click.option("--net", type=click.Choice(["proxy", "netns"]), default="proxy", show_default=True,
              help="Network faults through a TCP proxy on every link, or (root) network namespaces.")
@click.option("--nodes", default=3, show_default=True, help="Cluster size (at least 3).")
@click.option("--keys", default=5, show_default=True, help="How many keys the clients share.")
@click.option("--check-budget", default=30.0, show_default=True, help="Seconds the linearizability search may take.")
@click.pass_obj
def run(obj: dict[str, Any], scenario: str, duration: float, clients: int, seed: int | None,
        report_dir: Path | None, as_json: bool, net: str, nodes: int, keys: int, check_budget: float) -> None:
    """Run SCENARIO against a fresh cluster in DIR/drills/<scenario>-<seed>/ and judge it.

    Exit code 1 when the history is not linearizable or an acknowledged write was lost.
    """
    from kvstore.drills.runner import DrillOptions, run_drill, terminate_as_interrupt
    from kvstore.drills.scenarios import ScenarioSkipped

    console = Console(stderr=True)
    opts = DrillOptions(scenario=scenario, base_dir=obj["dir"], duration=duration, clients=clients, seed=seed,
                        report_dir=report_dir, net=net, nodes=nodes, keys=keys, check_budget_s=check_budget)
    try:
        with terminate_as_interrupt():
            res = run_drill(opts, console=console)
    except ScenarioSkipped as e:
        console.print(f"[yellow]{e}[/]")
        if as_json:
            click.echo(json.dumps({"scenario": scenario, "skipped": str(e), "seed": seed, "net": net,
                                   "linearizable": None, "lost_writes": 0, "ops": {}, "report": None}))
        return
    if as_json:
        click.echo(json.dumps(res.to_json()))
    _verdict(console if as_json else Console(), res)
    if res.failed:
        what = []
        if res.linearizable is False:
            what.append(f"not linearizable (key {', '.join(res.check.get('violations', []))})")
        if res.lost_writes:
            what.append(f"{res.lost_writes} acknowledged write(s) lost")
        raise CheckFailed(f"drill {res.scenario} (seed {res.seed}): {'; '.join(what)}; report: {res.report}")


def _verdict(console: Console, res: Any) -> None:
    from kvstore.drills.report import format_summary

    if res.verdict is not None:
        console.print(format_summary(res.verdict, res.lost_ops, res.availability, res.to_json()))
    if res.unread_keys:
        console.print(f"[yellow]keys not read at the end (their lost writes go unjudged): "
                      f"{', '.join(res.unread_keys)}[/]")
    console.print(f"recovered after healing: {'yes' if res.recovered else '[red]no[/]'} ({res.recovery})")
    console.print(f"network: {res.net_detail}")
    console.print(f"report: {res.report}")
    sys.stdout.flush()
