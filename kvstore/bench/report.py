"""Tables, charts and JSON files for the benchmarks' results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table


def fmt_us(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def fmt_ops(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ratio(v: float | None) -> str:
    if v is None or math.isnan(v) or v == 0:
        return "-"
    return f"{v:.2f}x" if v < 10 else f"{v:,.0f}x"


def _finite(x: Any) -> Any:
    """NaN and infinities become null: the JSON stays valid for every reader."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def to_json(result: dict[str, Any], indent: int | None = None) -> str:
    return json.dumps(_finite(result), indent=indent, default=str, allow_nan=False)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(result, indent=2) + "\n")


def ipc_table(result: dict[str, Any]) -> Table:
    rows = result["mechanisms"]
    n = result["options"]["clients"]
    t = Table(title="GET of a 100-byte value from another process: latency (µs, 1 client), "
                    "throughput (requests/s), CPU (µs per request)", header_style="bold")
    t.add_column("mechanism", no_wrap=True)
    t.add_column("kind")
    for c in ("p50", "p99", "p99.9", "req/s 1 cl", f"req/s {n} cl", "client CPU", "server CPU"):
        t.add_column(c, justify="right", no_wrap=True)
    notes = []
    for r in rows:
        if not r.get("available", True) or "error" in r:
            why = r.get("reason") or r.get("error", "")
            style = "yellow" if not r.get("available", True) else "red"
            t.add_row(r["title"], r["kind"], f"[{style}]missing[/]" if style == "yellow" else "[red]failed[/]",
                      *["-"] * 6)
            notes.append(f"[{style}]{r['name']}[/]: {why}")
            continue
        one, many = r["one"], r["many"]
        lat = one["latency"]
        t.add_row(r["title"], r["kind"], fmt_us(lat["p50_us"]), fmt_us(lat["p99_us"]), fmt_us(lat["p999_us"]),
                  fmt_ops(one["ops_per_s"]), fmt_ops(many["ops_per_s"]), fmt_us(one["client_cpu_us_per_req"]),
                  fmt_us(one["server_cpu_us_per_req"]))
    t.caption = "\n".join([machine_line(result), *notes])
    t.caption_justify = "left"
    return t


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = f"load {m['loadavg_start'][0]:.1f}"
    if "loadavg_end" in m:
        load += f" at start, {m['loadavg_end'][0]:.1f} at end"
    return f"{m['date']}, {m['cpus']} cores ({m['cpu_model'] or m['platform']}), {load}"


