"""What a drill shows a person: one self-contained HTML page, its JSON, a terminal summary.

`write_report(dir, ...)` writes `index.html` (inline CSS, the timeline plot embedded as a
base64 PNG drawn by matplotlib's Agg backend, no outside resource), `history.json` and
`result.json`. `format_summary(...)` gives a few lines of rich markup for the terminal.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from kvstore.drills.checker import Verdict
from kvstore.drills.history import History, Op, OpKind, Outcome

_COLORS = {"ok": "#2e7d32", "failed": "#c62828", "unknown": "#ef6c00"}
_MAX_ROWS = 200


def result_dict(
    history: History,
    verdict: Verdict,
    lost: list[Op],
    availability: dict[str, Any],
    meta: dict[str, Any] | None = None,
    report: str | None = None,
) -> dict[str, Any]:
    """The drill's JSON: the fields of `kvstore drill run --json`, then the details."""
    meta = dict(meta or {})
    out: dict[str, Any] = {
        "scenario": meta.get("scenario"),
        "seed": meta.get("seed"),
        "duration_s": meta.get("duration_s", history.duration),
        "ops": history.counts(),
        "linearizable": verdict.linearizable,
        "lost_writes": len(lost),
        "max_unavailable_ms": availability.get("max_unavailable_ms"),
        "report": report if report is not None else meta.get("report"),
    }
    for k, v in meta.items():
        out.setdefault(k, v)
    out["check"] = verdict.to_dict()
    out["lost"] = [op.to_dict() for op in lost]
    out["availability"] = availability
    return out


def _verdict_word(v: bool | None) -> tuple[str, str]:
    if v is True:
        return "yes", "good"
    if v is False:
        return "NO", "bad"
    return "unknown (checker ran out of budget)", "warn"


def format_summary(
    verdict: Verdict, lost: list[Op], availability: dict[str, Any], meta: dict[str, Any] | None = None
) -> str:
    """A few lines of rich markup: the verdicts of a drill."""
    from rich.markup import escape

    meta = meta or {}
    ops = availability.get("ops", {})
    lines = []
    head = f"[bold]drill {escape(str(meta.get('scenario', '')))}[/bold]"
    if meta.get("seed") is not None:
        head += f" seed {meta['seed']}"
    head += (
        f": {sum(ops.values())} ops ({ops.get('ok', 0)} ok, {ops.get('failed', 0)} failed,"
        f" {ops.get('unknown', 0)} unknown) in {availability.get('duration_s', 0.0):.1f}s"
    )
    lines.append(head)
    word, tone = _verdict_word(verdict.linearizable)
    color = {"good": "green", "bad": "red", "warn": "yellow"}[tone]
    lin = f"linearizable: [bold {color}]{word}[/]"
    if verdict.violations:
        k = verdict.violations[0]
        cex = verdict.keys[k].counterexample or []
        lin += f" on key {escape(k)}: {len(cex)} operations that cannot be ordered"
        if len(verdict.violations) > 1:
            lin += f" (and {len(verdict.violations) - 1} more keys)"
    elif verdict.undecided:
        lin += f" on {len(verdict.undecided)} key(s)"
    lin += f" [dim]({len(verdict.keys)} keys checked in {verdict.elapsed_s:.2f}s)[/dim]"
    lines.append(lin)
    if lost:
        first = lost[0]
        lines.append(f"lost writes: [bold red]{len(lost)}[/] (first: {escape(first.describe())})")
    else:
        lines.append("lost writes: [bold green]0[/]")
    avail = f"longest without a successful write: {availability.get('max_unavailable_ms', 0.0):.0f} ms"
    recov = [
        f"{escape(f['name'])} {f['first_write_after_start_ms']:.0f} ms"
        for f in availability.get("faults", [])
        if f.get("first_write_after_start_ms") is not None
    ]
    if recov:
        avail += (
            "; first write after each fault: " + ", ".join(recov[:6]) + (" ..." if len(recov) > 6 else "")
        )
    lines.append(avail)
    return "\n".join(lines)


# -- the plot ---------------------------------------------------------------------


