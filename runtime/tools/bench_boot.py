"""`ring1 bench boot`: Debian's Linux (`make linux-guest`) booted to its shell and a fork+exec
loop run there, under each mode in one run, with where the time went.

Each mode is one `ring1 run --kernel ... --json-stats F` driven on its serial console (the
session of tests/test_linux_session.py): the wall time from starting ring1 to init's marker
on the console (the boot), then from typing the loop to the shell's marker after it (N times
`/bin/true`, each a fork and an exec in busybox's shell). At both ends of each phase ring1 is
sent SIGUSR1 and writes its statistics so far into F: the time ledger's split of the wall time
by cause (ring1.runtime.ledger) for the phase is the difference of two of them. The ratios
are bt's times to bare's, measured in the same run on the same machine.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from ring1.runtime.ledger import split_between
from ring1.runtime.tools import tables
from ring1.runtime.tools.console_session import APPEND, INITRD, KERNEL, Session, SessionError
from ring1.runtime.tools.linux_guest import MARKER

MODES = ("bt", "bare")
TARGET_RATIO = 1.5  # issue 11: bt at most 1.5x bare, on the boot and on the loop
PHASES = ("boot", "forks")
SNAPSHOT_TIMEOUT = 60.0  # seconds for ring1 to answer a SIGUSR1 (it does at its next exit to Python)


class BenchError(Exception):
    pass


def _snapshot(session: Session, path: Path, previous: int | None) -> tuple[dict, int]:
    """Ask the running ring1 for its statistics so far; wait for the file to be replaced.
    Returns them and the file's modification time (to tell the next snapshot from this one)."""
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    session.proc.send_signal(signal.SIGUSR1)
    while time.monotonic() < deadline:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != previous:
            return json.loads(path.read_text()), stamp
        if session.proc.poll() is not None:
            raise BenchError(f"{session.mode}: ring1 ended ({session.proc.returncode}) before its statistics")
        time.sleep(0.05)
    raise BenchError(f"{session.mode}: no statistics within {SNAPSHOT_TIMEOUT:.0f} s of SIGUSR1")


def _phase(before: dict | None, after: dict, wall: float) -> dict:
    empty = {"seconds": {}, "entries": {}}
    split = split_between(
        {"seconds": before["time_by_cause_s"], "entries": before["entries_by_cause"]} if before else empty,
        {"seconds": after["time_by_cause_s"], "entries": after["entries_by_cause"]},
    )
    return {"wall_s": round(wall, 3), "time_by_cause_s": split["seconds"], "entries_by_cause": split["entries"]}


def _counters(before: dict | None, after: dict) -> dict:
    """The run's own counters (instructions translated, callouts, user instructions run
    directly...) over the phase."""
    out = {}
    for key, value in after.items():
        if isinstance(value, int) and not isinstance(value, bool) and key not in ("exit_status",):
            out[key] = value - (before or {}).get(key, 0)
    return out


def measure_mode(mode: str, forks: int, kernel: Path, initrd: Path, boot_timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="ring1-bench-boot-") as tmp:
        stats_file = Path(tmp) / "stats.json"
        session = Session(mode, "--json-stats", str(stats_file), kernel=kernel, initrd=initrd)
        try:
            session.expect(MARKER, boot_timeout)
            boot_wall = time.monotonic() - session.started
            booted, stamp = _snapshot(session, stats_file, None)
            t0 = time.monotonic()
            loop = f"i=0; while [ $i -lt {forks} ]; do /bin/true; i=$((i+1)); done; echo forked $i"
            out = session.run(loop, timeout=boot_timeout)
            forks_wall = time.monotonic() - t0
            if f"forked {forks}" not in out:
                raise BenchError(f"{mode}: the loop printed {out!r}")
            looped, _ = _snapshot(session, stats_file, stamp)
            session.type("poweroff -f")
            status = session.finish()
        except SessionError as err:
            raise BenchError(str(err).splitlines()[0]) from None
        finally:
            session.kill()
        if status != 0:
            raise BenchError(f"{mode}: ring1 ended with status {status}: {session.stderr.strip()[-500:]}")
    return {
        "boot": {**_phase(None, booted, boot_wall), "counters": _counters(None, booted)},
        "forks": {**_phase(booted, looped, forks_wall), "counters": _counters(booted, looped)},
    }


