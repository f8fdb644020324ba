"""The two ports a test harness gives a guest: the exit port and POST codes.

  exit port  a write ends the run with the value written (the whole access, 8 to 32 bits) as
             the guest's exit status: GuestExit, a VMStop of kind "exit", a clean stop.
  POST port  POST codes: accepted and kept (the last one, for diagnoses); reads float high.
"""

from __future__ import annotations

from ring1.runtime.cpu.events import VMStop


class GuestExit(VMStop):
    """The guest wrote its exit status to the exit port: the run ends cleanly."""

    def __init__(self, status: int, port: int) -> None:
        super().__init__("exit", f"the guest wrote {status:#x} to the exit port {port:#x}")
        self.status = status


class ExitPort:
    """Ends the run with the value written; takes the access whole (`split=False` on the bus)."""

    def __init__(self, port: int) -> None:
        self.port = port  # for the stop's message only: the bus gives offsets

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        raise GuestExit(value, self.port + offset)


class PostPort:
    """Keeps the POST codes written (the last one, and the first KEEP in order); reads float high."""

    KEEP = 256

    def __init__(self) -> None:
        self.code: int | None = None
        self.codes: list[int] = []
        self.written = 0

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.code = value & 0xFF
        self.written += 1
        if len(self.codes) < self.KEEP:
            self.codes.append(self.code)
