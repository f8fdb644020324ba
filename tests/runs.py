"""Running `ring1` as a user does, from the tests: one place for the command line (the same
interpreter, the CLI module) and its settings (no stdin: a pipe on stdin would be COM1's input)."""

from __future__ import annotations

import subprocess
import sys


def ring1(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ring1 ARGS...`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "ring1.runtime.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
