"""The time ledger (ring1.runtime.ledger): exclusive time by cause, entries, relabelling, phases;
and `ring1 run`'s use of it (--stats, --json-stats, a snapshot on SIGUSR1)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ring1.runtime.ledger import NO_LEDGER, TimeLedger, split_between, timed


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_causes_are_charged_exclusive_time() -> None:
    clock = FakeClock()
    ledger = TimeLedger("other", clock)
    clock.now = 1.0
    ledger.enter("hardware")  # 1 s of "other"
    clock.now = 4.0
    ledger.enter("callout OUT")  # 3 s of hardware
    clock.now = 4.5
    ledger.enter("I/O COM1")  # 0.5 s of the callout's own
    clock.now = 6.5
    ledger.leave()  # 2 s of I/O
    clock.now = 7.0
    ledger.leave()  # 0.5 s more of the callout
    clock.now = 10.0
    ledger.leave()  # 3 s more of hardware
    clock.now = 10.25
    snap = ledger.snapshot()
    assert snap["seconds"] == {"hardware": 6.0, "I/O COM1": 2.0, "other": 1.25, "callout OUT": 1.0}
    assert snap["entries"] == {"hardware": 1, "I/O COM1": 1, "callout OUT": 1}
    assert sum(snap["seconds"].values()) == clock.now  # nothing counted twice or lost


def test_relabel_moves_the_handlers_own_time_and_its_entry_not_its_callees() -> None:
    clock = FakeClock()
    ledger = TimeLedger("other", clock)
    ledger.enter("exception")
    clock.now = 1.0
    ledger.enter("translation")
    clock.now = 3.0
    ledger.leave()
    clock.now = 3.5
    ledger.relabel("hidden page fault")
    clock.now = 4.0
    ledger.leave()
    snap = ledger.snapshot()
    assert snap["seconds"] == {"translation": 2.0, "hidden page fault": 2.0}
    assert snap["entries"] == {"translation": 1, "hidden page fault": 1}


def test_cancel_gives_a_declined_handlers_entry_and_time_to_the_cause_below() -> None:
    clock = FakeClock()
    ledger = TimeLedger("other", clock)
    ledger.enter("translated code")
    clock.now = 2.0
    ledger.enter("hidden page faults")  # a fast path, inside the hardware's run
    clock.now = 2.5
    ledger.cancel()  # not its case after all
    clock.now = 3.0
    ledger.enter("hidden page faults")
    clock.now = 4.0
    ledger.leave()
    ledger.leave()
    snap = ledger.snapshot()
    assert snap["seconds"] == {"translated code": 3.0, "hidden page faults": 1.0}
    assert snap["entries"] == {"translated code": 1, "hidden page faults": 1}
    assert ledger.depth == 1


def test_the_base_cause_is_never_left_and_phases_subtract() -> None:
    clock = FakeClock()
    ledger = TimeLedger("other", clock)
    ledger.leave()  # unbalanced: harmless
    ledger.enter("a")
    clock.now = 2.0
    first = ledger.snapshot()
    clock.now = 5.0
    ledger.leave()
    ledger.enter("b")
    clock.now = 6.0
    phase = split_between(first, ledger.snapshot())
    assert phase == {"seconds": {"a": 3.0, "b": 1.0}, "entries": {"b": 1}}
    assert ledger.depth == 2


def test_timed_methods_charge_their_cause_even_when_they_raise() -> None:
    clock = FakeClock()

    class Handler:
        ledger = TimeLedger("other", clock)

        @timed("work")
        def work(self, fail: bool) -> int:
            clock.now += 1.0
            if fail:
                raise ValueError("guest fault")
            return 7

    h = Handler()
    assert h.work(False) == 7
    with pytest.raises(ValueError):
        h.work(True)
    assert h.ledger.snapshot()["seconds"] == {"work": 2.0}
    assert h.ledger.depth == 1
    NO_LEDGER.enter("x")  # the default ledger accounts nothing
    NO_LEDGER.relabel("y")
    NO_LEDGER.leave()


@pytest.mark.parametrize("mode", ["bt", "bare", "interp"])
def test_run_stats_split_the_wall_time_by_cause(mode: str, tmp_path: Path, guests: Path) -> None:
    out = tmp_path / "stats.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ring1.runtime.cli",
            "run",
            str(guests / "procs.elf"),
            "--mode",
            mode,
            "--stats",
            "--json-stats",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(out.read_text())
    seconds, entries = stats["time_by_cause_s"], stats["entries_by_cause"]
    # The causes add up to the run's wall time (the ledger starts with the guest).
    assert sum(seconds.values()) == pytest.approx(stats["wall_time_s"], rel=0.05, abs=0.01)
    assert "where the wall time went" in r.stderr
    if mode == "bt":
        assert {"translated code", "direct execution", "translation", "hidden page faults"} <= set(seconds)
        assert entries["I/O COM1"] > 0  # the guest's console, from callouts and run directly
        callouts = sum(n for cause, n in entries.items() if cause.startswith("callout "))
        assert callouts == stats["callouts"]
        # (the shadow also fills entries for the VMM itself, from callouts and walks: at most as many)
        assert 0 < entries["hidden page faults"] <= stats["hidden_page_faults"]
    elif mode == "bare":
        assert "guest code on unicorn" in seconds and "interrupts delivered" in seconds
    else:
        assert max(seconds, key=seconds.get) == "interpreter"
        com1 = sum(sum(ops.values()) for port, ops in stats["io_by_port"].items() if 0x3F8 <= int(port, 16) <= 0x3FF)
        assert entries["I/O COM1"] == com1 > 0  # every access to the device is entered once


def test_sigusr1_writes_a_snapshot_and_the_run_goes_on(tmp_path: Path, guests: Path) -> None:
    """`kill -USR1` on a running `ring1 run --json-stats F` replaces F with the figures so far."""
    out = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ring1.runtime.cli",
            "run",
            str(guests / "spin.elf"),
            "--mode",
            "bt",
            "--json-stats",
            str(out),
            "--max-insns",
            "3000000000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Only once ring1 catches SIGUSR1 (before, its default action would end the process):
        # the caught-signals mask of /proc/PID/status says so.
        status = Path(f"/proc/{proc.pid}/status")
        deadline = time.monotonic() + 120
        while not int(re.search(r"SigCgt:\s*([0-9a-f]+)", status.read_text()).group(1), 16) >> (signal.SIGUSR1 - 1) & 1:
            assert proc.poll() is None and time.monotonic() < deadline, "ring1 never caught SIGUSR1"
            time.sleep(0.1)
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        assert out.exists(), "no snapshot written"
        snap = json.loads(out.read_text())
        assert snap["snapshot"] == "while running" and snap["wall_time_s"] > 0
        assert "translated code" in snap["time_by_cause_s"]
        assert proc.poll() is None, "the run ended on SIGUSR1"
    finally:
        proc.kill()
        proc.wait()
