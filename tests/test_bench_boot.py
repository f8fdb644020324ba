"""`ring1 bench boot` (issue 11): the Linux guest's boot and fork+exec loop under bt and bare in
one run, the ratio, and the time of each phase split by cause.

The real run needs the Linux guest (`make linux-guest`; CI makes it) and minutes per mode; it
runs with a short loop. The table's arithmetic is checked on a made-up result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ring1.runtime.tools.bench_boot import format_boot
from ring1.runtime.tools.console_session import INITRD, KERNEL


def made_up() -> dict:
    def phase(wall: float, seconds: dict[str, float], entries: dict[str, int]) -> dict:
        return {"wall_s": wall, "time_by_cause_s": seconds, "entries_by_cause": entries, "counters": {}}

    return {
        "kernel": "vmlinuz",
        "initrd": "initrd.gz",
        "append": "console=ttyS0",
        "forks": 7,
        "cpus": 2,
        "target_ratio": 1.5,
        "modes": {
            "bt": {
                "boot": phase(
                    30.0, {"translated code": 12.0, "callout RDTSC": 9.0, "tiny": 0.01}, {"callout RDTSC": 900}
                ),
                "forks": phase(8.0, {"direct execution": 2.0, "hidden page faults": 4.0}, {"hidden page faults": 4000}),
            },
            "bare": {
                "boot": phase(20.0, {"guest code on unicorn": 15.0}, {"guest code on unicorn": 10}),
                "forks": phase(2.0, {"guest code on unicorn": 1.5}, {}),
            },
        },
        "ratios": {"boot": 1.5, "forks": 4.0},
    }


def test_the_table_shows_phases_ratios_and_every_second_of_each_phase() -> None:
    text = format_boot(made_up())
    lines = text.splitlines()
    boot = next(line for line in lines if line.startswith("boot to the shell"))
    assert boot.split()[-3:] == ["20.0", "s", "1.50x"] and "30.0 s" in boot
    assert "4.00x" in next(line for line in lines if line.startswith("7 fork+exec"))
    assert "callout RDTSC" in text and "900" in text and "30.0 %" in text  # 9 s of bt's 30
    assert "tiny" not in text  # under 0.5 %: summed into the rest
    rest = [line for line in lines if line.strip().startswith("(each under 0.5 %)")]
    assert rest and "0.01 s" in rest[0]
    # What the ledger did not see (start-up, console latency) closes each phase: 30 - 21.01.
    outside = [line for line in lines if "(outside the run" in line]
    assert len(outside) == 2 and "8.99 s" in outside[0]


@pytest.mark.skipif(not (KERNEL.exists() and INITRD.exists()), reason="the Linux guest is not built (make linux-guest)")
def test_bench_boot_runs_both_modes_in_one_run() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ring1.runtime.cli", "bench", "boot", "--forks", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    bt, bare = result["modes"]["bt"], result["modes"]["bare"]
    for p in ("boot", "forks"):
        assert result["ratios"][p] == pytest.approx(bt[p]["wall_s"] / bare[p]["wall_s"], rel=1e-2)
        for rec in (bt[p], bare[p]):
            # The ledger's split lies within the phase's wall time (the phase also holds
            # ring1's start-up and the console's latency, which it cannot see).
            assert 0 < sum(rec["time_by_cause_s"].values()) <= rec["wall_s"] * 1.1 + 1
    assert bt["boot"]["time_by_cause_s"]["translated code"] > 0
    assert bt["forks"]["counters"]["user_instructions_direct"] > 0  # the loop's user code ran directly
    assert any(c.startswith("callout ") for c in bt["boot"]["entries_by_cause"])
    assert "guest code on unicorn" in bare["boot"]["time_by_cause_s"]
    assert any(c.startswith("I/O ") for c in bare["boot"]["time_by_cause_s"])
