"""COM ports: the 16550A UART and the console sink its transmitter writes to.

Modelled (National PC16550D datasheet; facts cross-checked with how QEMU's and Bochs' 16550
read it):

- The eight registers at offsets 0-7 of the chip's region, one byte per access: RBR/THR and
  IER, or the divisor latch (DLL/DLM) when LCR.DLAB is set; IIR (read) / FCR (write) whatever
  DLAB says; LCR, MCR, LSR, MSR and the scratch register.
- 16-byte receive FIFO (FCR bit 0 enables both FIFOs; switching it on or off empties them;
  FCR bits 1-2 reset them; bits 6-7 set the receive trigger level 1/4/8/14; the other FCR bits
  are only programmed while bit 0 is written as 1). Without FIFOs the receiver is the 16450's
  single holding register, where a new character overwrites an unread one.
- Interrupts, in the IIR's priority order: receiver line status (OE, PE, FE, BI; cleared by
  reading LSR) > received data available (FIFO at its trigger level, or DR without FIFOs) and
  the character timeout indication (FIFO mode: data waiting and no character in or out for four
  character times, timed on the VirtualClock from the divisor and LCR; cleared by reading RBR)
  > transmitter holding register empty (set when the THR empties and when IER.ETBEI goes from 0
  to 1 with the THR empty, as Bochs and QEMU do and Windows relies on; cleared by reading IIR
  while it is the reported source, by writing THR, or by clearing ETBEI) > modem status (any
  MSR delta bit; cleared by reading MSR).
- The interrupt output as a PC wires it: the chip's INTR goes to the IRQ line (COM1 IRQ 4, COM2
  IRQ 3; given by the platform) through a buffer that the ~OUT2 pin enables, so the line is
  driven only while MCR.OUT2 is set, and never in loopback, where the datasheet forces the
  modem output pins (OUT2 with them) inactive. (Bochs gates on the OUT2 bit alone, QEMU not at
  all.) INTR is a level; the line follows it.
- LSR: DR, OE (bytes arriving at a full FIFO are lost, the FIFO kept), BI (a break: a zero
  character flagged in the FIFO, errors shown when their character reaches the top of the
  FIFO), THRE, TEMT, and bit 7 (an erroneous character somewhere in the FIFO). PE and FE never
  occur: the host side delivers whole bytes, and a break is the only line condition it can send.
- MSR: CTS, DSR, RI, DCD with their delta bits (TERI on the trailing edge of RI). The far end is
  a terminal that is ready (CTS, DSR and DCD asserted, as QEMU shows it) unless the host side
  says otherwise with `set_modem_inputs`.
- Loopback (MCR bit 4): the transmitter's output goes to the receiver, the receiver's input pin
  is disconnected (fed bytes are lost), nothing reaches the sink, and the modem inputs follow
  the outputs (CTS <- RTS, DSR <- DTR, RI <- OUT1, DCD <- OUT2), with their delta bits. A break
  set in LCR while looped back is received as one break character.
- Received and transmitted characters carry the LCR's word length (5-8 bits, high bits zero).

Not modelled: transmit timing. The transmitter is instant: a byte written to THR reaches the
sink at once, so THR, the transmit FIFO and the shift register are always empty (LSR.THRE and
TEMT always read 1) and the THRE interrupt condition is set again as soon as THR is written. A
guest that polls THRE between bytes then costs no virtual time per byte. Parity is neither
generated nor checked, the DMA mode bit (FCR bit 3) and the RXRDY/TXRDY pins have no effect,
and the 16750/16650 extensions (64-byte FIFO, EFR) are absent, so drivers identify a 16550A.

Power-on state: the datasheet's reset values, except LCR (8N1) and the divisor (12, 9600
baud), which are as a PC BIOS leaves COM1: ring1 boots Multiboot kernels without a BIOS, and
kernels print before (or without) programming the port.

The receiver is fed by the host side (`feed`, see devices/serial_input.py, which asks `rx_room`
first and so never overruns the FIFO); `receive_break` delivers a break.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine

# Where a PC puts its first two COM ports, and their ISA interrupts.
COM1_BASE, COM1_IRQ = 0x3F8, 4
COM2_BASE, COM2_IRQ = 0x2F8, 3

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7

IER_RDA, IER_THRE, IER_RLS, IER_MSR = 0x01, 0x02, 0x04, 0x08

# IIR: bit 0 clear when an interrupt is pending, bits 1-3 its identification, bits 6-7 set with
# the FIFOs on.
IIR_NONE, IIR_MSR, IIR_THRE, IIR_RDA, IIR_RLS, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO = 0xC0

FCR_ENABLE, FCR_RX_RESET, FCR_TX_RESET, FCR_DMA = 0x01, 0x02, 0x04, 0x08
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # by FCR bits 6-7

LCR_STOP2, LCR_PARITY, LCR_BREAK, LCR_DLAB = 0x04, 0x08, 0x40, 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_THRE, LSR_TEMT, LSR_FIFO_ERROR = 0x20, 0x40, 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

FIFO_SIZE = 16
UART_CLOCK_HZ = 1_843_200  # the PC's UART crystal: divisor 1 is 115200 baud (clock / 16)
RESET_DIVISOR = 0x000C  # 9600 baud
RESET_LCR = 0x03  # 8 data bits, no parity, 1 stop bit
TIMEOUT_CHARACTERS = 4  # the character timeout indication, in character times


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
    """One 16550A UART: what its transmitter sends goes to `sink`, its interrupt output drives
    `irq` (through the PC's OUT2 gate), and its character timeout runs on `clock`.

    Without `irq` the output goes to a line of its own that nothing is connected to; without
    `clock` the UART keeps a private VirtualClock that nobody advances, so the character
    timeout never fires: the platform passes both."""

    def __init__(
        self,
        sink: Callable[[bytes], None],
        irq: IrqLine | None = None,
        clock: VirtualClock | None = None,
        *,
        name: str = "COM1",
    ) -> None:
        self.sink = sink
        self.name = name
        self.irq = irq if irq is not None else IrqLine(f"{name} (not connected)")
        self.clock = clock if clock is not None else VirtualClock()
        self.timeout_timer = self.clock.timer(self._character_timeout, f"{name} character timeout")
        # The far end's modem lines (MSR bits 4-7), what the MSR shows outside loopback.
        self.line_inputs = MSR_CTS | MSR_DSR | MSR_DCD
        self.transmitted = 0
        self.received = 0
        self.overruns = 0
        self.reset()

    def reset(self) -> None:
        """The chip's master reset (and the BIOS's line settings; see the module docstring)."""
        self.divisor = RESET_DIVISOR
        self.ier = 0
        self.lcr = RESET_LCR
        self.mcr = 0
        self.scr = 0
        self.fifo_enabled = False
        self.rx_trigger = RX_TRIGGER_LEVELS[0]
        self.dma_mode = False  # FCR bit 3: only the RXRDY/TXRDY pins, which nothing reads here
        self.rx: deque[tuple[int, int]] = deque()  # (character, its LSR error bits)
        self.rbr = 0  # the last character read: what RBR shows when nothing is waiting
        self.lsr_errors = 0  # OE/PE/FE/BI as the LSR shows them (until the LSR is read)
        self.fifo_error = False  # LSR bit 7
        self.thre_pending = False
        self.timeout_pending = False
        self.modem_inputs = self.line_inputs  # MSR bits 4-7
        self.modem_deltas = 0  # MSR bits 0-3
        self.timeout_timer.cancel()
        self._update_irq()

    # ------------------------------------------------------------------ the line

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    @property
    def word_mask(self) -> int:
        return (1 << (5 + (self.lcr & 0x03))) - 1

    @property
    def baud(self) -> float:
        return UART_CLOCK_HZ / 16 / self._effective_divisor()

    def _effective_divisor(self) -> int:
        # The datasheet leaves divisor 0 undefined; a 16-bit down-counter loaded with 0 counts
        # 65536, which is what the baud generator is.
        return self.divisor or 0x10000

    def char_time_ns(self) -> int:
        """One character on the line at the current divisor and LCR (start bit, 5-8 data bits,
        parity, 1, 1.5 or 2 stop bits), in nanoseconds, rounded up."""
        data_bits = 5 + (self.lcr & 0x03)
        half_bits = 2 * (1 + data_bits + (1 if self.lcr & LCR_PARITY else 0))
        if self.lcr & LCR_STOP2:
            half_bits += 3 if data_bits == 5 else 4
        else:
            half_bits += 2
        numerator = half_bits * self._effective_divisor() * 16 * 1_000_000_000
        return -(-numerator // (2 * UART_CLOCK_HZ))

    # ------------------------------------------------------------------ the host side

    def rx_room(self) -> int:
        """How many characters the receiver takes now without an overrun (none in loopback,
        where its input pin is disconnected)."""
        if self.loopback:
            return 0
        return (FIFO_SIZE if self.fifo_enabled else 1) - len(self.rx)

    def feed(self, data: bytes) -> int:
        """Characters arrive on the receiver's input pin, in order; returns how many were
        stored. The rest were lost: overruns (LSR.OE), or in loopback never heard at all."""
        if self.loopback:
            return 0
        stored = sum(self._receive(byte & self.word_mask, 0) for byte in data)
        self._update_irq()
        return stored

    def receive_break(self) -> None:
        """The far end holds the line in the spacing state for a character time or more."""
        if not self.loopback:
            self._receive(0, LSR_BI)
            self._update_irq()

    def set_modem_inputs(self, *, cts: bool, dsr: bool, ri: bool, dcd: bool) -> None:
        """The far end's modem lines change (shown in MSR with their deltas outside loopback)."""
        self.line_inputs = (
            (MSR_CTS if cts else 0) | (MSR_DSR if dsr else 0) | (MSR_RI if ri else 0) | (MSR_DCD if dcd else 0)
        )
        self._update_modem_inputs()
        self._update_irq()

    # ------------------------------------------------------------------ registers

    def read(self, offset: int, size: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if offset == IER:
            return self.divisor >> 8 if dlab else self.ier
        if offset == IIR:
            return self._read_iir()
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return self._read_lsr()
        if offset == MSR:
            value = self.modem_inputs | self.modem_deltas
            self.modem_deltas = 0
            self._update_irq()
            return value
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
                return  # _write_thr updates the line itself, also when the sink stops the VM
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | value << 8
            else:
                self._write_ier(value)
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            if value & LCR_BREAK and not self.lcr & LCR_BREAK and self.loopback:
                self._receive(0, LSR_BI)  # the break goes round the loop like a character
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F  # bits 5-7 are always 0 on a 16550A
            self._update_modem_inputs()
        elif offset == SCR:
            self.scr = value
        # LSR and MSR writes are for the factory test: ignored.
        self._update_irq()

    def _read_rbr(self) -> int:
        if self.rx:
            self.rbr, _ = self.rx.popleft()
            if self.fifo_enabled and self.rx:
                self.lsr_errors |= self.rx[0][1]  # the next character's errors reach the top
            self.timeout_pending = False
            self._restart_timeout()
            self._update_irq()
        return self.rbr

    def _read_iir(self) -> int:
        ident = self._interrupt_ident()
        if ident == IIR_THRE:
            self.thre_pending = False  # reading IIR acknowledges THRE when it is the source
            self._update_irq()
        return ident | (IIR_FIFO if self.fifo_enabled else 0)

    def _read_lsr(self) -> int:
        value = self.lsr_errors | LSR_THRE | LSR_TEMT
        if self.rx:
            value |= LSR_DR
        if self.fifo_error:
            value |= LSR_FIFO_ERROR
        self.lsr_errors = 0
        if self.fifo_error:
            # Bit 7 stays only for errors still to come: the top character's was just reported.
            self.fifo_error = any(errors for _, errors in itertools.islice(self.rx, 1, None))
        self._update_irq()
        return value

    def _write_thr(self, value: int) -> None:
        # The transmitter is instant: THR empties as it is written, so the THRE condition that
        # writing THR clears is set again at once.
        self.thre_pending = True
        try:
            if self.loopback:
                self._receive(value & self.word_mask, 0)
            else:
                self.transmitted += 1
                self.sink(bytes((value & self.word_mask,)))
        finally:
            self._update_irq()

    def _write_ier(self, value: int) -> None:
        value &= 0x0F  # bits 4-7 are always 0 on a 16550A
        if (value ^ self.ier) & IER_THRE:
            # Enabling ETBEI with the THR empty (it always is) raises THRE; disabling drops it.
            self.thre_pending = bool(value & IER_THRE)
        self.ier = value

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self.fifo_enabled:
            self.fifo_enabled = enable
            self._clear_rx()  # switching between 16450 and FIFO mode empties the FIFOs
        if not enable:
            return  # the other FCR bits are programmed only while bit 0 is written as 1
        if value & FCR_RX_RESET:
            self._clear_rx()
        # FCR_TX_RESET: the transmit FIFO is always empty here.
        self.dma_mode = bool(value & FCR_DMA)
        self.rx_trigger = RX_TRIGGER_LEVELS[value >> 6]

    # ------------------------------------------------------------------ internals

    def _receive(self, byte: int, errors: int) -> bool:
        """One character completes in the receiver's shift register."""
        self.received += 1
        if self.fifo_enabled:
            if len(self.rx) >= FIFO_SIZE:
                # The character in the shift register is overwritten; the FIFO is kept.
                self.lsr_errors |= LSR_OE
                self.overruns += 1
                return False
            self.rx.append((byte, errors))
            if errors:
                self.fifo_error = True
            if len(self.rx) == 1:
                self.lsr_errors |= errors  # it is at the top of the FIFO at once
            self._restart_timeout()
            return True
        if self.rx:
            # 16450 mode: the unread character in RBR is destroyed by the new one.
            self.lsr_errors |= LSR_OE
            self.overruns += 1
            self.rx.clear()
        self.rx.append((byte, errors))
        self.lsr_errors |= errors
        return True

    def _clear_rx(self) -> None:
        self.rx.clear()
        self.fifo_error = False
        self.timeout_pending = False
        self.timeout_timer.cancel()

    def _restart_timeout(self) -> None:
        """A character went into or out of the receive FIFO: the timeout counts afresh."""
        if self.fifo_enabled and self.rx:
            self.timeout_timer.arm(self.clock.now() + TIMEOUT_CHARACTERS * self.char_time_ns())
        else:
            self.timeout_timer.cancel()

    def _character_timeout(self, deadline: int) -> None:
        if self.fifo_enabled and self.rx:
            self.timeout_pending = True
            self._update_irq()

    def _update_modem_inputs(self) -> None:
        if self.loopback:
            m = self.mcr
            inputs = (
                (MSR_CTS if m & MCR_RTS else 0)
                | (MSR_DSR if m & MCR_DTR else 0)
                | (MSR_RI if m & MCR_OUT1 else 0)
                | (MSR_DCD if m & MCR_OUT2 else 0)
            )
        else:
            inputs = self.line_inputs
        changed = inputs ^ self.modem_inputs
        self.modem_deltas |= (changed & (MSR_CTS | MSR_DSR | MSR_DCD)) >> 4
        if self.modem_inputs & MSR_RI and not inputs & MSR_RI:
            self.modem_deltas |= MSR_TERI  # the trailing edge of a ring
        self.modem_inputs = inputs

    def _interrupt_ident(self) -> int:
        """The highest-priority pending interrupt that IER enables, as IIR bits 0-3."""
        ier = self.ier
        if ier & IER_RLS and self.lsr_errors:
            return IIR_RLS
        if ier & IER_RDA and self.rx:
            if self.timeout_pending:
                return IIR_TIMEOUT
            if not self.fifo_enabled or len(self.rx) >= self.rx_trigger:
                return IIR_RDA
        if ier & IER_THRE and self.thre_pending:
            return IIR_THRE
        if ier & IER_MSR and self.modem_deltas:
            return IIR_MSR
        return IIR_NONE

    @property
    def interrupt_output(self) -> bool:
        """The chip's INTR pin."""
        return self._interrupt_ident() != IIR_NONE

    def _update_irq(self) -> None:
        # On a PC the INTR pin reaches the ISA IRQ through a buffer enabled by the ~OUT2 pin,
        # which loopback forces inactive.
        gate = self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        self.irq.set(gate and self.interrupt_output)
