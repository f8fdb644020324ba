"""Typing into `ring1 run` reaches the guest's COM1: through a pipe (stdin by default) and
through a terminal (`--serial-input -`, raw mode, restored afterwards). The guest is devtest,
whose serial check echoes what its receive interrupt gets, up to a newline."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time

ECHO = "devtest: serial echo: hello ring1"


def _ring1_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "ring1.runtime.cli", "run", *args]


def test_a_pipe_on_stdin_is_the_serial_input(guests) -> None:
    done = subprocess.run(
        _ring1_run(str(guests / "devtest.elf")), input=b"hello ring1\n", capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    assert ECHO in done.stdout.decode().splitlines()


def test_typing_on_a_terminal_reaches_the_guest(guests) -> None:
    # The host's clock (interactive use): the guest waits 200 ms for the first byte, typed
    # once the line before its serial check has appeared.
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        _ring1_run(str(guests / "devtest.elf"), "--serial-input", "-", "--clock", "host"),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kept = os.dup(slave)  # to read the terminal's settings after the run
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 240
    try:
        while b"echo skipped" not in out and ECHO.encode() not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            if b"devtest: ata: no master" in out and b"typed" not in out:
                os.write(master, b"hello ring1\n")
                out += b"(typed)"
        rest, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (out + rest).decode()
    # Under the host's clock the guest's TSC-timed checks depend on the host's load: only the
    # echo is this test's business, and that the run ended through the guest's exit port.
    assert 0 <= proc.returncode < 100, err.decode()
    assert ECHO in text and "devtest: serial ok" in text
    assert termios.tcgetattr(kept) == before  # raw mode undone at the end
    os.close(kept)
    os.close(master)
