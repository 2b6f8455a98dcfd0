"""The drill report: a self-contained page, its JSON, the terminal summary, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kvstore.drills.checker import availability, check, lost_writes
from kvstore.drills.history import Fault, History, Op, OpKind, Outcome
from kvstore.drills.report import format_summary, result_dict, write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _history(violation: bool = True) -> History:
    """Two keys, a few hundred ops, two faults, a stale read (if asked) and a lost write."""
    h = History(start=100.0)
    t = 100.0
    n = 0

    def add(
        kind: OpKind,
        key: str,
        value: str | None,
        t0: float,
        t1: float | None,
        outcome: Outcome,
        res: str | None,
    ):
        nonlocal n
        h.ops.append(Op(n, n % 5, kind, key, value, t0, t1, outcome, res, node=f"n{n % 3 + 1}"))
        n += 1

    for i in range(300):
        key = f"k{i % 2}"
        t0 = t + i * 0.01
        if 100 <= i < 130:  # a fault: writes fail or hang
            add(OpKind.WRITE, key, f"v{i}", t0, t0 + 0.5, Outcome.UNKNOWN if i % 2 else Outcome.FAILED, None)
            continue
        add(OpKind.WRITE, key, f"v{i}", t0, t0 + 0.004, Outcome.OK, None)
        add(OpKind.READ, key, None, t0 + 0.005, t0 + 0.008, Outcome.OK, f"v{i}")
    if violation:
        add(OpKind.READ, "k0", None, t + 3.5, t + 3.6, Outcome.OK, "v2")  # stale
    add(OpKind.WRITE, "k1", "gone", t + 3.7, t + 3.8, Outcome.OK, None)  # never seen again
    h.faults = [
        Fault("kill-leader", t + 1.0, t + 1.3, "SIGKILL n1"),
        Fault("partition", t + 2.0, t + 2.4, "n1 | n2,n3"),
    ]
    h.end = t + 4.0
    return h


def _report(tmp_path: Path, violation: bool = True) -> tuple[Path, History]:
    h = _history(violation)
    verdict = check(h, budget_s=10)
    lost = lost_writes(h, {"k0": "v298", "k1": "v299"})
    avail = availability(h)
    meta = {
        "scenario": "kill-leader",
        "seed": 42,
        "duration_s": 4.0,
        "nodes": 3,
        "net": "proxy",
        "clients": 5,
    }
    return write_report(tmp_path / "report", h, verdict, lost, avail, meta), h


def test_report_files_and_self_contained(tmp_path: Path) -> None:
    index, h = _report(tmp_path)
    assert index.name == "index.html" and index.exists()
    page = index.read_text()
    assert "data:image/png;base64," in page
    # nothing from outside: no remote URL, no external script, stylesheet or image
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page)
    assert "<link" not in page and "<script src" not in page
    assert "linearizable: NO" in page and "Violation on key" in page
    assert "lost writes: 1" in page and "gone" in page
    assert "kill-leader" in page and "SIGKILL n1" in page and "seed" in page
    result = json.loads((index.parent / "result.json").read_text())
    for field in (
        "scenario",
        "seed",
        "duration_s",
        "ops",
        "linearizable",
        "lost_writes",
        "max_unavailable_ms",
        "report",
    ):
        assert field in result
    assert result["linearizable"] is False and result["lost_writes"] == 1
    assert result["report"] == str(index.absolute())
    assert result["check"]["violations"] == ["k0"]
    assert History.from_json((index.parent / "history.json").read_text()).ops == h.ops


def test_report_when_all_is_well(tmp_path: Path) -> None:
    index, _ = _report(tmp_path, violation=False)
    page = index.read_text()
    assert "linearizable: yes" in page and "Violation" not in page


def test_report_of_an_empty_history(tmp_path: Path) -> None:
    h = History(start=0.0, end=0.0)
    index = write_report(tmp_path, h, check(h), [], availability(h), {})
    assert "data:image/png;base64," in index.read_text()


def test_format_summary() -> None:
    h = _history()
    verdict = check(h)
    lost = lost_writes(h, {"k0": "v298", "k1": "v299"})
    text = format_summary(verdict, lost, availability(h), {"scenario": "kill-leader", "seed": 42})
    assert "kill-leader" in text and "seed 42" in text
    assert "linearizable: [bold red]NO[/]" in text and "key k0" in text
    assert "lost writes: [bold red]1[/]" in text
    assert "longest without a successful write" in text and len(text.splitlines()) <= 6
    ok = History(start=0.0, end=1.0)
    assert "[bold green]yes" in format_summary(check(ok), [], availability(ok))
    d = result_dict(ok, check(ok), [], availability(ok), {"scenario": "x"})
    assert d["linearizable"] is True and d["lost_writes"] == 0


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)")
def test_report_in_a_real_browser(tmp_path: Path) -> None:
    index, _ = _report(tmp_path)
    url = index.absolute().as_uri()
    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    tag = body.group(0)
    assert 'data-status="loaded"' in tag, tag
    width = re.search(r'data-plot-width="(\d+)"', tag)
    assert width and int(width.group(1)) > 0, tag
    assert "data-errors" not in tag, tag

    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,900", url, profile=tmp_path / "profile2")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1100
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page