def ipc_chart(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["mechanisms"] if r.get("available", True) and "error" not in r]
    names = [r["title"] for r in rows][::-1]
    n = result["options"]["clients"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(rows), 4) + 2.2), sharey=True)
    y = list(range(len(rows)))
    h = 0.38
    p50 = [r["one"]["latency"]["p50_us"] for r in rows][::-1]
    p99 = [r["one"]["latency"]["p99_us"] for r in rows][::-1]
    ax1.barh([i + h / 2 for i in y], p50, h, label="p50", color="#3b7dd8")
    ax1.barh([i - h / 2 for i in y], p99, h, label="p99", color="#f39c34")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency, µs (log scale), 1 client")
    ax1.set_yticks(y, names)
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    ax1.grid(axis="x", which="both", alpha=0.3)
    t1 = [r["one"]["ops_per_s"] for r in rows][::-1]
    tn = [r["many"]["ops_per_s"] for r in rows][::-1]
    ax2.barh([i + h / 2 for i in y], t1, h, label="1 client", color="#59a14f")
    ax2.barh([i - h / 2 for i in y], tn, h, label=f"{n} clients", color="#8e6bbf")
    ax2.set_xscale("log")
    ax2.set_xlabel("throughput, requests/s (log scale)")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    ax2.grid(axis="x", which="both", alpha=0.3)
    m = result["machine"]
    fig.suptitle(f"GET of a 100-byte value from another process: {m['date']}, {m['cpus']} cores "
                 f"({m['cpu_model'] or m['platform']}), load {m['loadavg_start'][0]:.1f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rows_by_pattern(result: dict[str, Any]) -> dict[tuple[str, str, str], dict[int, dict[str, Any]]]:
    rows: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in result["results"]:
        rows.setdefault((r["target"], r["api"], r["pattern"]), {})[r["clients"]] = r
    return rows


def _ms(us: float) -> str:
    return "-" if us is None or math.isnan(us) else (f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}")


def cluster_tables(result: dict[str, Any]) -> list[Table]:
    counts = list(result["options"]["clients"])
    rows = _rows_by_pattern(result)
    thr = Table(title="requests/s (errors in red)", header_style="bold")
    lat = Table(title="latency p50 / p99, ms", header_style="bold")
    for t in (thr, lat):
        t.add_column("target", no_wrap=True)
        t.add_column("api")
        t.add_column("request", no_wrap=True)
        for c in counts:
            t.add_column(f"{c} cl", justify="right", no_wrap=True)
    for (target, api, pattern), cells in rows.items():
        tc, lc = [], []
        for c in counts:
            r = cells.get(c)
            if r is None:
                tc.append("-")
                lc.append("-")
                continue
            bad = r["errors"] + r["wrong"]
            tc.append(fmt_ops(r["ops_per_s"]) + (f" [red]({bad} err)[/]" if bad else ""))
            lc.append(f"{_ms(r['latency']['p50_us'])} / {_ms(r['latency']['p99_us'])}")
        thr.add_row(target, api, pattern, *tc)
        lat.add_row(target, api, pattern, *lc)
    notes = [machine_line(result)]
    for name, t in result["targets"].items():
        if not t["available"]:
            notes.append(f"[yellow]{name}[/]: {t['reason']}")
        elif t.get("error"):
            notes.append(f"[red]{name}[/]: {t['error']}")
    errs = {(r["target"], r["pattern"]): r["error_sample"] for r in result["results"] if r.get("error_sample")}
    notes += [f"[red]{t} {p}[/]: {e}" for (t, p), e in list(errs.items())[:6]]
    lat.caption = "\n".join(notes)
    lat.caption_justify = "left"
    out = [thr, lat]
    if result["ratios"]:
        rt = Table(title="kvstore / peer: throughput ratio (p50 latency ratio)", header_style="bold")
        rt.add_column("kvstore request", no_wrap=True)
        rt.add_column("peer request", no_wrap=True)
        for c in counts:
            rt.add_column(f"{c} cl", justify="right", no_wrap=True)
        by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for r in result["ratios"]:
            by.setdefault((r["ours"], f"{r['peer']} {r['peer_pattern']}"), {})[r["clients"]] = r
        for (ours, peer), cells in by.items():
            rt.add_row(ours, peer, *[
                f"{fmt_ratio(cells[c]['throughput_ratio'])} ({fmt_ratio(cells[c]['p50_ratio'])})" if c in cells else "-"
                for c in counts])
        out.append(rt)
    return out


def cluster_chart(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows_by_pattern(result)
    counts = sorted(result["options"]["clients"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    for i, ((target, api, pattern), cells) in enumerate(rows.items()):
        cs = sorted(cells)
        kw = dict(linestyle="-" if target == "kvstore" else "--", marker="o", color=colors[i % len(colors)],
                  label=f"{target} {api} {pattern}")
        ax1.plot(cs, [cells[c]["ops_per_s"] for c in cs], **kw)  # type: ignore[arg-type]
        ax2.plot(cs, [cells[c]["latency"]["p50_us"] / 1000 for c in cs], **kw)  # type: ignore[arg-type]
    for ax, ylabel in ((ax1, "requests/s"), (ax2, "p50 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"kvstore cluster and peers: {machine_line(result)}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