def run_boot_bench(
    modes: tuple[str, ...] = MODES,
    forks: int = 200,
    kernel: Path = KERNEL,
    initrd: Path = INITRD,
    boot_timeout: float = 3600.0,
    progress=None,
) -> dict:
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if not Path(path).is_file():
            raise BenchError(f"no {what} at {path}: make the Linux guest first (make linux-guest)")
    result: dict = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "append": APPEND,
        "forks": forks,
        "cpus": os.cpu_count(),
        "target_ratio": TARGET_RATIO,
        "modes": {},
    }
    for mode in modes:
        if progress is not None:
            progress.step(f"{mode}: boot, {forks} fork+exec")
        result["modes"][mode] = measure_mode(mode, forks, Path(kernel), Path(initrd), boot_timeout)
    if "bt" in result["modes"] and "bare" in result["modes"]:
        bt, bare = result["modes"]["bt"], result["modes"]["bare"]
        result["ratios"] = {p: round(bt[p]["wall_s"] / bare[p]["wall_s"], 3) for p in PHASES}
    return result


def _share(seconds: float, wall: float) -> str:
    return f"{100 * seconds / wall:.1f} %" if wall else ""


def format_boot(result: dict) -> str:
    modes = list(result["modes"])
    forks = result["forks"]
    labels = {"boot": "boot to the shell", "forks": f"{forks} fork+exec of /bin/true"}
    head = ["phase", *(f"{m} wall" for m in modes)]
    ratios = result.get("ratios")
    if ratios:
        head.append("bt / bare")
    rows = []
    for p in PHASES:
        row = [labels[p], *(f"{result['modes'][m][p]['wall_s']:.1f} s" for m in modes)]
        if ratios:
            row.append(f"{ratios[p]:.2f}x")
        rows.append(tuple(row))
    lines = [
        f"ring1 bench boot: {Path(result['kernel']).name} + {Path(result['initrd']).name}, "
        f"--append {result['append']!r}, on {result['cpus']} CPUs",
        *tables.render(tuple(head), rows, "l" + "r" * (len(head) - 1)),
    ]
    if ratios:
        lines.append(f"Target (issue 11): bt at most {result['target_ratio']}x bare on each phase.")
    for p in PHASES:
        lines.append("")
        lines.append(f"Where the time went, {labels[p]} (time, share of the phase, entries = exits to Python):")
        causes: dict[str, float] = {}
        for m in modes:
            for cause, t in result["modes"][m][p]["time_by_cause_s"].items():
                causes[cause] = max(causes.get(cause, 0.0), t / (result["modes"][m][p]["wall_s"] or 1))
        shown = [c for c in sorted(causes, key=lambda c: -causes[c]) if causes[c] >= 0.005]
        rows = []
        for cause in shown:
            row = [cause]
            for m in modes:
                rec = result["modes"][m][p]
                t = rec["time_by_cause_s"].get(cause)
                n = rec["entries_by_cause"].get(cause)
                row += [f"{t:.2f} s" if t else "", _share(t, rec["wall_s"]) if t else "", f"{n:,}" if n else ""]
            rows.append(tuple(row))
        rest = []
        for m in modes:
            rec = result["modes"][m][p]
            t = sum(v for c, v in rec["time_by_cause_s"].items() if c not in shown)
            rest += [f"{t:.2f} s", _share(t, rec["wall_s"]), ""]
        rows.append(("(each under 0.5 %)", *rest))
        outside = []
        for m in modes:
            rec = result["modes"][m][p]
            t = rec["wall_s"] - sum(rec["time_by_cause_s"].values())
            outside += [f"{t:.2f} s", _share(t, rec["wall_s"]), ""]
        rows.append(("(outside the run: start-up, console latency)", *outside))
        head = ["cause"]
        for m in modes:
            head += [m, "share", "entries"]
        lines += tables.render(tuple(head), rows, "l" + "rrr" * len(modes), indent="  ")
    lines.append("")
    lines.append(
        "Wall time from starting ring1 (the boot) and from typing the loop (the loop) to the console's "
        "marker; the split is ring1's own ledger (ring1 run --stats), between SIGUSR1 snapshots."
    )
    return "\n".join(lines)