def _plot_png(history: History, availability: dict[str, Any], marks: list[tuple[float, str]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = history.start
    bucket_s = float(availability.get("bucket_s", 0.1)) or 0.1
    buckets = availability.get("buckets", [])
    xs = [b["t"] for b in buckets]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True, dpi=100)
    bottom = [0.0] * len(buckets)
    for name in ("ok", "failed", "unknown"):
        ys = [b[name] / bucket_s for b in buckets]
        ax1.bar(
            xs, ys, width=bucket_s, bottom=bottom, align="edge", color=_COLORS[name], label=name, linewidth=0
        )
        bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
    ax1.set_ylabel("ops/s")
    ax1.legend(loc="upper right", fontsize=8, ncols=3)
    ax1.set_title("throughput and latency; fault windows shaded", fontsize=10)

    by_outcome: dict[str, tuple[list[float], list[float]]] = {"ok": ([], []), "unknown": ([], [])}
    for op in history.ops:
        if op.complete is None or str(op.outcome) not in by_outcome:
            continue
        px, py = by_outcome[str(op.outcome)]
        px.append(op.complete - t0)
        py.append(max(1e-3, (op.complete - op.invoke) * 1000.0))
    for name, (px, py) in by_outcome.items():
        if px:
            ax2.scatter(px, py, s=3, color=_COLORS[name], alpha=0.35, linewidths=0, label=f"{name} op")
    p99 = [math.nan if b.get("p99_ms") is None else b["p99_ms"] for b in buckets]  # gaps stay gaps
    if any(not math.isnan(v) for v in p99):
        ax2.plot([x + bucket_s / 2 for x in xs], p99, color="black", linewidth=0.8, label="p99 (ok)")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds since start")
    if any(not math.isnan(v) for v in p99) or any(v[0] for v in by_outcome.values()):
        ax2.legend(loc="upper right", fontsize=8, ncols=3)

    end = history.duration
    for i, f in enumerate(history.faults):
        a, b = f.start - t0, (f.end if f.end is not None else history.stop) - t0
        for ax in (ax1, ax2):
            ax.axvspan(a, b, color="#5c6bc0", alpha=0.15, linewidth=0)
        ax1.annotate(
            f.name,
            xy=(a, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10 - 10 * (i % 3)),
            textcoords="offset points",
            fontsize=8,
            color="#283593",
        )
    for t, label in marks:
        for ax in (ax1, ax2):
            ax.axvline(t - t0, color="#c62828", linewidth=1.0, linestyle="--")
        ax2.annotate(
            label,
            xy=(t - t0, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=8,
            color="#c62828",
        )
    ax2.set_xlim(0, max(end, bucket_s))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- the page -----------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.badges { display: flex; gap: .8em; flex-wrap: wrap; margin: 1em 0; }
.badge { border-radius: 6px; padding: .5em .9em; font-weight: 600; border: 1px solid; }
.good { background: #e8f5e9; border-color: #81c784; color: #1b5e20; }
.bad { background: #ffebee; border-color: #e57373; color: #b71c1c; }
.warn { background: #fff8e1; border-color: #ffb74d; color: #e65100; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; } svg text { font: 11px ui-monospace, Menlo, Consolas, monospace; }
"""

_SCRIPT = """
window.addEventListener('error', function (e) {
  var b = document.body; b.dataset.errors = (b.dataset.errors || '') + (e.message || 'error') + ';';
});
window.addEventListener('load', function () {
  var img = document.getElementById('timeline');
  var ok = img && img.complete && img.naturalWidth > 0;
  document.body.dataset.plotWidth = ok ? String(img.naturalWidth) : '0';
  document.body.dataset.status = ok ? 'loaded' : 'plot-missing';
});
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _secs(v: Any) -> str:
    return "—" if v is None else f"{float(v):.2f}"


def _ms(v: Any) -> str:
    return "—" if v is None else f"{float(v):.0f} ms"


def _ops_table(ops: list[Op], t0: float) -> str:
    rows = []
    for op in ops[:_MAX_ROWS]:
        shown = op.result if op.kind in (OpKind.READ, OpKind.SWAP) and op.outcome == Outcome.OK else "?"
        rows.append(
            "<tr>"
            f"<td class=num>{op.id}</td><td>c{op.client}</td><td>{_e(op.kind)}</td><td class=mono>{_e(op.key)}</td>"
            f"<td class=mono>{_e(op.value) if op.kind in (OpKind.WRITE, OpKind.SWAP) else ''}</td>"
            f"<td class=mono>{'' if op.kind in (OpKind.WRITE, OpKind.DELETE) else _e(repr(shown))}</td>"
            f"<td class=num>{op.invoke - t0:.4f}</td>"
            f"<td class=num>{'—' if op.complete is None else f'{op.complete - t0:.4f}'}</td>"
            f"<td>{_e(op.outcome)}</td><td>{_e(op.node)}</td><td class=mono>{_e(op.error)}</td></tr>"
        )
    more = f"<p class=muted>... and {len(ops) - _MAX_ROWS} more</p>" if len(ops) > _MAX_ROWS else ""
    return (
        "<table><tr><th>id</th><th>client</th><th>op</th><th>key</th><th>value</th><th>result</th>"
        "<th>invoke (s)</th><th>complete (s)</th><th>outcome</th><th>node</th><th>error</th></tr>"
        + "".join(rows)
        + "</table>"
        + more
    )


def _ops_svg(ops: list[Op]) -> str:
    """The counterexample drawn as intervals, one row per client: why it cannot be ordered."""
    if not ops:
        return ""
    lo = min(op.invoke for op in ops)
    hi = max(op.complete if op.complete is not None else op.invoke for op in ops)
    span = (hi - lo) or 1.0
    clients = sorted({op.client for op in ops})
    row = {c: i for i, c in enumerate(clients)}
    width, left, rh = 900, 60, 26
    parts = []
    for op in ops:
        x0 = left + (op.invoke - lo) / span * (width - left - 200)
        open_end = op.complete is None or op.outcome != Outcome.OK
        x1 = left + ((op.complete if op.complete is not None else hi) - lo) / span * (width - left - 200)
        y = 6 + row[op.client] * rh
        label = op.describe().split(" ", 1)[1]
        color = _COLORS[str(op.outcome)]
        dash = ' stroke-dasharray="4 2"' if open_end else ""
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(2.0, x1 - x0):.1f}" height="{rh - 8}" rx="3" '
            f'fill="{color}" fill-opacity="0.18" stroke="{color}"{dash}/>'
            f'<text x="{x0 + 3:.1f}" y="{y + rh - 13}">{_e(label)}</text>'
        )
    for c, i in row.items():
        parts.append(f'<text x="4" y="{6 + i * rh + rh - 13}">c{c}</text>')
    h = 12 + len(clients) * rh
    return f'<svg width="{width}" height="{h}" role="img" aria-label="counterexample">{"".join(parts)}</svg>'


def _page(
    history: History,
    verdict: Verdict,
    lost: list[Op],
    availability: dict[str, Any],
    meta: dict[str, Any],
    png: bytes,
) -> str:
    t0 = history.start
    word, tone = _verdict_word(verdict.linearizable)
    badges = [
        (f"linearizable: {word}", tone),
        (f"lost writes: {len(lost)}", "bad" if lost else "good"),
        (f"longest without a successful write: {_ms(availability.get('max_unavailable_ms'))}", "warn"),
    ]
    counts = history.counts()
    title = f"kvstore drill: {meta.get('scenario') or 'history'}"
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<div class=muted>{sum(counts.values())} operations: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['unknown']} unknown; {len(history.faults)} fault(s); {history.duration:.2f} s</div>",
        '<div class="badges">'
        + "".join(f'<span class="badge {t}">{_e(b)}</span>' for b, t in badges)
        + "</div>",
    ]
    shown = {k: v for k, v in meta.items() if v is not None and k not in ("final_reads",)}
    if shown:
        out.append("<h2>Run</h2><table>")
        out += [f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in shown.items()]
        out.append("</table>")
    b64 = base64.b64encode(png).decode("ascii")
    out.append("<h2>Timeline</h2>")
    out.append(
        f'<img id="timeline" class="plot" alt="throughput and latency over time, fault windows shaded" '
        f'src="data:image/png;base64,{b64}">'
    )

    out.append("<h2>Linearizability</h2>")
    if verdict.linearizable is True:
        out.append(f"<p>Every key's history is linearizable ({len(verdict.keys)} keys).</p>")
    elif verdict.linearizable is None:
        out.append(
            "<p>The checker ran out of its budget before deciding "
            f"(keys: {_e(', '.join(verdict.undecided))}): no violation was found, none is ruled out.</p>"
        )
    for k in verdict.violations:
        kv = verdict.keys[k]
        cex = kv.counterexample or []
        out.append(
            f"<h3>Violation on key <code>{_e(k)}</code></h3><p>These {len(cex)} operations cannot be put in "
            "any order that respects both real time and a single register's semantics.</p>"
        )
        out.append(_ops_svg(cex[:40]))
        out.append(_ops_table(cex, t0))
    out.append(
        "<table><tr><th>key</th><th>verdict</th><th>ops</th><th>search steps</th><th>time (s)</th></tr>"
        + "".join(
            f"<tr><td class=mono>{_e(kv.key)}</td><td>{_e(_verdict_word(kv.linearizable)[0])}</td>"
            f"<td class=num>{kv.ops}</td><td class=num>{kv.explored}</td><td class=num>{kv.elapsed_s:.3f}</td></tr>"
            for kv in list(verdict.keys.values())[:_MAX_ROWS]
        )
        + "</table>"
    )

    out.append("<h2>Lost writes</h2>")
    if lost:
        out.append(
            f"<p>{len(lost)} acknowledged write(s) never observed and never overwritten: gone.</p>"
            + _ops_table(lost, t0)
        )
    else:
        out.append("<p>None: every acknowledged write was observed or overwritten.</p>")

    out.append("<h2>Availability</h2>")
    lat = availability.get("latency_ms", {})
    out.append(
        f"<p>Longest stretch without a successful write: <b>{_ms(availability.get('max_unavailable_ms'))}</b>"
        f" (from {float(availability.get('max_unavailable_from_s', 0.0)):.2f} s). Latency of ok operations:"
        f" p50 {_ms(lat.get('p50'))}, p99 {_ms(lat.get('p99'))}, max {_ms(lat.get('max'))}.</p>"
    )
    faults = availability.get("faults", [])
    if faults:
        out.append(
            "<table><tr><th>fault</th><th>detail</th><th>start (s)</th><th>end (s)</th>"
            "<th>first write after start</th><th>first write after end</th></tr>"
            + "".join(
                f"<tr><td>{_e(f['name'])}</td><td>{_e(f['detail'])}</td><td class=num>{f['start_s']:.2f}</td>"
                f"<td class=num>{_secs(f['end_s'])}</td>"
                f"<td class=num>{_ms(f['first_write_after_start_ms'])}</td>"
                f"<td class=num>{_ms(f['first_write_after_end_ms'])}</td></tr>"
                for f in faults
            )
            + "</table>"
        )
    out.append(
        '<p class=muted>Files: <a href="history.json">history.json</a> (every operation), '
        '<a href="result.json">result.json</a> (the verdicts).</p></body></html>'
    )
    return "\n".join(out)


def write_report(
    dir: str | Path,
    history: History,
    verdict: Verdict,
    lost: list[Op],
    availability: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write index.html, history.json and result.json into `dir`; return index.html's path."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    index = out / "index.html"
    marks: list[tuple[float, str]] = []
    for k in verdict.violations:
        cex = verdict.keys[k].counterexample or []
        if cex:
            marks.append((min(op.invoke for op in cex), f"violation ({k})"))
    if lost:
        marks.append((lost[0].invoke, f"lost write ({lost[0].key})"))
    png = _plot_png(history, availability, marks[:4])
    index.write_text(_page(history, verdict, lost, availability, meta, png), encoding="utf-8")
    (out / "history.json").write_text(history.to_json(), encoding="utf-8")
    result = result_dict(history, verdict, lost, availability, meta, report=str(index.absolute()))
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return index
