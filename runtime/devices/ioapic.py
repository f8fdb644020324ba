"""The I/O APIC: an 82093AA-style interrupt router with 24 inputs, as on a PC's chipset.

What is modelled
- Its MMIO window (normally at 0xFEC00000, IOAPIC_MMIO_LENGTH bytes mapped by the platform):
  IOREGSEL at offset 0x00 selects a register (bits 7:0; byte writes work, since only the low
  byte is defined), IOWIN at 0x10 reads and writes it (32-bit accesses only: other widths at
  IOWIN read 0 and are dropped, as QEMU does). Everything else in the window reads 0.
- Registers: 0x00 ID (bits 27:24), 0x01 version (0x00170011: version 11h, 24 entries), 0x02
  arbitration ID (read-only, loaded from the ID when the ID is written), 0x10-0x3F the 24
  redirection entries (two 32-bit halves each): vector, delivery mode (fixed, lowest priority,
  SMI, NMI, INIT, ExtINT), destination mode, delivery status (always idle: a message is
  delivered at once), polarity, remote IRR (read-only), trigger mode, mask, destination
  (bits 63:56). Reset: every entry masked, the rest zero. Unimplemented registers read 0.
- Inputs (IrqSink.set_irq(pin, level)): `level` True means the device asserts its line. The
  board wires each pin active-high (ISA) unless the platform names it in `active_low_pins`;
  the entry's polarity bit says which electrical level the chip takes as asserted, so a
  polarity that disagrees with the board inverts the input, as it would on hardware.
- Edge-triggered entries send one message per rising edge of the (polarity-adjusted) input;
  an edge while masked is lost. Level-triggered fixed and lowest-priority entries send while
  the input is asserted and the entry is unmasked, then wait with remote IRR set until the
  local APIC's EOI for that vector; if the input is still asserted then, they send again.
  Unmasking an asserted level input sends. Writing an entry as edge-triggered clears its
  remote IRR (Linux relies on that to clear a stuck remote IRR on an I/O APIC without an EOI
  register). NMI, SMI, INIT and ExtINT entries are edge-triggered whatever their trigger bit.
- Messages go to one local APIC (`ApicMessageTarget`): it says whether the destination
  (physical ID or logical set) includes it and whether it accepted the interrupt; a level
  interrupt's remote IRR is set only when it was accepted.

Not modelled: several local APICs (lowest-priority arbitration is trivially the one CPU), the
APIC bus timing (delivery status is never "send pending"), the EOI register of version 20h
I/O APICs, and what the local APIC does with SMI and INIT (nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

IOAPIC_DEFAULT_BASE = 0xFEC00000
IOAPIC_MMIO_LENGTH = 0x1000
IOREGSEL = 0x00
IOWIN = 0x10

PINS = 24
IOAPIC_VERSION = (PINS - 1) << 16 | 0x11  # 0x00170011

REG_ID, REG_VERSION, REG_ARBITRATION = 0x00, 0x01, 0x02
REG_REDIRECTION = 0x10  # entry n: low half at 0x10 + 2n, high half at 0x11 + 2n

RTE_VECTOR = 0xFF
RTE_LOGICAL = 1 << 11
RTE_DELIVERY_STATUS = 1 << 12
RTE_ACTIVE_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_LOW_WRITABLE = 0x0001AFFF  # vector, delivery mode, destination mode, polarity, trigger, mask
RTE_HIGH_WRITABLE = 0xFF000000  # destination
RTE_RESET = RTE_MASKED

DM_FIXED, DM_LOWEST = 0, 1
ID_MASK = 0x0F000000
M32 = 0xFFFFFFFF


class ApicMessageTarget(Protocol):
    """The local APIC as the I/O APIC sees it (ring1.runtime.devices.lapic.LocalApic)."""

    def matches_destination(self, destination: int, logical: bool) -> bool: ...

    def receive_message(self, vector: int, delivery_mode: int, level_triggered: bool = False) -> bool: ...

    def add_eoi_listener(self, listener: Callable[[int], None]) -> None: ...


class IoApic:
    """The I/O APIC: an MMIO bus device and an IrqSink of 24 pins, sending to `lapic` (whose
    level-triggered EOIs it listens to)."""

    def __init__(self, lapic: ApicMessageTarget, *, ioapic_id: int = 1, active_low_pins: Iterable[int] = ()) -> None:
        self.lapic = lapic
        self.ioapic_id = ioapic_id & 0xF  # what the firmware programmed (the chip resets to 0)
        self.arbitration_id = self.ioapic_id
        self.board_active_low = [False] * PINS
        for pin in active_low_pins:
            self.board_active_low[pin] = True
        self.regsel = 0
        self.entries = [RTE_RESET] * PINS  # 64-bit redirection entries
        self._line = [False] * PINS  # what each device drives: True = asserting
        self.messages = [0] * PINS  # messages sent per pin, for statistics
        lapic.add_eoi_listener(self.end_of_interrupt)

    # ------------------------------------------------------------------ MMIO

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return (self.regsel >> (8 * offset)) & ((1 << (8 * size)) - 1)
        if offset == IOWIN and size >= 4:
            return self._read_register(self.regsel)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.regsel = value & 0xFF
        elif offset == IOWIN and size >= 4:
            self._write_register(self.regsel, value & M32)

    def _read_register(self, reg: int) -> int:
        if reg == REG_ID:
            return self.ioapic_id << 24
        if reg == REG_VERSION:
            return IOAPIC_VERSION
        if reg == REG_ARBITRATION:
            return self.arbitration_id << 24
        if REG_REDIRECTION <= reg < REG_REDIRECTION + 2 * PINS:
            entry = self.entries[(reg - REG_REDIRECTION) >> 1]
            return entry >> 32 if reg & 1 else entry & M32
        return 0

    def _write_register(self, reg: int, value: int) -> None:
        if reg == REG_ID:
            self.ioapic_id = (value & ID_MASK) >> 24
            self.arbitration_id = self.ioapic_id
        elif REG_REDIRECTION <= reg < REG_REDIRECTION + 2 * PINS:
            pin = (reg - REG_REDIRECTION) >> 1
            entry = self.entries[pin]
            if reg & 1:
                entry = (entry & M32) | (value & RTE_HIGH_WRITABLE) << 32
            else:
                entry = (entry & ~RTE_LOW_WRITABLE) | (value & RTE_LOW_WRITABLE)
                if not entry & RTE_LEVEL:
                    entry &= ~RTE_REMOTE_IRR
            self.entries[pin] = entry
            self._service_level(pin)  # an unmasked level input that is asserted sends now
        # The version and arbitration registers are read-only; the rest is not implemented.

    # ------------------------------------------------------------------ inputs

    def asserted(self, pin: int) -> bool:
        """The pin's input as the redirection entry's polarity reads it."""
        electrically_high = self._line[pin] != self.board_active_low[pin]
        return electrically_high != bool(self.entries[pin] & RTE_ACTIVE_LOW)

    def set_irq(self, pin: int, level: bool) -> None:
        """IrqSink: the device on `pin` asserts (True) or releases its line."""
        if not 0 <= pin < PINS:
            return
        was = self.asserted(pin)
        self._line[pin] = bool(level)
        if self._is_level(pin):
            self._service_level(pin)
        elif self.asserted(pin) and not was and not self.entries[pin] & RTE_MASKED:
            self._send(pin)

    def _is_level(self, pin: int) -> bool:
        entry = self.entries[pin]
        return bool(entry & RTE_LEVEL) and (entry >> 8) & 7 in (DM_FIXED, DM_LOWEST)

    def _service_level(self, pin: int) -> None:
        entry = self.entries[pin]
        if self._is_level(pin) and not entry & (RTE_MASKED | RTE_REMOTE_IRR) and self.asserted(pin) and self._send(pin):
            self.entries[pin] |= RTE_REMOTE_IRR

    def _send(self, pin: int) -> bool:
        """Send the pin's interrupt message; True if the local APIC accepted it."""
        entry = self.entries[pin]
        if not self.lapic.matches_destination(entry >> 56, bool(entry & RTE_LOGICAL)):
            return False
        self.messages[pin] += 1
        return self.lapic.receive_message(entry & RTE_VECTOR, (entry >> 8) & 7, self._is_level(pin))

    def end_of_interrupt(self, vector: int) -> None:
        """The local APIC's EOI message for a level-triggered vector: clear the remote IRR of
        the entries with that vector, and send again for those still asserted."""
        for pin, entry in enumerate(self.entries):
            if entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                self.entries[pin] = entry & ~RTE_REMOTE_IRR
                self._service_level(pin)
