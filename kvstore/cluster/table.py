"""The status table of `cluster status` and `cluster status --watch`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

_STYLES = {"leader": "bold green", "down": "red", "starting": "yellow"}


def _s(v: Any) -> str:
    return "-" if v is None else str(v)


def status_table(st: dict[str, Any], rates: dict[str, float] | None = None, when: str = "") -> Table:
    """One row per node. With `rates` (the live view): lag behind the highest commit and
    writes applied per second instead of the gRPC address."""
    live = rates is not None
    title = f"cluster {st.get('cluster_id', '')[:8]}  leader: {st['leader'] or '-'}" + (f"   {when}" if when else "")
    t = Table(title=title, title_justify="left", caption_justify="left")
    cols = ("node", "pid", "role", "term", "commit", "applied") + (("lag", "writes/s") if live else ("grpc",))
    for col in cols:
        t.add_column(col, no_wrap=True, justify="right" if live and col not in ("node", "role") else "left")
    top = max((r["commit_index"] or 0 for r in st["nodes"]), default=0)
    for r in st["nodes"]:
        role = r["role"] + (" (paused)" if r.get("paused") else "")
        style = _STYLES.get(r["role"], "")
        row = [r["name"], _s(r["pid"]), f"[{style}]{role}[/]" if style else role,
               _s(r["term"]), _s(r["commit_index"]), _s(r["applied_index"])]
        if rates is not None:
            applied = r["applied_index"]
            rate = rates.get(r["name"])
            row += ["-" if applied is None else str(max(0, top - applied)), "-" if rate is None else f"{rate:,.0f}"]
        else:
            row.append(r["grpc"])
        t.add_row(*row)
    if live:
        t.caption = "Ctrl-C to stop"
    else:
        socks = sorted({str(Path(r["socket"]).parent.parent) for r in st["nodes"]})
        t.caption = f"sockets: {socks[0]}/<node>/kv.sock" if len(socks) == 1 else None
    return t
