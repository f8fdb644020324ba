"""The ACPI PM fixed hardware at register level, on the bus at the FADT's ports: the PM timer
over virtual time and its wrap, PM1 status write-1-to-clear, the SCI, and power-off through
SLP_TYP/SLP_EN as ACPICA writes it."""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.boot import firmware
from ring1.runtime.cpu.events import VMStop
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices import acpi
from ring1.runtime.devices.acpi import AcpiPm, PowerOff
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.clock import NS_PER_INSN, VirtualClock
from ring1.runtime.devices.irq import IrqLine

EVT, CNT, TMR = firmware.PM1A_EVT_PORT, firmware.PM1A_CNT_PORT, firmware.PM_TMR_PORT


class Pin:
    """An interrupt controller input that records the levels it is driven to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_irq(self, pin: int, level: bool) -> None:
        self.levels.append(level)

    @property
    def level(self) -> bool:
        return bool(self.levels) and self.levels[-1]


def machine(*, timer_32bit: bool = False) -> tuple[VirtualClock, Bus, AcpiPm, Pin]:
    clock, bus, sci, pin = VirtualClock(), Bus(), IrqLine("SCI"), Pin()
    sci.connect(pin, acpi.SCI_IRQ)
    pm = AcpiPm(clock, sci, timer_32bit=timer_32bit)
    bus.map_ports("ACPI PM1a event", EVT, acpi.PM1_EVT_LEN, pm.event_block, split=False)
    bus.map_ports("ACPI PM1a control", CNT, acpi.PM1_CNT_LEN, pm.control_block, split=False)
    bus.map_ports("ACPI PM timer", TMR, acpi.PM_TMR_LEN, pm.timer_block, split=False)
    return clock, bus, pm, pin


def advance_ns(clock: VirtualClock, ns: int) -> None:
    assert ns % NS_PER_INSN == 0
    clock.advance(ns // NS_PER_INSN)


def ticks_at(ns: int) -> int:
    return ns * 3_579_545 // 1_000_000_000


# ---------------------------------------------------------------- the PM timer


def test_pm_timer_counts_at_3_579545_mhz_of_virtual_time() -> None:
    clock, bus, _, _ = machine()
    assert bus.io_in(TMR, 4) == 0
    advance_ns(clock, 1_000_000_000)  # one virtual second
    assert bus.io_in(TMR, 4) == 3_579_545
    advance_ns(clock, 10)
    assert bus.io_in(TMR, 4) == ticks_at(1_000_000_010)
    advance_ns(clock, 280)  # 290 ns past the second: one more tick (a tick is 279.4 ns)
    assert bus.io_in(TMR, 4) == ticks_at(1_000_000_290) == 3_579_546


def test_pm_timer_is_read_whole_and_by_bytes() -> None:
    clock, bus, _, _ = machine()
    advance_ns(clock, 2_345_678_910)
    value = ticks_at(2_345_678_910)
    assert bus.io_in(TMR, 4) == value
    assert bus.io_in(TMR, 2) == value & 0xFFFF
    assert [bus.io_in(TMR + i, 1) for i in range(4)] == [value >> 8 * i & 0xFF for i in range(4)]
    bus.io_out(TMR, 4, 0)  # read-only
    assert bus.io_in(TMR, 4) == value


def test_24_bit_pm_timer_wraps_and_32_bit_one_does_not() -> None:
    ns = 5_000_000_000  # 17.9 M ticks: past 2**24
    assert ticks_at(ns) > 1 << 24
    for timer_32bit, mask in ((False, 0xFFFFFF), (True, 0xFFFFFFFF)):
        clock, bus, _, _ = machine(timer_32bit=timer_32bit)
        advance_ns(clock, ns)
        assert bus.io_in(TMR, 4) == ticks_at(ns) & mask


# ---------------------------------------------------------------- PM1 status, enable, SCI


def first_msb_change_ns(bits: int = 24) -> int:
    return -(-(1 << (bits - 1)) * 1_000_000_000 // 3_579_545)


def test_tmr_sts_sets_when_bit_23_changes_and_is_cleared_by_writing_1() -> None:
    clock, bus, _, pin = machine()
    edge = first_msb_change_ns()
    advance_ns(clock, edge - edge % NS_PER_INSN)  # just before bit 23 sets
    assert ticks_at(clock.now()) < 1 << 23
    assert bus.io_in(EVT, 2) & acpi.TMR_STS == 0
    advance_ns(clock, 10)
    assert bus.io_in(EVT, 2) & acpi.TMR_STS
    bus.io_out(EVT, 2, 0)  # writing 0 clears nothing
    assert bus.io_in(EVT, 2) & acpi.TMR_STS
    bus.io_out(EVT, 2, acpi.TMR_STS)
    assert bus.io_in(EVT, 2) & acpi.TMR_STS == 0
    advance_ns(clock, 1_000_000_000)  # bit 23 does not change again for 2.34 s
    assert bus.io_in(EVT, 2) & acpi.TMR_STS == 0
    advance_ns(clock, 1_400_000_000)  # now it clears: a change too
    assert bus.io_in(EVT, 2) & acpi.TMR_STS
    assert not pin.levels  # TMR_EN was never set: no SCI


def test_tmr_en_raises_the_sci_at_the_change_of_bit_23_until_the_status_is_cleared() -> None:
    clock, bus, pm, pin = machine()
    bus.io_out(EVT + 2, 2, acpi.TMR_EN)
    assert bus.io_in(EVT + 2, 2) == acpi.TMR_EN
    assert clock.skip_to_deadline()  # HLT: the next event on the clock is the timer carry
    assert clock.now() == first_msb_change_ns()
    assert pin.level and pm.sci.level
    assert bus.io_in(EVT, 2) & acpi.TMR_STS
    bus.io_out(EVT, 2, acpi.TMR_STS)  # the OS's handler acknowledges
    assert not pin.level
    assert clock.skip_to_deadline()  # and the next change comes 2**23 ticks later
    assert ticks_at(clock.now()) == 1 << 24 and pin.level


def test_enabling_an_event_already_pending_raises_the_sci_at_once() -> None:
    clock, bus, _, pin = machine()
    advance_ns(clock, first_msb_change_ns() + 10 - first_msb_change_ns() % 10)
    assert not pin.level
    bus.io_out(EVT + 2, 2, acpi.TMR_EN)
    assert pin.level
    bus.io_out(EVT + 2, 2, 0)  # disabling it drops the SCI; the status stays
    assert not pin.level and bus.io_in(EVT, 2) & acpi.TMR_STS


def test_power_button_sets_its_status_and_the_sci_only_when_enabled() -> None:
    _, bus, pm, pin = machine()
    pm.press_power_button()
    assert bus.io_in(EVT, 2) & acpi.PWRBTN_STS and not pin.level
    bus.io_out(EVT + 2, 2, acpi.PWRBTN_EN)
    assert pin.level
    bus.io_out(EVT + 1, 1, acpi.PWRBTN_STS >> 8)  # a byte write to the status's high byte clears it
    assert not bus.io_in(EVT, 2) & acpi.PWRBTN_STS and not pin.level


def test_pm1_enable_keeps_only_the_bits_that_exist() -> None:
    _, bus, _, _ = machine()
    bus.io_out(EVT + 2, 2, 0xFFFF)
    assert bus.io_in(EVT + 2, 2) == acpi.PM1_EN_BITS
    assert bus.io_in(EVT, 4) >> 16 == acpi.PM1_EN_BITS  # the 32-bit view: status low, enable high


# ---------------------------------------------------------------- PM1 control and power-off


def test_pm1_control_reads_sci_en_which_cannot_be_cleared() -> None:
    _, bus, _, _ = machine()
    assert bus.io_in(CNT, 2) == acpi.SCI_EN
    bus.io_out(CNT, 2, acpi.BM_RLD | acpi.GBL_RLS | 3 << acpi.SLP_TYP_SHIFT)
    # SCI_EN stays, GBL_RLS is write-only, BM_RLD and SLP_TYP read back.
    assert bus.io_in(CNT, 2) == acpi.SCI_EN | acpi.BM_RLD | 3 << acpi.SLP_TYP_SHIFT
    assert bus.io_in(CNT + 2, 2) == 0xFFFF  # past the block: nothing answers


def test_slp_en_with_the_s5_type_powers_off_as_acpica_writes_it() -> None:
    _, bus, _, _ = machine()
    s5 = acpi.SLP_TYP_S5 << acpi.SLP_TYP_SHIFT
    control = bus.io_in(CNT, 2) & ~(acpi.SLP_TYP_MASK | acpi.SLP_EN)
    bus.io_out(CNT, 2, control | s5)  # ACPICA writes the type first, without SLP_EN
    with pytest.raises(PowerOff) as stop:
        bus.io_out(CNT, 2, control | s5 | acpi.SLP_EN)
    assert isinstance(stop.value, VMStop)
    assert stop.value.kind == "poweroff" and stop.value.status == 0 and stop.value.slp_typ == acpi.SLP_TYP_S5


def test_a_byte_write_of_the_high_byte_powers_off_too() -> None:
    _, bus, _, _ = machine()
    with pytest.raises(PowerOff):
        bus.io_out(CNT + 1, 1, (acpi.SLP_TYP_S5 << acpi.SLP_TYP_SHIFT | acpi.SLP_EN) >> 8)


def test_other_sleep_types_are_ignored_and_counted() -> None:
    _, bus, pm, _ = machine()
    other = (acpi.SLP_TYP_S5 + 1) % 8
    bus.io_out(CNT, 2, other << acpi.SLP_TYP_SHIFT | acpi.SLP_EN)
    assert pm.ignored_sleeps == 1
    assert bus.io_in(CNT, 2) & acpi.SLP_EN == 0  # SLP_EN reads as 0


def test_power_off_through_the_firmware_tables_as_an_os_finds_them() -> None:
    """FADT -> PM1a_CNT port, DSDT -> \\_S5's SLP_TYP: the write an OS's poweroff makes."""
    memory = PhysicalMemory(16 << 20)
    tables = firmware.install_tables(memory, 16 << 20)
    fadt_at = tables.address("FADT")
    fadt = memory.read(fadt_at, 116)
    dsdt_at = struct.unpack_from("<I", fadt, 40)[0]
    (pm1a_cnt,) = struct.unpack_from("<I", fadt, 64)
    aml = memory.read(dsdt_at + 36, tables.tables["DSDT"][1] - 36)
    slp_typ = aml[aml.index(b"\\_S5_") + 5 + 3 :][1]  # PackageOp, PkgLength, NumElements, BytePrefix, value
    assert pm1a_cnt == CNT
    _, bus, _, _ = machine()
    with pytest.raises(PowerOff):
        bus.io_out(pm1a_cnt, 2, slp_typ << acpi.SLP_TYP_SHIFT | acpi.SLP_EN)
