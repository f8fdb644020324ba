"""The device self-test kernel (guests/devtest.c) under `ring1 run`, in every mode.

Each run boots devtest with a fresh 1 MB disk image and a line of serial input, as a user
would: `ring1 run build/guests/devtest.elf --mode MODE --disk disk.img --serial-input in.txt`.
The kernel checks the platform's chips itself and prints one line per check; here the run
must end with status 0 and every check ok, the console must be the same in every mode and
from one run to the next, and the disk image must keep what the guest wrote (and keep nothing
of a --snapshot run). A mode whose engine has a bug devtest found (ENGINE_BUGS) may fail only
that bug's checks, with the rest of its console interp's, and is reported as an expected
failure with the bug's description until the bug is gone.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests import runs
from tests.runs import ring1

DISK_SIZE = 1 << 20
SERIAL_LINE = b"hello ring1\n"
RUN_SIGNATURE = b"ring1 devtest run "
CHECKS = [
    "boot",
    "pic",
    "timer",
    "busy-wait",
    "tsc",
    "rtc",
    "acpi",
    "mp",
    "pm-timer",
    "lapic",
    "lapic-timer",
    "ioapic",
    "vga",
    "pci",
    "ata-reset",
    "ata-identify",
    "ata-pio",
    "ata-run-counter",
    "ata-bad-command",
    "ata-bad-lba",
    "ata-after-errors",
    "serial",
    "read-only",
    "irq-storm",
    "no-eoi",
    "masked-hlt",
]

# Known deviations that fail checks in a mode, each proven where it is recorded: the checks a
# mode may fail because of them, and why. Every other check must pass there as anywhere, and
# the rest of the console must be interp's; the test then ends as an expected failure. Once
# none of them fails, the test fails until the entry goes.
ENGINE_BUGS: dict[str, tuple[set[str], str]] = {}  # none known now
MODES = ["interp", "bt", "bare", "trap"]


def failed_checks(out: str) -> set[str]:
    return {name for name, verdict in check_lines(out).items() if verdict != "ok"}


def known_engine_bugs(done: subprocess.CompletedProcess, mode: str) -> str | None:
    """The reason when the run failed only checks that a known engine bug fails in `mode`; None
    when it failed none. A failure no known bug explains, or a known bug gone, fails the test."""
    failed = failed_checks(done.stdout)
    if mode not in ENGINE_BUGS:
        return None
    known, reason = ENGINE_BUGS[mode]
    assert failed <= known, f"{mode}: {sorted(failed - known)} failed too\n{done.stdout}"
    assert failed, f"{mode}: no check fails now: ENGINE_BUGS[{mode!r}] can go\n{done.stdout}"
    return reason


def ring1_run(guests: Path, mode: str, *args: str) -> subprocess.CompletedProcess:
    return ring1("run", str(guests / "devtest.elf"), "--mode", mode, *args)


def fresh_disk(path: Path) -> Path:
    path.write_bytes(bytes(DISK_SIZE))
    return path


def pattern(lba: int) -> bytes:
    """What devtest writes to sectors 1 and 2 (its pattern_byte)."""
    return bytes(((lba * 31 + i * 7) ^ 0x5A) & 0xFF for i in range(512))


@cache
def standard_run(guests: Path, tmp: Path, mode: str, repeat: int = 0) -> subprocess.CompletedProcess:
    """devtest in `mode` with a fresh disk and the serial line, once per (mode, repeat); the VGA
    text screen at the end is in the run's folder, screen.txt."""
    work = tmp / f"{mode}-{repeat}"
    work.mkdir()
    serial = work / "serial.txt"
    serial.write_bytes(SERIAL_LINE)
    disk = fresh_disk(work / "disk.img")
    screen = work / "screen.txt"
    return ring1_run(guests, mode, "--disk", str(disk), "--serial-input", str(serial), "--screenshot", str(screen))


