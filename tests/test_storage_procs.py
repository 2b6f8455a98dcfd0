"""Store across processes: SIGKILL durability, read-only readers while the map grows and
while replace_all reopens the writer's environment, a full disk (tmpfs), and stale reader
slots left by killed processes.

Children run `python -c CODE`; every child is killed at teardown, pass or fail, and
the parent waits on their output lines with deadlines, never on sleeps.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.errors import StorageFull
from kvstore.storage import Store

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 20.0


class Child:
    """A `python -c` child whose stdout lines arrive on a queue (so reads can time out)."""

    def __init__(self, code: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = DEADLINE) -> str:
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child printed nothing within {timeout}s") from None
        if got is None:
            raise AssertionError(f"child exited early: rc={self.proc.wait()} stderr={self._stderr()}")
        return got

    def expect(self, prefix: str) -> str:
        got = self.line()
        assert got.startswith(prefix), f"expected {prefix!r}, got {got!r}; stderr={self._stderr()}"
        return got

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> list[str]:
        """SIGKILL, reap, and return the lines it printed before dying."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        self._pump.join(timeout=DEADLINE)
        rest = []
        while True:
            got = self.lines.get_nowait() if not self.lines.empty() else None
            if got is None:
                return rest
            rest.append(got)

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read()[-2000:]


@pytest.fixture
def spawn() -> Iterator[type[Child]]:
    children: list[Child] = []

    class Tracked(Child):
        def __init__(self, code: str, *args: str) -> None:
            super().__init__(code, *args)
            children.append(self)

    try:
        yield Tracked
    finally:
        for c in children:
            try:
                c.kill()
            finally:
                for f in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
                    if f is not None:
                        f.close()


# -- durability -----------------------------------------------------------------------

WRITER = """
    import sys
    from kvstore.storage import Store

    s = Store(sys.argv[1], map_size=256 << 10)  # small, so growth happens under the kill too
    i = s.applied_index() + 1
    while True:
        # As a node does: persist the entries, then apply them. A restart resumes at
        # applied + 1 and log_append overwrites whatever the log held from there.
        s.log_append([(j, b"e%d" % j) for j in range(i, i + 5)], hard_state=b"hs%d" % (i + 4))
        batch = [(j, lambda v, j=j: v.put(b"k%08d" % j, b"v%d." % j * 40)) for j in range(i, i + 5)]
        s.apply_many(batch)
        print(i + 4, flush=True)  # acknowledged: both commits returned
        i += 5
"""


def test_acknowledged_batches_survive_sigkill(tmp_path: Path, spawn: type[Child]) -> None:
    path = tmp_path / "db"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked = 0
    for _round in range(3):
        child = spawn(WRITER, str(path))
        for _ in range(rng.randrange(3, 40)):
            acked = int(child.line())
        acked = max([acked, *(int(x) for x in child.kill())])  # acks printed before the kill count too
        with Store(path) as s:
            applied = s.applied_index()
            assert applied >= acked, f"seed={seed}: acknowledged {acked}, applied index {applied}"
            for j in range(1, acked + 1):
                assert s.get(b"k%08d" % j) == b"v%d." % j * 40, f"seed={seed}: lost key {j}"
            first, last = s.log_bounds()
            assert first == 1 and last >= acked, f"seed={seed}"
            assert [i for i, _ in s.log_get(1, acked + 1)] == list(range(1, acked + 1))
            hs = s.hard_state()
            assert hs is not None and int(hs[2:]) >= acked
            # the applied data never runs ahead of the applied index, nor behind it
            assert s.count() == applied
        acked = applied  # the next child resumes from there


# -- map growth with a read-only reader in another process -----------------------------

READER = """
    import sys
    from kvstore.storage import Store

    r = Store(sys.argv[1], readonly=True)
    print("ready", r.stats()["map_size"], r.get(b"marker").decode(), flush=True)
    for cmd in sys.stdin:
        n = 0
        for k, v in r.scan(b"g"):
            assert v == k * 100, k
            n += 1
        print("ok", n, r.stats()["map_size"], flush=True)
"""


def test_map_grows_past_initial_size_and_readers_follow(tmp_path: Path, spawn: type[Child]) -> None:
    path = tmp_path / "db"
    with Store(path, map_size=1 << 20) as s:
        s.put(b"marker", b"here")
        reader = spawn(READER, str(path))
        ready = reader.expect("ready").split()
        assert int(ready[1]) <= 1 << 20 and ready[2] == "here"
        reader.send("scan")
        assert reader.expect("ok").split()[1] == "0"
        n = 0
        for b in range(1, 23):  # 22 batches of 512 x ~1 KiB: over 11 MiB of values
            keys = [b"g%02d-%04d" % (b, i) for i in range(512)]
            s.apply(b, lambda v, keys=keys: [v.put(k, k * 100) for k in keys])
            n += len(keys)
        st = s.stats()
        assert st["map_size"] >= 16 << 20 and st["used_bytes"] > 10 << 20, st
        assert len(s.scan(b"g")) == n
        assert s.get(b"g01-0000") == b"g01-0000" * 100
        # the reader opened at 1 MiB must adopt the grown map and see everything
        reader.send("scan")
        _, count, reader_map = reader.expect("ok").split()
        assert int(count) == n
        assert int(reader_map) >= st["used_bytes"]


