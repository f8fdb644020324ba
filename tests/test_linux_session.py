"""Issue 11's scripted session: Debian's i386 kernel and busybox (`make linux-guest`) boot to a
shell on the serial console, run what a user would, and power off, under `bt` and `bare`.

The guest is built from Debian's packages, not committed: without build/guests/linux the test
is skipped (CI builds it first: .ci/run).
"""

from __future__ import annotations

import re

import pytest

from ring1.runtime.tools.console_session import INITRD, KERNEL, Session
from ring1.runtime.tools.linux_guest import MARKER

BOOT_TIMEOUT = 1800  # seconds of wall time to the shell (bt on a loaded 2-core machine)

pytestmark = pytest.mark.skipif(
    not (KERNEL.exists() and INITRD.exists()), reason="the Linux guest is not built (make linux-guest)"
)


@pytest.mark.parametrize("mode", ["bt", "bare"])
def test_a_session_on_the_serial_console(mode: str) -> None:
    s = Session(mode, "--stats")
    try:
        s.expect(MARKER, BOOT_TIMEOUT)
        # (busybox's line editor asks the terminal where its cursor is, ESC [6n, before its
        # first prompt, and waits for an answer or a key: type at once, as a user would.)
        uname = s.run("uname -a")
        assert "Linux" in uname and "i686" in uname, uname
        cpuinfo = s.run("cat /proc/cpuinfo")
        assert re.search(r"flags\s*:.*\bfpu\b.*\bsse2\b", cpuinfo), cpuinfo
        assert "1" in s.run("ls /proc").split(), "no directory of process 1 in /proc"
        interrupts = s.run("cat /proc/interrupts")
        ticks = [int(n) for n in re.findall(r"^\s*0:\s+(\d+)", interrupts, re.M)]
        assert ticks and ticks[0] > 0, interrupts
        forks = s.run("i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo forked $i", timeout=900)
        assert "forked 200" in forks, forks
        assert s.run("seq 1 10000 | sort -rn | head -3").split() == ["10000", "9999", "9998"]
        assert s.run("dmesg | tail").strip()
        s.type("poweroff -f")
        status = s.finish()
    finally:
        s.kill()
    console = s.console
    assert status == 0, console[-3000:] + s.stderr
    for bad in ("WARNING:", "Oops", "BUG:", "Kernel panic"):
        assert bad not in console, f"{mode}: {bad!r} on the console"
    if mode == "bt":  # --stats: user code ran directly, at CPL 3 on the hardware
        direct = re.search(r"user instructions run directly\s+([\d,]+)", s.stderr)
        assert direct and int(direct.group(1).replace(",", "")) > 1_000_000, s.stderr
