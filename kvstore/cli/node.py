"""`kvstore node run`: one node in the foreground."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from kvstore import config as cfgmod
from kvstore.errors import UsageError


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname.lower(), "logger": record.name, "node": self.node,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


@click.group(help="Run one node (what `cluster up`, systemd or another host runs).")
def node() -> None:
    pass


@node.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster TOML listing every node (see cluster/local.toml).")
@click.option("--name", required=True, help="This node's name in the config.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Default: [log] level in the config, else info.")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="json: one JSON object per line (ts, level, logger, node, msg). Default: [log] format, else text.")
@click.pass_context
def run(ctx: click.Context, config_path: Path, name: str, log_level: str | None, log_format: str | None) -> None:
    """Run node NAME of the cluster in CONFIG until SIGTERM or Ctrl-C.

    Data lives in DIR/NAME (see --dir). On SIGTERM a leader hands leadership to a
    follower first, then the node closes its sockets and removes its shared memory.
    """
    cfg = cfgmod.load(config_path)
    cfg.node(name)  # a clear error for an unknown name
    log_level = log_level or cfg.log.level
    log_format = log_format or cfg.log.format
    if log_level not in ("debug", "info", "warning", "error") or log_format not in ("text", "json"):
        raise UsageError(f"[log] level must be debug|info|warning|error and format text|json in {config_path}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(name) if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper()), handlers=[handler])
    from kvstore.node import Node

    n = Node(cfg, name, ctx.obj["dir"])
    import uvloop

    uvloop.run(n.run_until_signalled())