SCANNER = """
    import sys, threading
    from kvstore.storage import Store

    s = Store(sys.argv[1], readonly=True)
    n = int(sys.argv[2])
    stop = threading.Event()
    state = {"scans": 0, "gens": set(), "err": None}

    def loop():
        try:
            while not stop.is_set():
                items = s.scan()
                gens = {v.split(b"-")[0] for _, v in items}
                assert len(items) == n and len(gens) == 1, (len(items), sorted(gens))
                state["gens"] |= gens
                state["scans"] += 1
        except BaseException as e:
            state["err"] = repr(e)

    t = threading.Thread(target=loop)
    t.start()
    print("ready", flush=True)
    sys.stdin.readline()
    stop.set()
    t.join()
    print("done", state["scans"], len(state["gens"]), state["err"], flush=True)
"""


def test_readonly_process_reads_across_replace_all_reopens(tmp_path: Path, spawn: type[Child]) -> None:
    """The writer's replace_all closes and reopens its environment; a read-only process
    scanning meanwhile keeps seeing one whole generation, also when an install grows the map."""
    path, n = tmp_path / "db", 400

    def gen(g: int) -> list[tuple[bytes, bytes]]:
        pad = b"x" * (3000 if g == 3 else 10)  # generation 3 (1.2 MB) outgrows the 1 MiB map
        return [(b"k%04d" % i, b"g%d-%s" % (g, pad)) for i in range(n)]

    with Store(path, map_size=1 << 20) as s:
        s.replace_all(gen(0), 1)
        reader = spawn(SCANNER, str(path), str(n))
        reader.expect("ready")
        for g in range(1, 7):
            s.replace_all(gen(g), 1 + g)
            time.sleep(0.05)  # pacing only: let the reader scan each generation
        assert s.stats()["map_size"] > 1 << 20
        reader.send("stop")
        _, scans, gens, err = reader.expect("done").split(maxsplit=3)
        assert err == "None", err
        assert int(scans) > 0 and int(gens) > 1, (scans, gens)


# -- full disk ------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 4 MiB tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_raises_storage_full_and_keeps_data(small_tmpfs: Path) -> None:
    path = small_tmpfs / "db"
    acked = 0
    s = Store(path, map_size=1 << 20)
    try:
        with pytest.raises(StorageFull) as ei:
            for b in range(1, 10_000):
                s.apply(
                    b,
                    lambda v, b=b: [v.put(b"%05d-%02d" % (b, i), bytes([b % 251]) * 1000) for i in range(16)],
                )
                acked = b
        msg = str(ei.value)
        assert "full" in msg and "\n" not in msg and str(path) in msg
        assert acked > 50  # we really filled the disk, not failed at the start
        assert s.applied_index() == acked
        assert s.count() == acked * 16
        for b in (1, acked // 2, acked):
            assert s.get(b"%05d-00" % b) == bytes([b % 251]) * 1000
        assert s.stats()["file_size"] > 3 << 20
    finally:
        s.close()
    with Store(path) as s:  # and after a reopen
        assert s.applied_index() == acked
        assert s.count() == acked * 16


# -- stale reader slots ----------------------------------------------------------------

HOLDER = """
    import sys
    from kvstore.storage import Store

    r = Store(sys.argv[1], readonly=True)
    if sys.argv[2] == "hold":
        with r.read_txn_snapshot() as (index, items):
            print("holding", index, flush=True)
            sys.stdin.readline()  # SIGKILLed here, its reader slot still taken
    else:
        print("idle", flush=True)
        sys.stdin.readline()
"""


def test_stale_reader_slot_is_cleared_on_open(tmp_path: Path, spawn: type[Child]) -> None:
    path = tmp_path / "db"
    with Store(path) as s:
        s.apply(1, lambda v: v.put(b"a", b"1"))
    # A live process keeps the lock file's reader table in use (else the next opener
    # would simply reinitialise it), while another dies holding a read txn.
    idle = spawn(HOLDER, str(path), "idle")
    idle.expect("idle")
    holder = spawn(HOLDER, str(path), "hold")
    assert holder.expect("holding").split()[1] == "1"
    holder.kill()
    with Store(path) as s:
        assert s.stale_readers_cleared == 1
        assert s.stats()["readers"] <= 2  # idle's cached slot at most, plus ours
        s.apply(2, lambda v: v.put(b"a", b"2"))
        assert s.get(b"a") == b"2"


def test_stale_reader_does_not_block_the_writer(tmp_path: Path, spawn: type[Child]) -> None:
    path = tmp_path / "db"
    with Store(path, map_size=1 << 20) as s:
        s.apply(1, lambda v: v.put(b"a", b"1"))
        holder = spawn(HOLDER, str(path), "hold")
        holder.expect("holding")
        holder.kill()
        assert s.reader_check() == 1
        assert s.reader_check() == 0
        # with the slot gone, old pages are reused: rewriting the same 64 KiB value
        # many times must not grow the file by the total written
        t0 = time.monotonic()
        for i in range(2, 200):
            s.apply(i, lambda v, i=i: v.put(b"big", bytes([i % 256]) * (64 << 10)))
        assert time.monotonic() - t0 < DEADLINE
        assert s.stats()["file_size"] < 4 << 20
        assert s.get(b"big") == bytes([199]) * (64 << 10)
