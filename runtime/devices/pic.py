"""The PC's two 8259A programmable interrupt controllers and the ELCR beside them.

Wiring, as on a PC/AT board:
  master  ports 0x20-0x21, IR0-7 = IRQ 0-7, its INT output to the CPU's INTR (or to the local
          APIC's LINT0, which asks it for an ExtINT vector with `acknowledge`);
  slave   ports 0xA0-0xA1, IR0-7 = IRQ 8-15, its INT output to the master's IR2 (the cascade);
  ELCR    ports 0x4D0-0x4D1, one bit per IRQ: 1 = level-sensitive input (PCI-era chipsets).
          IRQ 0, 1, 2, 8 and 13 are wired edge-only: their bits read 0 and ignore writes.
The ISA bus's IRQ2 pin is routed to the slave's IR1 (IRQ 9), as the AT board does, since the
master's IR2 is taken by the cascade.

What is modelled, from the 8259A datasheet:
- the initialization sequence: ICW1 (on the even port with bit 4 set) resets the chip (edge
  sense, IMR, ISR, priority, special mask, read select, and ICW4's functions when ICW4 is not
  announced), then ICW2 (vector base, bits 7-3), ICW3 (only in cascade mode: the master's
  slave mask, the slave's ID) and ICW4 (only when ICW1 bit 0 asked for it: auto-EOI, special
  fully nested mode) on the odd port;
- OCW1 (the IMR, read back at the odd port), OCW2 (non-specific and specific EOI, the rotate
  variants, set priority), OCW3 (IRR/ISR read select for the even port, the poll command,
  special mask mode);
- inputs: an edge-sensitive input latches a rising edge into the IRR, which stays set until
  the request is acknowledged, however long the line stays high or how soon it falls (a
  device's `IrqLine.pulse()` is a full request); it needs a new rising edge to request again.
  A level-sensitive input (its ELCR bit, or ICW1's LTIM for the whole chip) is its IRR bit:
  the request lasts while the line is high and is asserted again after the EOI if it still is;
- priority resolution, fixed or rotated (a lowest-priority IR; IR7 after ICW1): a request is
  served when it outranks everything in service; in special mask mode masked in-service
  levels no longer hold others back; in special fully nested mode the master takes a new
  request from a slave whose IR is already in service;
- the interrupt acknowledge cycle: the winner moves from IRR to ISR (auto-EOI clears it again
  at the end of the cycle, rotating if asked); a master IR with a slave asks the slave whose
  ID matches for the vector; a request that went away before the acknowledge gets the
  default IR7 vector without setting an ISR bit (on the slave: its base + 7, with the
  master's IR2 in service all the same, so the handler must EOI the master only);
- the poll command: the next read of either port is an acknowledge that returns 0x80 | IR
  (0 with no request) instead of a vector.

Not modelled: MCS-80/85 mode (vectors are always 8086-style: PC chipsets require ICW4 bit 0),
the call address interval, buffered mode (which chip is the master is fixed by the wiring).
The datasheet leaves the power-on state undefined: here every input is masked until the
chip is programmed (ICW1 clears the IMR), so an unprogrammed pair never delivers vectors 0-7.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ring1.runtime.devices.irq import IrqLine

MASTER_PORT = 0x20
SLAVE_PORT = 0xA0
ELCR_PORT = 0x4D0
CASCADE_IR = 2  # the master input the slave's INT output drives
ISA_IRQ2_REDIRECT = 9  # where the bus's IRQ2 pin really lands on an AT

# Inputs an ELCR can never make level-sensitive: the timer, the keyboard, the cascade, the RTC
# and the FPU error line are edge-triggered on every PC.
ELCR_MASTER_WRITABLE = 0xF8  # IRQ 0, 1, 2 forced edge
ELCR_SLAVE_WRITABLE = 0xDE  # IRQ 8, 13 forced edge

# Command words, on the even port.
ICW1_SELECT = 0x10
ICW1_IC4 = 0x01  # ICW4 will follow
ICW1_SNGL = 0x02  # single chip: no ICW3
ICW1_LTIM = 0x08  # every input level-sensitive
OCW3_SELECT = 0x08
OCW3_READ_ISR = 0x01
OCW3_READ_REGISTER = 0x02
OCW3_POLL = 0x04
OCW3_SET_SPECIAL_MASK = 0x20
OCW3_ENABLE_SPECIAL_MASK = 0x40
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

# OCW2 commands (bits 7-5: R, SL, EOI).
OCW2_ROTATE_IN_AEOI_CLEAR = 0
OCW2_NONSPECIFIC_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_IN_AEOI_SET = 4
OCW2_ROTATE_NONSPECIFIC_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

POLL_INTERRUPT = 0x80
SPURIOUS_IR = 7
NO_VECTOR = 0xFF  # an acknowledge no chip answers: the data bus floats high

# Where the ICW sequence stands: waiting for which word on the odd port.
READY, AWAIT_ICW2, AWAIT_ICW3, AWAIT_ICW4 = 0, 2, 3, 4


class Pic8259:
    """One 8259A: a bus device at offsets 0 (A0 = 0) and 1 (A0 = 1), eight inputs, an INT output.

    `output` is called with the new level each time INT changes."""

    def __init__(self, name: str, output: Callable[[bool], None], *, is_master: bool) -> None:
        self.name = name
        self.is_master = is_master
        self._output = output
        self.lines = 0  # the wires' levels, bit n = IRn
        self.elcr = 0  # level-sensitive inputs, written through the ELCR device
        self.int_output = False
        self.reset()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        """The state before any programming (see the module docstring); the wires keep their levels."""
        self.irr = 0
        self.isr = 0
        self.imr = 0xFF
        self.vector_base = 0
        self.single = True
        self.icw3 = 0
        self.level_triggered_all = False  # ICW1 LTIM
        self.auto_eoi = False
        self.special_fully_nested = False
        self.rotate_on_auto_eoi = False
        self.lowest_priority = 7
        self.special_mask = False
        self.read_isr = False
        self.poll_pending = False
        self.init_step = READY
        self._icw4_expected = False
        self._update_output()

    @property
    def level_sensitive(self) -> int:
        """The inputs whose IRR bit follows the line."""
        return 0xFF if self.level_triggered_all else self.elcr

    def set_elcr(self, bits: int) -> None:
        """New edge/level choices: a level-sensitive input's request is its line from now on."""
        self.elcr = bits & 0xFF
        level = self.level_sensitive
        self.irr = (self.irr & ~level) | (self.lines & level)
        self._update_output()

    def set_input(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        was_high = self.lines & bit
        if level:
            self.lines |= bit
        else:
            self.lines &= ~bit
        if bit & self.level_sensitive:
            self.irr = self.irr | bit if level else self.irr & ~bit
        elif level and not was_high:
            self.irr |= bit  # the rising edge is latched; a falling one changes nothing
        self._update_output()

    # ------------------------------------------------------------ priority

    def _by_priority(self, bits: int) -> int | None:
        """The IR of the highest-priority bit set in `bits` (the one after the lowest-priority IR)."""
        if not bits:
            return None
        for step in range(1, 9):
            ir = (self.lowest_priority + step) & 7
            if bits >> ir & 1:
                return ir
        return None

    def _rank(self, ir: int) -> int:
        """0 for the highest priority, 7 for the lowest."""
        return (ir - self.lowest_priority - 1) & 7

    def has_slave(self, ir: int) -> bool:
        """ICW3 says a slave sits on `ir` (master in cascade mode): its acknowledge asks the slave."""
        return self.is_master and not self.single and bool(self.icw3 >> ir & 1)

    def _in_service_for_priority(self) -> int:
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr  # masked levels in service no longer block the others
        return in_service

    def resolve(self) -> int | None:
        """The IR an acknowledge would serve now, or None."""
        request = self._by_priority(self.irr & ~self.imr)
        if request is None:
            return None
        current = self._by_priority(self._in_service_for_priority())
        if current is None or self._rank(request) < self._rank(current):
            return request
        if request == current and self.special_fully_nested and self.has_slave(request):
            return request  # a slave's higher-priority request while the slave is in service
        return None

    def _update_output(self) -> None:
        level = self.resolve() is not None
        if level != self.int_output:
            self.int_output = level
            self._output(level)

    # ------------------------------------------------------------ acknowledge

    def begin_acknowledge(self, ir: int) -> None:
        """First INTA: the request moves into service (an edge request is consumed)."""
        bit = 1 << ir
        self.isr |= bit
        self.irr &= ~bit | self.level_sensitive
        self._update_output()

    def end_acknowledge(self, ir: int) -> None:
        """End of the last INTA: auto-EOI takes the level out of service again."""
        if self.auto_eoi:
            self.isr &= ~(1 << ir)
            if self.rotate_on_auto_eoi:
                self.lowest_priority = ir
            self._update_output()

    def _poll(self) -> int:
        """A read after the poll command: an acknowledge that answers with the IR instead of a vector."""
        self.poll_pending = False
        ir = self.resolve()
        if ir is None:
            return 0
        self.begin_acknowledge(ir)
        return POLL_INTERRUPT | ir

    # ------------------------------------------------------------ bus device

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(offset + i, value >> (8 * i) & 0xFF)

    def _read_byte(self, offset: int) -> int:
        if offset > 1:
            return 0xFF
        if self.poll_pending:  # the poll command takes the next read of either port
            return self._poll()
        if offset == 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            if value & ICW1_SELECT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif offset == 1:
            if self.init_step == AWAIT_ICW2:
                self.vector_base = value & 0xF8
                self.init_step = AWAIT_ICW3 if not self.single else self._after_icw3()
            elif self.init_step == AWAIT_ICW3:
                self.icw3 = value
                self.init_step = self._after_icw3()
            elif self.init_step == AWAIT_ICW4:
                self.auto_eoi = bool(value & ICW4_AEOI)
                self.special_fully_nested = bool(value & ICW4_SFNM)
                self.init_step = READY
            else:
                self.imr = value
            self._update_output()

    def _after_icw3(self) -> int:
        return AWAIT_ICW4 if self._icw4_expected else READY

    def _icw1(self, value: int) -> None:
        self._icw4_expected = bool(value & ICW1_IC4)
        self.single = bool(value & ICW1_SNGL)
        self.level_triggered_all = bool(value & ICW1_LTIM)
        # The edge sense circuit is reset: an edge input needs a new rising edge to request.
        level = self.level_sensitive
        self.irr = self.lines & level
        self.isr = 0
        self.imr = 0
        self.lowest_priority = 7
        self.special_mask = False
        self.read_isr = False
        self.poll_pending = False
        self.rotate_on_auto_eoi = False
        self.icw3 = 7 if not self.is_master else 0  # the slave address resets to 7
        if not self._icw4_expected:
            self.auto_eoi = False
            self.special_fully_nested = False
        self.init_step = AWAIT_ICW2
        self._update_output()

    def _ocw2(self, value: int) -> None:
        command, ir = value >> 5, value & 7
        if command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            # The highest level in service; in special mask mode a masked one is left alone.
            done = self._by_priority(self._in_service_for_priority())
            if done is not None:
                self.isr &= ~(1 << done)
                if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.lowest_priority = done
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << ir)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.lowest_priority = ir
        elif command == OCW2_SET_PRIORITY:
            self.lowest_priority = ir
        elif command in (OCW2_ROTATE_IN_AEOI_SET, OCW2_ROTATE_IN_AEOI_CLEAR):
            self.rotate_on_auto_eoi = command == OCW2_ROTATE_IN_AEOI_SET
        self._update_output()

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll_pending = True  # overrides a read-register command given with it
        if value & OCW3_READ_REGISTER:
            self.read_isr = bool(value & OCW3_READ_ISR)
        if value & OCW3_ENABLE_SPECIAL_MASK:
            self.special_mask = bool(value & OCW3_SET_SPECIAL_MASK)
        self._update_output()


