"""`kvstore cluster ...`: start, stop and look at the local cluster in --dir."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from kvstore.cluster import manage, procs
from kvstore.cluster.table import status_table
from kvstore.errors import UsageError

console = Console()


@click.group(help="Start, stop and inspect the local cluster in --dir.")
def cluster() -> None:
    pass


@cluster.command()
@click.option("--nodes", default=3, show_default=True, help="How many nodes (a new cluster only).")
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A cluster TOML to start from (see cluster/local.toml); ports 0 get free ports.")
@click.option("--timeout", default=20.0, show_default=True, help="Seconds to wait for a leader.")
@click.pass_obj
def up(obj: dict[str, Any], nodes: int, config: Path | None, timeout: float) -> None:
    """Start the cluster's nodes in the background and wait for a leader.

    The first run creates DIR/cluster.toml (a fresh cluster id, free ports); later runs
    start whichever nodes are not running. Logs: DIR/<node>/node.log.
    """
    d = obj["dir"]
    if manage.config_path(d).exists() and config is not None:
        raise UsageError(f"a cluster already exists in {d}; --config applies only to a new one")
    with console.status("starting nodes and waiting for a leader..."):
        st, started = manage.up(d, nodes, config, timeout)
    if not started:
        console.print(f"cluster in {d} is already up")
        n_have = len(st["nodes"])
        if nodes != 3 and nodes != n_have:
            console.print(f"(--nodes applies to a new cluster; this one has {n_have}: use `cluster add-node`)")
    else:
        console.print(f"started {', '.join(started)}; leader: [bold]{st['leader']}[/]")
    console.print(status_table(st))
    console.print(f"stop it with: kvstore --dir {d} cluster down")


@cluster.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (see the contract).")
@click.option("--watch", is_flag=True, help="A live view, refreshed every second, until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes (--watch).")
@click.option("--count", default=0, help="Stop after this many refreshes (--watch; 0: until Ctrl-C).")
@click.pass_obj
def status(obj: dict[str, Any], as_json: bool, watch: bool, interval: float, count: int) -> None:
    """One row per node, each from the node's own view (a dead node shows 'down')."""
    if watch:
        from kvstore.cluster.watch import watch_status

        watch_status(obj["dir"], console, interval=interval, count=count)
        return
    st = manage.status(obj["dir"])
    if as_json:
        click.echo(json.dumps(st))
    else:
        console.print(status_table(st))


@cluster.command()
@click.argument("node", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--lines", "-n", default=20, show_default=True, help="Lines of each log to start with.")
@click.pass_obj
def logs(obj: dict[str, Any], node: str | None, follow: bool, lines: int) -> None:
    """Print the logs of NODE (default: every node, each line prefixed by its node)."""
    from kvstore.cluster.watch import show_logs

    d = obj["dir"]
    cfg = manage.load(d)
    names = [cfg.node(node).name] if node else [n.name for n in cfg.nodes]
    show_logs(d, names, follow=follow, lines=lines, prefix=node is None)


@cluster.command()
@click.option("--grace", default=5.0, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
@click.pass_obj
def down(obj: dict[str, Any], grace: float) -> None:
    """Stop every node: SIGTERM, then SIGKILL after the grace period. Data stays in --dir."""
    stopped = manage.down(obj["dir"], grace)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


def _node_cmd(name: str, help_text: str) -> Any:
    @cluster.command(name, help=help_text)
    @click.argument("node")
    @click.pass_obj
    def cmd(obj: dict[str, Any], node: str) -> None:
        d = obj["dir"]
        cfg = manage.load(d)
        cfg.node(node)
        pid = procs.live_pid(d, node)
        if name == "start":
            if pid is not None:
                console.print(f"{node} is already running (pid {pid})")
                return
            procs.cleanup_node(d, node, cfg)
            pid = procs.spawn(d, manage.config_path(d), node)
            console.print(f"started {node} (pid {pid})")
            return
        if pid is None:
            raise UsageError(f"{node} is not running")
        if name == "stop":
            procs.stop_node(d, node)
        elif name == "kill":
            procs.stop_node(d, node, force=True)
        elif name == "pause":
            procs.signal_node(pid, signal.SIGSTOP)
        elif name == "resume":
            procs.signal_node(pid, signal.SIGCONT)
        console.print(f"{name}: {node} (pid {pid})")

    return cmd


_node_cmd("start", "Start one node of the cluster.")
_node_cmd("stop", "Stop one node gracefully (SIGTERM; a leader hands over first).")
_node_cmd("kill", "Kill one node with SIGKILL (a crash).")
_node_cmd("pause", "Freeze one node with SIGSTOP.")
_node_cmd("resume", "Thaw a paused node with SIGCONT.")


@cluster.command("add-node")
@click.argument("name")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the node to join.")
@click.pass_obj
def add_node(obj: dict[str, Any], name: str, timeout: float) -> None:
    """Add node NAME while the cluster serves: it joins as a learner, catches up, becomes a voter.

    NAME is added to DIR/cluster.toml (free ports) and started. On several hosts, add it
    to every host's cluster TOML first, start it there, then run this.
    """
    with console.status(f"adding {name}: starting it, catching it up, promoting it..."):
        voters, learners = manage.add_node(obj["dir"], name, timeout)
    console.print(f"added {name}; voters: {', '.join(voters)}" + (f"; learners: {', '.join(learners)}" if learners else ""))


@cluster.command("remove-node")
@click.argument("name")
@click.pass_obj
def remove_node(obj: dict[str, Any], name: str) -> None:
    """Remove node NAME while the cluster serves (a leader hands over first), then stop it.

    Its data folder is renamed NAME.removed-<time>: a removed member never rejoins with its old log.
    """
    with console.status(f"removing {name}..."):
        voters, learners = manage.remove_node(obj["dir"], name)
    console.print(f"removed {name}; voters: {', '.join(voters)}" + (f"; learners: {', '.join(learners)}" if learners else ""))
