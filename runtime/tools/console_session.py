"""A scripted session with a guest on its serial console, as a user at a terminal would have
it: `ring1 run --kernel ... --initrd ...` with COM1's input on a pipe (ring1's default when stdin
is a pipe), its console on stdout. The Linux guest (`make linux-guest`) by default; used by
tests/test_linux_session.py and `ring1 bench boot`.

The shell echoes what is typed (the tty's line discipline), so the end of a command's output is
found by a marker the shell computes and the echo cannot show: `echo @@$((N+1))@@` prints
@@<N+1>@@ only when the shell runs it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

GUEST = Path(__file__).resolve().parents[2] / "build" / "guests" / "linux"
KERNEL, INITRD = GUEST / "vmlinuz", GUEST / "initrd.gz"
APPEND = "console=ttyS0"


class SessionError(AssertionError):
    pass


class Session:
    """One boot of the guest under `mode`, driven through its console."""

    def __init__(
        self, mode: str, *extra: str, kernel: Path = KERNEL, initrd: Path | None = INITRD, append: str = APPEND
    ) -> None:
        self.mode = mode
        command = [sys.executable, "-m", "ring1.runtime.cli", "run", "--kernel", str(kernel)]
        if initrd is not None:
            command += ["--initrd", str(initrd)]
        command += ["--append", append, "--mode", mode, *extra]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._seen = 0  # where the next expect starts looking
        self._markers = 0
        for stream, into in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()

    def _pump(self, stream, into: bytearray) -> None:
        while chunk := stream.read1(4096):
            with self._lock:
                into.extend(chunk)

    @property
    def console(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")

    def _fail(self, what: str) -> SessionError:
        with self._lock:
            out, err = self._out.decode(errors="replace"), self._err.decode(errors="replace")
        return SessionError(f"{self.mode}: {what}\n--- console (last 3000 chars):\n{out[-3000:]}\n--- stderr:\n{err}")

    def expect(self, text: str, timeout: float) -> str:
        """Wait for `text` on the console after what earlier expects consumed; returns the console
        from there up to and including it."""
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                at = self._out.find(needle, self._seen)
                if at >= 0:
                    got = self._out[self._seen : at + len(needle)].decode(errors="replace")
                    self._seen = at + len(needle)
                    return got
            if self.proc.poll() is not None:
                time.sleep(0.2)  # (the pumps' last chunks)
                with self._lock:
                    if self._out.find(needle, self._seen) >= 0:
                        continue
                raise self._fail(f"ring1 exited ({self.proc.returncode}) before {text!r}")
            if time.monotonic() > deadline:
                raise self._fail(f"no {text!r} within {timeout:.0f} s")
            time.sleep(0.05)

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, command: str, timeout: float = 300) -> str:
        """Run one shell command; returns what it printed (the echoed command line removed)."""
        self._markers += 1
        n = self._markers * 7
        self.type(f"{command}; echo @@$(({n}+1))@@")
        got = self.expect(f"@@{n + 1}@@", timeout)
        lines = got.replace("\r", "").split("\n")
        # The echo of the typed line comes first (it holds the unexpanded marker).
        while lines and f"@@$(({n}+1))@@" not in lines[0]:
            lines.pop(0)
        return "\n".join(lines[1:-1]) if lines else ""

    def finish(self, timeout: float = 120) -> int:
        """After `poweroff -f`: ring1's exit status, the console and stderr complete."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"ring1 did not end within {timeout:.0f} s of the power-off") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