@pytest.fixture(scope="module")
def run(guests: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("devtest")
    return lambda mode, repeat=0: standard_run(guests, tmp, mode, repeat)


def check_lines(out: str) -> dict[str, str]:
    return runs.check_lines(out, "devtest")


def assert_passed(done: subprocess.CompletedProcess, mode: str) -> None:
    runs.assert_all_checks_passed(done, mode, "devtest", CHECKS, f"devtest: all {len(CHECKS)} checks passed\n")


@pytest.mark.parametrize("mode", MODES)
def test_devtest_passes(run, mode):
    done = run(mode)
    bugs = known_engine_bugs(done, mode)
    if bugs:
        pytest.xfail(bugs)
    assert_passed(done, mode)
    lines = done.stdout.splitlines()
    # What the checks saw, as a human would compare it with the platform's documentation.
    for expected in [
        "devtest: timer ok: about 200 PIT ticks at 100 Hz in 2 RTC seconds (190-210 expected), in HLT",
        "devtest: tsc ok: 1000 MHz against PIT channel 2 over 10 ms (1000 +- 1%)",
        "devtest: pm-timer ok: port 608 runs at 3.58 MHz against the TSC (3.579545 expected)",
        "devtest: lapic ok: CPUID.1:EDX.APIC set, MSR 1b = fee00900, ID 0, version 14 with 6 LVT entries, "
        "TPR/PPR 00/00 (20/20 after a TPR write), SVR 1ff, LINT0 ExtINT, LINT1 NMI",
        "devtest: lapic-timer ok: one-shot: 62500 counts at divide 16, 1 interrupt on vector 40 after 10 ms by the "
        "PM timer, current count 0 after; periodic: 50 periods of 6250 counts in 50 ms (50 expected, +-1%), none "
        "while masked; EOIs to the APIC left its ISR clear",
        "devtest: ioapic ok: ID 1, version 00170011 (24 pins), pin 8 masked at boot; pin 8 to vector 48 (fixed, "
        "edge, APIC 0): 17 RTC periodic interrupts, 16 periods in 15.6 ms (15.6 expected, +-1%), no IRQ 8 from the "
        "8259; masked again, LAPIC ISR clear; the 8259's latched IRQ 8 then came at vector 28",
        "devtest: pci 00:00.0 8086:1237 class 0600",
        "devtest: pci 00:01.0 8086:7000 class 0601",
        "devtest: pci 00:01.1 8086:7010 class 0101",
        'devtest: ata-identify ok: IDENTIFY on IRQ 14: "RING1 HARDDISK", 2048 sectors (1024 KB), integrity word good',
        "devtest: ata sector 0: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 " + '"' + "." * 24 + '"',
        "devtest: ata sectors 1-2: no pattern yet",
        "devtest: serial echo: hello ring1",
        "devtest: serial ok: 12 bytes echoed from the receive interrupt, up to the newline",
    ]:
        assert expected in lines, f"{mode}: missing {expected!r} in:\n{done.stdout}"
    # The RTC starts at ring1 run's fixed date under the guest clock; a few seconds have passed.
    assert any(line.startswith("devtest: rtc ok: 2025-01-01 00:00:0") for line in lines), done.stdout
    # The VGA text screen: devtest's line, then its verdict (the cursor after it, as the CRTC says).
    screen = (Path(done.args[done.args.index("--screenshot") + 1])).read_text().splitlines()
    assert screen[:3] == ["ring1 devtest: hello from the VGA text screen", "ring1 devtest: all checks passed", ""]


@pytest.mark.parametrize("mode", MODES)
def test_devtest_output_is_the_same_in_every_mode(run, mode):
    reference, done = run("interp"), run(mode)
    assert_passed(reference, "interp")
    bugs = known_engine_bugs(done, mode)
    if bugs:
        # Every line but those of the checks a known bug fails, and the verdict, is interp's.
        failed = failed_checks(done.stdout)

        def unaffected(out: str) -> list[str]:
            return [
                line
                for line in out.splitlines()
                if line.split()[1] not in failed and "checks passed" not in line and "checks FAILED" not in line
            ]

        assert unaffected(done.stdout) == unaffected(reference.stdout)
        pytest.xfail(bugs)
    assert done.stdout == reference.stdout


def test_devtest_output_is_the_same_run_after_run(run):
    first, second = run("bt"), run("bt", repeat=1)
    assert first.stdout == second.stdout
    assert first.returncode == second.returncode


def test_devtest_disk_keeps_what_the_guest_wrote(guests, tmp_path):
    """Under bt: a second run reads what the first wrote; a --snapshot run changes nothing."""
    disk = fresh_disk(tmp_path / "disk.img")

    first = ring1_run(guests, "bt", "--disk", str(disk)).stdout
    assert check_lines(first)["ata-pio"] == "ok" and check_lines(first)["ata-run-counter"] == "ok", first
    assert "devtest: ata sectors 1-2: no pattern yet" in first.splitlines()
    image = disk.read_bytes()
    assert image[:512] == (RUN_SIGNATURE + b"1").ljust(512, b"\0")
    assert image[512:1536] == pattern(1) + pattern(2)
    assert image[1536:] == bytes(DISK_SIZE - 1536)

    second = ring1_run(guests, "bt", "--disk", str(disk)).stdout
    lines = second.splitlines()
    assert 'devtest: ata sector 0: 72 69 6e 67 31 20 64 65 76 74 65 73 74 20 72 75 "ring1 devtest run 1....."' in lines
    assert "devtest: ata sectors 1-2: the pattern of an earlier run" in lines
    assert 'devtest: ata-run-counter ok: sector 0 now says "ring1 devtest run 2", flushed' in lines
    image = disk.read_bytes()
    assert image[:512] == (RUN_SIGNATURE + b"2").ljust(512, b"\0")
    assert image[512:1536] == pattern(1) + pattern(2)

    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    snapshot = ring1_run(guests, "bt", "--disk", str(disk), "--snapshot").stdout
    lines = snapshot.splitlines()
    assert 'devtest: ata-run-counter ok: sector 0 now says "ring1 devtest run 3", flushed' in lines, snapshot
    assert check_lines(snapshot)["ata-after-errors"] == "ok"
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_devtest_without_disk_or_serial_input(guests):
    """No --disk: the ATA probe finds nobody; no --serial-input: the echo waits 200 ms and skips."""
    done = ring1_run(guests, "interp")
    lines = done.stdout.splitlines()
    assert "devtest: ata: no master on the primary channel (no --disk), skipped" in lines
    assert "devtest: serial: no input (--serial-input), echo skipped" in lines
    results = check_lines(done.stdout)
    assert not [name for name in results if name.startswith("ata") or name == "serial"]
    assert all(verdict == "ok" for verdict in results.values()), done.stdout
    assert done.stdout.endswith(f"devtest: all {len(results)} checks passed\n") and done.returncode == 0
