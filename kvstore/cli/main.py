"""The `kvstore` command (also `python -m kvstore`).

Every error is one clear line on stderr and an exit code from the contract:
0 ok, 1 key absent or check failed, 2 usage error, 3 unavailable, 4 any other error.
Set KVSTORE_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kvstore import __version__
from kvstore.errors import KVError

HELP = """kvstore: a small distributed key-value store.

\b
Start a local 3-node cluster, then write and read:
  kvstore cluster up
  kvstore put greeting hello
  kvstore get greeting
  kvstore cluster status
  kvstore cluster down

Each node keeps its data in LMDB with a hot cache in shared memory, serves RESP
(redis-cli -s SOCKET works) on a UNIX socket, and replicates with Raft over gRPC.
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dir", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("KVSTORE_DIR", "./kvstore-data"), show_default="$KVSTORE_DIR or ./kvstore-data",
              help="The cluster's home: its config, and one folder per node.")
@click.version_option(__version__, prog_name="kvstore")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path) -> None:
    ctx.obj = {"dir": data_dir.absolute()}


def _register() -> None:
    from kvstore.cli import certs, cluster, kv, node

    cli.add_command(certs.certs)
    cli.add_command(cluster.cluster)
    cli.add_command(node.node)
    for c in kv.COMMANDS:
        cli.add_command(c)
    try:
        from kvstore.cli import drill  # type: ignore[attr-defined]

        cli.add_command(drill.drill)
    except ImportError:
        pass
    try:
        from kvstore.cli import bench  # type: ignore[attr-defined]

        cli.add_command(bench.bench)
    except ImportError:
        pass


_register()


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="kvstore", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code if e.exit_code != 1 else 2)
    except KVError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        if os.environ.get("KVSTORE_DEBUG"):
            raise
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(4)
    sys.exit(rv if isinstance(rv, int) else 0)
