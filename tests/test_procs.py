"""The multi-process kernel (guests/procs.c, its user programs guests/procs_user.c) under
`ring1 run`, in every mode.

Each run is what a user types: `ring1 run build/guests/procs.elf --mode MODE --serial-input
none`. The kernel runs its processes at CPL 3 in their own page directories, preempted by the
PIT; init (a user program) runs one check per line ("procs: NAME ok: ..."): fork with
copy-on-write, exec, wait, pipes that block, sbrk, yield, preemption of CPU-bound processes, a
write to the kernel's pages and to nothing, CLI and IN at IOPL 0 (each killing only the
process), and the red pill's five checks at CPL 3. Its console must show every check passed,
end with exit status 0, be interp's in every mode and the same from one run to the next.

A mode in which a ring1 defect (not the guest) breaks the run is a strict expected failure
naming the defect (RING1_DEFECTS): the test raises KnownRing1Defect only when the console
shows that defect's signature, so any other failure still fails, and the mark goes (strict)
once the defect is fixed.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests import runs
from tests.runs import ring1

CHECKS = [
    "getpid",
    "exec-missing",
    "sbrk",
    "sbrk-shrink",
    "fork-cow",
    "cow-parent",
    "exec",
    "fork-wait",
    "pipe",
    "preempt",
    "yield",
    "segv-kernel",
    "segv-unmapped",
    "gp-cli",
    "gp-in",
    "redpill",
    "no-leaks",
]
MODES = ["interp", "bare", "bt", "trap"]


class KnownRing1Defect(Exception):
    """The run shows the signature of a ring1 defect recorded in RING1_DEFECTS."""


# mode -> [(a ring1 defect, a console fragment only that defect produces there)]. Each has a
# minimal reproduction in tests/test_procs_ring1_defects.py, a strict xfail in those modes.
RING1_DEFECTS: dict[str, list[tuple[str, str]]] = {}


def xfail_if_known(mode: str) -> list:
    if mode not in RING1_DEFECTS:
        return []
    reason = "; ".join(defect for defect, _ in RING1_DEFECTS[mode])
    return [pytest.mark.xfail(raises=KnownRing1Defect, strict=True, reason=reason)]


MODE_PARAMS = [pytest.param(mode, marks=xfail_if_known(mode)) for mode in MODES]


@cache
def ring1_run(guests: Path, mode: str, repeat: int = 0, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """procs in `mode`, once per (mode, repeat, extra options)."""
    return ring1("run", str(guests / "procs.elf"), "--mode", mode, "--serial-input", "none", *extra)


def check_lines(out: str) -> dict[str, str]:
    return runs.check_lines(out, "procs")


def raise_if_known_defect(done: subprocess.CompletedProcess, mode: str) -> None:
    """KnownRing1Defect when the run failed and shows a known defect's signature."""
    if done.returncode == 0:
        return
    for defect, signature in RING1_DEFECTS.get(mode, []):
        if signature in done.stdout:
            raise KnownRing1Defect(f"{defect}\n{done.stdout}")


def assert_passed(done: subprocess.CompletedProcess, mode: str) -> None:
    runs.assert_all_checks_passed(
        done, mode, "procs", CHECKS, f"procs: all {len(CHECKS)} checks passed\nkernel: init exited with status 0\n"
    )


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_procs_passes(guests, mode):
    done = ring1_run(guests, mode)
    raise_if_known_defect(done, mode)
    assert_passed(done, mode)
    lines = done.stdout.splitlines()
    # What the checks saw, as a reader would check it against the kernel's design.
    for expected in [
        "init: pid 1 at CPL 3",
        "hello: pid 3, exec'd with argument 3",
        "procs: pipe ok: 1000 bytes in order through a 64-byte pipe (sum 124716), end of file once the writer "
        "exited, blocked: yes",
        "procs: preempt ok: two CPU-bound spinners both made progress: letters interleaved yes, each preempted "
        "twice or more yes",
        "procs: segv-kernel ok: a write to the kernel's image (supervisor-only) took #PF: the kernel killed the "
        "child, wait saw status 10e",
        "procs: gp-in ok: IN at CPL 3 with IOPL 0 took #GP: the kernel killed the child, wait saw status 10d",
        "redpill popf: IF 1, then 1 after popf with IF clear, IOPL 0 (expected 1, 1, 0) -> same",
        "redpill cs: CS 001b, RPL 3 (the kernel's user code selector 001b) -> same",
        "redpill str: TR 0028, the kernel loaded 0028 -> same",
    ]:
        assert expected in lines, f"{mode}: missing {expected!r} in:\n{done.stdout}"
    killed = [line for line in lines if line.startswith("kernel: pid ") and " killed: " in line]
    assert [line.split(" killed: ")[1].split(",")[0].split(" (")[0] for line in killed] == [
        "#PF writing 00100000",
        "#PF writing 60000000",
        "#GP error 0",
        "#GP error 0",
    ], done.stdout
    assert "(error 7: protection, present page)" in killed[0] and "(error 6: not present)" in killed[1]
    assert sum(line.endswith("-> same") for line in lines if line.startswith("redpill ")) == 5, done.stdout


@pytest.mark.parametrize("mode", [p for p in MODE_PARAMS if p.values[0] != "interp"])
def test_procs_output_is_interps(guests, mode):
    reference, done = ring1_run(guests, "interp"), ring1_run(guests, mode)
    assert_passed(reference, "interp")
    raise_if_known_defect(done, mode)
    assert done.stdout == reference.stdout
    assert done.returncode == reference.returncode == 0


@pytest.mark.parametrize("mode", MODES)
def test_procs_output_is_the_same_run_after_run(guests, mode):
    first, second = ring1_run(guests, mode), ring1_run(guests, mode, repeat=1)
    assert first.stdout == second.stdout
    assert first.returncode == second.returncode


def test_procs_stats_under_bt_show_direct_execution(guests, tmp_path):
    """Issue 10's acceptance: `ring1 run --stats` shows user instructions run directly, system
    calls reflected, hidden faults, traced writes, and CR3 switches that found their shadow warm."""
    import json

    stats = tmp_path / "stats.json"
    done = ring1_run(guests, "bt", extra=("--stats", "--json-stats", str(stats)))
    assert_passed(done, "bt")
    figures = json.loads(stats.read_text())
    assert figures["user_instructions_direct"] > 100_000  # the spinners, the pipe, the programs
    assert figures["user_soft_interrupts_reflected"] > 100  # INT 0x80 from user code
    assert figures["user_events_reflected"] > 0  # the segv and gp programs' faults
    assert figures["hidden_page_faults"] > 0 and figures["traced_writes"] > 0
    assert figures["cr3_switches_warm"] > figures["cr3_switches_cold"] > 0  # the shadows kept per process
    assert figures["user_world_switches"] > 100
    assert figures["user_code_interpreted"] == 0  # procs's tables are never hostile or stale
    # The kernel's memset store traps while it zeroes page tables and becomes a callout; zeroing
    # data pages it writes no watched page, and gets its own rule back (before: ~470,000
    # callouts, one per byte for good; now ~40,000).
    assert figures["acquittals"] >= 1 and figures["callouts"] < 150_000
    for label in (
        "user instructions run directly",
        "system calls from user code reflected",
        "CR3 switches that found their shadow warm",
    ):
        assert label in done.stderr + done.stdout
