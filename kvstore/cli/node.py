"""`kvstore node run`: one node in the foreground."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
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


# mallopt parameters (glibc <malloc.h>)
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 128 << 10
ARENA_MAX = 2


def tune_malloc() -> str | None:
    """Keep a long-running node from holding heap it freed; returns what was set.

    glibc raises its mmap threshold each time an mmapped block is freed (up to 32 MiB):
    after the first 1 MiB snapshot chunk or gRPC message, such blocks come from the heap,
    where freed ones stay resident, fragmented. And every thread that allocates gets an
    arena of its own (up to 8 per core: gRPC's threads, the io thread, ...). A fixed
    threshold sends blocks >= 128 KiB to mmap, returned to the system on free; two arenas
    bound the spread. Skipped when not glibc, and when the operator tuned malloc already
    (GLIBC_TUNABLES, MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, ...).
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_ARENA_MAX, ARENA_MAX)):
        return None
    return f"mmap threshold {MMAP_THRESHOLD >> 10} KiB, {ARENA_MAX} arenas"


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
    tuned = tune_malloc()  # before the threads and buffers it is about
    if tuned:
        logging.getLogger("kvstore.node").debug("%s: malloc: %s", name, tuned)
    from kvstore.node import Node

    n = Node(cfg, name, ctx.obj["dir"])
    import uvloop

    uvloop.run(n.run_until_signalled())
