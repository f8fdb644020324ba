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


def check_lines(out: str, guest: str) -> dict[str, str]:
    """{check name: "ok" or "FAILED"} from a self-checking guest's console ("GUEST: NAME ok: ..."
    lines: devtest, procs), in the order printed."""
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == f"{guest}:" and words[2] in ("ok:", "FAILED:"):
            found[words[1]] = words[2].rstrip(":")
    return found


def assert_all_checks_passed(
    done: subprocess.CompletedProcess, mode: str, guest: str, checks: list[str], end: str
) -> None:
    """Every check of `checks` ran, in order, and passed; the console ends with `end`; exit 0."""
    out = done.stdout
    results = check_lines(out, guest)
    failed = [name for name, verdict in results.items() if verdict != "ok"]
    assert not failed, f"{mode}: checks failed: {failed}\n{out}{done.stderr}"
    assert list(results) == checks, f"{mode}: the checks run were {list(results)}\n{out}{done.stderr}"
    assert out.endswith(end), out
    assert done.returncode == 0, f"{mode}: exit {done.returncode}\n{out}{done.stderr}"
