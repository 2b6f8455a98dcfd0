"""`kvstore node run`: one node in the foreground."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from kvstore import config as cfgmod


@click.group(help="Run one node (what `cluster up`, systemd or another host runs).")
def node() -> None:
    pass


@node.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster TOML listing every node (see cluster/local.toml).")
@click.option("--name", required=True, help="This node's name in the config.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def run(ctx: click.Context, config_path: Path, name: str, log_level: str) -> None:
    """Run node NAME of the cluster in CONFIG until SIGTERM or Ctrl-C.

    Data lives in DIR/NAME (see --dir). On SIGTERM a leader hands leadership to a
    follower first, then the node closes its sockets and removes its shared memory.
    """
    cfg = cfgmod.load(config_path)
    cfg.node(name)  # a clear error for an unknown name
    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    from kvstore.node import Node

    n = Node(cfg, name, ctx.obj["dir"])
    import uvloop

    uvloop.run(n.run_until_signalled())
