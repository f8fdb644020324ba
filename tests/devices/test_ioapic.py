"""The I/O APIC on its own (against a recording local APIC): the register window, redirection
entries, edge and level inputs, masks, remote IRR and EOI, polarity; then wired to the real
local APIC."""

from __future__ import annotations

from collections.abc import Callable

from ring1.runtime.devices import ioapic as IO
from ring1.runtime.devices import lapic as L
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.ioapic import IoApic
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.lapic import LocalApic


class RecordingApic:
    """A local APIC that records the messages it gets; destination 0 (physical) is its own."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, bool]] = []
        self.accepting = True
        self.eoi_listeners: list[Callable[[int], None]] = []

    def matches_destination(self, destination: int, logical: bool) -> bool:
        return destination in (0, 0xFF) if not logical else bool(destination & 0x01)

    def receive_message(self, vector: int, delivery_mode: int, level_triggered: bool = False) -> bool:
        self.messages.append((vector, delivery_mode, level_triggered))
        return self.accepting

    def add_eoi_listener(self, listener: Callable[[int], None]) -> None:
        self.eoi_listeners.append(listener)

    def eoi(self, vector: int) -> None:
        for listener in self.eoi_listeners:
            listener(vector)


def make(**kw: object) -> tuple[RecordingApic, IoApic]:
    apic = RecordingApic()
    return apic, IoApic(apic, **kw)  # type: ignore[arg-type]


def rd(io: IoApic, reg: int) -> int:
    io.write(IO.IOREGSEL, 4, reg)
    return io.read(IO.IOWIN, 4)


def wr(io: IoApic, reg: int, value: int) -> None:
    io.write(IO.IOREGSEL, 4, reg)
    io.write(IO.IOWIN, 4, value)


def route(io: IoApic, pin: int, low: int, destination: int = 0) -> None:
    wr(io, IO.REG_REDIRECTION + 2 * pin + 1, destination << 24)
    wr(io, IO.REG_REDIRECTION + 2 * pin, low)


def entry_low(io: IoApic, pin: int) -> int:
    return rd(io, IO.REG_REDIRECTION + 2 * pin)


LEVEL = IO.RTE_LEVEL
MASKED = IO.RTE_MASKED


# ---------------------------------------------------------------------- registers


def test_reset_values_and_identification() -> None:
    apic, io = make(ioapic_id=2)
    assert rd(io, IO.REG_ID) == 0x02000000
    assert rd(io, IO.REG_VERSION) == 0x00170011
    assert rd(io, IO.REG_ARBITRATION) == 0x02000000
    for pin in range(24):
        assert rd(io, IO.REG_REDIRECTION + 2 * pin) == 0x00010000
        assert rd(io, IO.REG_REDIRECTION + 2 * pin + 1) == 0
    assert rd(io, 0x03) == 0 and rd(io, 0x40) == 0 and rd(io, 0xFF) == 0  # unimplemented
    assert apic.eoi_listeners == [io.end_of_interrupt]


def test_register_window_and_writable_bits() -> None:
    _, io = make()
    io.write(IO.IOREGSEL, 4, 0x1234)
    assert io.read(IO.IOREGSEL, 4) == 0x34  # IOREGSEL is 8 bits
    io.write(IO.IOREGSEL, 1, 0x12)  # a byte write selects too
    assert io.read(IO.IOREGSEL, 1) == 0x12
    wr(io, IO.REG_ID, 0xFFFFFFFF)
    assert rd(io, IO.REG_ID) == 0x0F000000
    assert rd(io, IO.REG_ARBITRATION) == 0x0F000000  # loaded from the ID
    wr(io, IO.REG_VERSION, 0)
    wr(io, IO.REG_ARBITRATION, 0)
    assert rd(io, IO.REG_VERSION) == 0x00170011 and rd(io, IO.REG_ARBITRATION) == 0x0F000000
    wr(io, IO.REG_REDIRECTION + 2 * 5, 0xFFFFFFFF)
    assert rd(io, IO.REG_REDIRECTION + 2 * 5) == 0x0001AFFF  # delivery status, remote IRR read-only
    wr(io, IO.REG_REDIRECTION + 2 * 5 + 1, 0xFFFFFFFF)
    assert rd(io, IO.REG_REDIRECTION + 2 * 5 + 1) == 0xFF000000
    assert io.entries[5] == 0xFF000000_0001AFFF


def test_odd_sized_iowin_accesses_do_nothing() -> None:
    _, io = make()
    io.write(IO.IOREGSEL, 4, IO.REG_VERSION)
    assert io.read(IO.IOWIN, 1) == 0 and io.read(IO.IOWIN + 1, 1) == 0
    io.write(IO.IOREGSEL, 4, IO.REG_ID)
    io.write(IO.IOWIN + 3, 1, 0x05)
    io.write(IO.IOWIN, 2, 0x0500)
    assert rd(io, IO.REG_ID) == 0x01000000
    assert io.read(0x20, 4) == 0 and io.read(0x40, 4) == 0  # no EOI register on version 11h


# ---------------------------------------------------------------------- edge inputs


def test_edge_sends_once_per_rising_edge() -> None:
    apic, io = make()
    route(io, 4, 0x34)
    io.set_irq(4, True)
    io.set_irq(4, True)  # no new edge
    assert apic.messages == [(0x34, IO.DM_FIXED, False)]
    io.set_irq(4, False)
    io.set_irq(4, True)
    assert len(apic.messages) == 2
    assert io.messages[4] == 2
    assert entry_low(io, 4) & (IO.RTE_DELIVERY_STATUS | IO.RTE_REMOTE_IRR) == 0


def test_masked_edges_are_lost() -> None:
    apic, io = make()
    route(io, 1, MASKED | 0x31)
    io.set_irq(1, True)
    route(io, 1, 0x31)  # unmasking while high: the edge is gone
    assert apic.messages == []
    io.set_irq(1, False)
    io.set_irq(1, True)
    assert apic.messages == [(0x31, IO.DM_FIXED, False)]


def test_destination_decides_who_gets_it() -> None:
    apic, io = make()
    route(io, 2, 0x32, destination=3)  # physical APIC 3: nobody here
    io.set_irq(2, True)
    assert apic.messages == []
    io.set_irq(2, False)
    route(io, 2, IO.RTE_LOGICAL | 0x32, destination=0x01)  # logical set containing us
    io.set_irq(2, True)
    assert apic.messages == [(0x32, IO.DM_FIXED, False)]


def test_pins_outside_the_chip_are_ignored() -> None:
    apic, io = make()
    io.set_irq(24, True)
    io.set_irq(-1, True)
    assert apic.messages == []


# ---------------------------------------------------------------------- level inputs


def test_level_waits_for_eoi_and_resends_while_asserted() -> None:
    apic, io = make()
    route(io, 9, LEVEL | 0x39)
    io.set_irq(9, True)
    assert apic.messages == [(0x39, IO.DM_FIXED, True)]
    assert entry_low(io, 9) & IO.RTE_REMOTE_IRR
    io.set_irq(9, False)
    io.set_irq(9, True)  # remote IRR set: nothing new
    assert len(apic.messages) == 1
    apic.eoi(0x38)  # another vector's EOI
    assert entry_low(io, 9) & IO.RTE_REMOTE_IRR and len(apic.messages) == 1
    apic.eoi(0x39)  # still asserted: again
    assert len(apic.messages) == 2 and entry_low(io, 9) & IO.RTE_REMOTE_IRR
    io.set_irq(9, False)
    apic.eoi(0x39)
    assert len(apic.messages) == 2 and not entry_low(io, 9) & IO.RTE_REMOTE_IRR


def test_level_masked_then_unmasked_sends() -> None:
    apic, io = make()
    route(io, 11, MASKED | LEVEL | 0x3B)
    io.set_irq(11, True)
    assert apic.messages == []
    route(io, 11, LEVEL | 0x3B)
    assert apic.messages == [(0x3B, IO.DM_FIXED, True)]


def test_remote_irr_is_set_only_when_accepted() -> None:
    apic, io = make()
    apic.accepting = False
    route(io, 3, LEVEL | 0x33)
    io.set_irq(3, True)
    assert len(apic.messages) == 1 and not entry_low(io, 3) & IO.RTE_REMOTE_IRR


def test_switching_to_edge_clears_a_stuck_remote_irr() -> None:
    apic, io = make()
    route(io, 10, LEVEL | 0x3A)
    io.set_irq(10, True)
    assert entry_low(io, 10) & IO.RTE_REMOTE_IRR
    route(io, 10, MASKED | 0x3A)  # Linux's trick on I/O APICs without an EOI register
    assert not entry_low(io, 10) & IO.RTE_REMOTE_IRR
    route(io, 10, MASKED | LEVEL | 0x3A)
    io.set_irq(10, False)
    route(io, 10, LEVEL | 0x3A)
    assert len(apic.messages) == 1


def test_polarity_inverts_the_input_and_follows_the_board() -> None:
    apic, io = make(active_low_pins=[16])
    route(io, 5, IO.RTE_ACTIVE_LOW | LEVEL | 0x35)  # an idle ISA line read as active low: asserted
    assert apic.messages == [(0x35, IO.DM_FIXED, True)]
    assert io.asserted(5)
    route(io, 16, IO.RTE_ACTIVE_LOW | LEVEL | 0x40)  # a PCI-style active-low pin programmed right
    assert not io.asserted(16) and len(apic.messages) == 1
    io.set_irq(16, True)  # the device asserts: the wire goes low
    assert io.asserted(16) and apic.messages[-1] == (0x40, IO.DM_FIXED, True)


def test_nmi_and_extint_entries_are_edge_triggered() -> None:
    apic, io = make()
    route(io, 0, LEVEL | L.DM_EXTINT << 8)
    route(io, 7, LEVEL | L.DM_NMI << 8)
    io.set_irq(0, True)
    io.set_irq(7, True)
    assert apic.messages == [(0, L.DM_EXTINT, False), (0, L.DM_NMI, False)]
    assert entry_low(io, 0) & IO.RTE_REMOTE_IRR == 0
    io.set_irq(7, True)
    assert len(apic.messages) == 2


# ---------------------------------------------------------------------- with the local APIC


def test_routed_through_the_local_apic_with_eoi() -> None:
    clock = VirtualClock()
    lapic = LocalApic(clock)
    lapic.write(L.REG_SVR, 4, 0x1FF)
    io = IoApic(lapic, ioapic_id=1)
    line = IrqLine("irq9")
    line.connect(io, 9)
    route(io, 9, LEVEL | 0x49)
    line.raise_()
    assert lapic.interrupt_pending()
    assert lapic.read(L.REG_TMR + 0x20, 4) == 1 << (0x49 - 64)  # accepted as level-triggered
    assert lapic.acknowledge() == 0x49
    lapic.write(L.REG_EOI, 4, 0)  # the EOI broadcast: line still high, so again
    assert lapic.acknowledge() == 0x49
    line.lower()
    lapic.write(L.REG_EOI, 4, 0)
    assert not lapic.interrupt_pending() and not entry_low(io, 9) & IO.RTE_REMOTE_IRR
    route(io, 1, 0x41, destination=7)  # an APIC ID nobody has
    io.set_irq(1, True)
    assert not lapic.interrupt_pending()
    lapic.write(L.REG_SVR, 4, 0xFF)  # a software-disabled APIC drops what arrives
    route(io, 4, LEVEL | 0x44)
    io.set_irq(4, True)
    assert lapic.irr == 0 and not entry_low(io, 4) & IO.RTE_REMOTE_IRR