class PicPair:
    """The cascaded pair: the platform's IrqSink for ISA IRQs 0-15 and the CPU's
    InterruptController (its INTR pin and the acknowledge cycle).

    Map `master` at 0x20 (2 ports), `slave` at 0xA0 (2 ports) and `elcr` at 0x4D0 (2 ports).
    `intr` is the master's INT output as a line: a local APIC connects its LINT0 to it and,
    for an ExtINT, calls `acknowledge()`."""

    def __init__(self) -> None:
        self.intr = IrqLine("8259 INT")
        self.master = Pic8259("master 8259", self.intr.set, is_master=True)
        self.slave = Pic8259("slave 8259", self._cascade, is_master=False)
        self.elcr = Elcr(self)
        self.pin_levels = [False] * 16
        self.acknowledged: Counter[int] = Counter()  # IRQ -> vectors delivered, for --stats
        self.spurious: Counter[int] = Counter()  # 7 or 15 -> default vectors delivered

    def _cascade(self, level: bool) -> None:
        self.master.set_input(CASCADE_IR, level)

    def reset(self) -> None:
        """A system reset: both chips unprogrammed, the ELCR cleared."""
        self.master.reset()
        self.slave.reset()
        self.elcr.write(0, 2, 0)

    # ------------------------------------------------------------ IrqSink

    def set_irq(self, pin: int, level: bool) -> None:
        self.pin_levels[pin] = bool(level)
        if pin in (CASCADE_IR, ISA_IRQ2_REDIRECT):
            # Two bus pins on one input: the wire is high while either is.
            self.slave.set_input(1, self.pin_levels[CASCADE_IR] or self.pin_levels[ISA_IRQ2_REDIRECT])
        elif pin < 8:
            self.master.set_input(pin, level)
        else:
            self.slave.set_input(pin - 8, level)

    # ------------------------------------------------------------ InterruptController

    def interrupt_pending(self) -> bool:
        return self.master.int_output

    def acknowledge(self) -> int:
        master = self.master
        ir = master.resolve()
        if ir is None:
            self.spurious[SPURIOUS_IR] += 1
            return master.vector_base | SPURIOUS_IR
        master.begin_acknowledge(ir)
        if master.has_slave(ir):
            vector = self._acknowledge_slave(ir)
        else:
            vector = master.vector_base | ir
            self.acknowledged[ir] += 1
        master.end_acknowledge(ir)
        return vector

    def _acknowledge_slave(self, cascade_address: int) -> int:
        """The master put `cascade_address` on CAS0-2: the slave with that ID gives the vector."""
        slave = self.slave
        if not slave.single and slave.icw3 & 7 != cascade_address:
            return NO_VECTOR
        ir = slave.resolve()
        if ir is None:
            self.spurious[8 + SPURIOUS_IR] += 1
            return slave.vector_base | SPURIOUS_IR
        slave.begin_acknowledge(ir)
        slave.end_acknowledge(ir)
        self.acknowledged[8 + ir] += 1
        return slave.vector_base | ir

    # ------------------------------------------------------------ firmware and statistics

    def program_as_bios(self, master_base: int = 0x08, slave_base: int = 0x70) -> None:
        """Leave the pair as a PC BIOS does before it boots an OS (vectors 0x08 and 0x70, every
        IRQ masked but the cascade), through the chips' own ports: for a kernel booted without
        a BIOS that expects one to have run."""
        for chip, base, icw3 in ((self.master, master_base, 1 << CASCADE_IR), (self.slave, slave_base, CASCADE_IR)):
            chip.write(0, 1, ICW1_SELECT | ICW1_IC4)
            chip.write(1, 1, base)
            chip.write(1, 1, icw3)
            chip.write(1, 1, 0x01)  # 8086 mode, normal EOI
        self.master.write(1, 1, 0xFF & ~(1 << CASCADE_IR))
        self.slave.write(1, 1, 0xFF)

    def stats(self) -> dict[str, int]:
        """{"irq0": 1000, ..., "spurious7": 1}: acknowledges per IRQ, for `--json-stats`."""
        out = {f"irq{irq}": n for irq, n in sorted(self.acknowledged.items())}
        out.update({f"spurious{irq}": n for irq, n in sorted(self.spurious.items())})
        return out

    @property
    def acknowledged_total(self) -> int:
        return sum(self.acknowledged.values()) + sum(self.spurious.values())


class Elcr:
    """The edge/level control registers: offset 0 for IRQ 0-7, offset 1 for IRQ 8-15."""

    def __init__(self, pair: PicPair) -> None:
        self._chips = ((pair.master, ELCR_MASTER_WRITABLE), (pair.slave, ELCR_SLAVE_WRITABLE))

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            at = offset + i
            byte = self._chips[at][0].elcr if at < 2 else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            at = offset + i
            if at < 2:
                chip, writable = self._chips[at]
                chip.set_elcr(value >> (8 * i) & writable)
