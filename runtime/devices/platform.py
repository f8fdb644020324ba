"""The virtual platform `ring1 run` gives a guest, assembled on the device bus
(ring1.runtime.devices.bus):

  0x3F8-0x3FF  COM1, a 16550 UART (devices/serial.py): the console.
  0xF4         the exit port (devices/ports.py): a write ends the run with that exit status.
  0x80         POST codes (devices/ports.py): kept for diagnoses; reads float high. The
               `in`/`out` nanobenchmarks use it.

Every other port floats high on reads and ignores writes, as an empty ISA bus does. Every IN
and OUT is counted per port and direction, for `ring1 run --stats`.

The same platform serves every engine: the interpreter calls io_in/io_out from its IN and
OUT semantics, the VMM from its callouts or unicorn's I/O hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.ports import ExitPort, GuestExit, PostPort
from ring1.runtime.devices.serial import ConsoleSink, Serial16550

COM1 = 0x3F8
EXIT_PORT = 0xF4
POST_PORT = 0x80

__all__ = ["COM1", "EXIT_PORT", "POST_PORT", "ConsoleSink", "GuestExit", "GuestPlatform"]


class GuestPlatform(Bus):
    """COM1, the exit port and the POST port on the bus."""

    def __init__(self, console: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self.console = console if console is not None else ConsoleSink()
        self.com1 = Serial16550(self.console)
        self.post = PostPort()
        self.map_ports("COM1", COM1, 8, self.com1)
        self.map_ports("exit", EXIT_PORT, 1, ExitPort(EXIT_PORT), split=False)
        self.map_ports("POST", POST_PORT, 1, self.post)

    @property
    def post_code(self) -> int | None:
        return self.post.code

    def flush(self) -> None:
        flush = getattr(self.console, "flush", None)
        if flush is not None:
            flush()
