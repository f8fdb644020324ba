"""COM ports: the 16550 UART and the console sink its transmitter writes to.

The UART has nothing attached to its line: what the guest transmits goes to the console sink
(ring1's stdout by default), the transmitter is always empty, nothing is ever received (except
in the UART's own loopback mode), and no interrupt line is wired yet. It sits on the bus as an
8-bit chip: registers at offsets 0-7 of its region, one byte per access.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import BinaryIO

from ring1.runtime.cpu.events import VMStop

# 16550 register offsets and bits.
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 3, 4, 5, 6, 7
FCR = IIR
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
MCR_LOOP = 0x10
IIR_NONE, IIR_THRE, IIR_RDA, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0


class ConsoleSink:
    """Where the serial console's bytes go: a binary stream, flushed at each line end.

    When the reader goes away (`ring1 run demo.elf | head`), the run stops cleanly (a
    VMStop of kind "console-closed") and later output is dropped."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.pending = bytearray()
        self.closed = False

    def __call__(self, data: bytes) -> None:
        if self.closed:
            return
        self.pending += data
        if b"\n" in data or len(self.pending) >= 4096:
            self.flush()
            if self.closed:
                raise VMStop("console-closed", "the console's reader went away (broken pipe)")

    def flush(self) -> None:
        if self.closed:
            return
        try:
            if self.pending:
                self.stream.write(bytes(self.pending))
                self.pending.clear()
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            self.pending.clear()
            if self.stream is getattr(sys.stdout, "buffer", None):
                # Keep Python's own flush at exit from complaining about the closed pipe.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


class Serial16550:
    """One 16550 UART whose transmitter never waits and whose receiver never hears anything."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.divisor = 0x000C  # 9600 baud, the usual power-on setting
        self.ier = 0
        self.lcr = 0x03
        self.mcr = 0
        self.scr = 0
        self.fifo = False
        self.rx = bytearray()  # filled only in loopback mode
        self.thre_pending = False  # the "transmitter empty" interrupt condition (IIR 0x02)
        self.transmitted = 0

    def read(self, offset: int, size: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                return self.divisor & 0xFF
            if self.rx:
                return self.rx.pop(0)
            return 0
        if offset == IER:
            return self.divisor >> 8 if dlab else self.ier
        if offset == IIR:
            fifo = IIR_FIFO if self.fifo else 0
            if self.ier & 0x01 and self.rx:
                return fifo | IIR_RDA
            if self.ier & 0x02 and self.thre_pending:
                self.thre_pending = False  # reading IIR acknowledges the THRE condition
                return fifo | IIR_THRE
            return fifo | IIR_NONE
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        if offset == MSR:
            if self.mcr & MCR_LOOP:
                # Loopback: CTS <- RTS, DSR <- DTR, RI <- OUT1, DCD <- OUT2.
                m = self.mcr
                return (m & 0x2) << 3 | (m & 0x1) << 5 | (m & 0x4) << 4 | (m & 0x8) << 4
            return 0  # nothing attached: no CTS, DSR, RI or DCD
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            elif self.mcr & MCR_LOOP:
                self.rx.append(value)
            else:
                self.transmitted += 1
                self.sink(bytes((value,)))
                self.thre_pending = True
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | value << 8
            else:
                if value & 0x02 and not self.ier & 0x02:
                    self.thre_pending = True  # enabling THRE interrupts with an empty transmitter
                self.ier = value & 0x0F
        elif offset == FCR:
            self.fifo = bool(value & 0x01)
            if value & 0x02:
                self.rx.clear()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value
        # LSR and MSR writes (factory test) are ignored.
