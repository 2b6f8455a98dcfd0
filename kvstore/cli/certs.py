"""`kvstore certs init`: a cluster CA and certificates for mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kvstore import config as cfgmod
from kvstore.cluster import manage


@click.group(help="Certificates for mutual TLS between nodes and for gRPC clients.")
def certs() -> None:
    pass


@certs.command("init")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The cluster TOML (default: DIR/cluster.toml).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write them (default: DIR/certs).")
@click.option("--days", default=825, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace an existing CA (every node needs the new files).")
@click.pass_obj
def init(obj: dict[str, Any], config_path: Path | None, out: Path | None, days: int, force: bool) -> None:
    """Make a cluster CA, a certificate per node of the cluster, and one named 'client'.

    Files are written 0600; copy DIR/certs/ca.pem, NODE.pem and NODE.key to each host,
    and set [tls] enabled = true in the cluster TOML. Keys are never printed or logged.
    """
    from kvstore.tls import init_certs

    cfg = cfgmod.load(config_path) if config_path else manage.load(obj["dir"])
    if not cfg.id:
        cfg = cfg.with_id()
    dest = out or obj["dir"] / "certs"
    files = init_certs(cfg, dest, days=days, force=force)
    click.echo(f"wrote {len(files)} files to {dest} (CA, {len(cfg.nodes)} nodes, client)")
