"""The local APIC, register by register: reset state, masks, priorities, EOI, the timer on virtual
time, IPIs to oneself, software and global disable, LINT0/LINT1 and the virtual wire to the 8259."""

from __future__ import annotations

import pytest

from ring1.runtime.cpu.events import Fault
from ring1.runtime.devices import lapic as L
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.lapic import LocalApic


class FakePic:
    """An 8259 as the APIC sees it: INTR and the acknowledge cycle."""

    def __init__(self) -> None:
        self.vectors: list[int] = []
        self.acks = 0

    def interrupt_pending(self) -> bool:
        return bool(self.vectors)

    def acknowledge(self) -> int:
        self.acks += 1
        return self.vectors.pop(0) if self.vectors else 0x27  # the 8259's IRQ 7 spurious vector


def make(pic: FakePic | None = None, **kw: int) -> tuple[VirtualClock, LocalApic]:
    clock = VirtualClock(ns_per_insn=1)  # advance(n) is n virtual ns
    return clock, LocalApic(clock, pic=pic, **kw)


def rd(apic: LocalApic, reg: int) -> int:
    return apic.read(reg, 4)


def wr(apic: LocalApic, reg: int, value: int) -> None:
    apic.write(reg, 4, value)


def enabled(pic: FakePic | None = None) -> tuple[VirtualClock, LocalApic]:
    clock, apic = make(pic)
    wr(apic, L.REG_SVR, 0x1FF)
    return clock, apic


def esr(apic: LocalApic) -> int:
    wr(apic, L.REG_ESR, 0)  # write, then read
    return rd(apic, L.REG_ESR)


def self_ipi(apic: LocalApic, vector: int) -> None:
    wr(apic, L.REG_ICR_LOW, L.SHORTHAND_SELF << 18 | vector)


def irr_bit(apic: LocalApic, vector: int) -> bool:
    return bool(rd(apic, L.REG_IRR + 0x10 * (vector // 32)) >> (vector % 32) & 1)


def isr_bit(apic: LocalApic, vector: int) -> bool:
    return bool(rd(apic, L.REG_ISR + 0x10 * (vector // 32)) >> (vector % 32) & 1)


# ---------------------------------------------------------------------- registers


def test_reset_values() -> None:
    _, apic = make(apic_id=3)
    assert rd(apic, L.REG_ID) == 0x03000000
    assert rd(apic, L.REG_VERSION) == 0x00050014
    assert rd(apic, L.REG_DFR) == 0xFFFFFFFF
    assert rd(apic, L.REG_SVR) == 0xFF
    for reg in (L.REG_TPR, L.REG_APR, L.REG_PPR, L.REG_LDR, L.REG_ESR, L.REG_ICR_LOW, L.REG_ICR_HIGH):
        assert rd(apic, reg) == 0, hex(reg)
    for reg in range(L.REG_ISR, L.REG_ESR, 0x10):
        assert rd(apic, reg) == 0, hex(reg)
    for reg in range(L.REG_LVT_TIMER, L.REG_LVT_ERROR + 1, 0x10):
        assert rd(apic, reg) == 0x00010000, hex(reg)
    for reg in (L.REG_TIMER_INITIAL, L.REG_TIMER_CURRENT, L.REG_TIMER_DIVIDE):
        assert rd(apic, reg) == 0
    assert apic.msr_read() == 0xFEE00900  # base, BSP, globally enabled
    assert not apic.software_enabled and apic.globally_enabled


def test_writable_bits_of_each_register() -> None:
    _, apic = enabled()
    wr(apic, L.REG_ID, 0xFFFFFFFF)
    assert rd(apic, L.REG_ID) == 0xFF000000
    wr(apic, L.REG_TPR, 0xFFFFFFFF)
    assert rd(apic, L.REG_TPR) == 0xFF
    wr(apic, L.REG_LDR, 0x12345678)
    assert rd(apic, L.REG_LDR) == 0x12000000
    wr(apic, L.REG_DFR, 0)
    assert rd(apic, L.REG_DFR) == 0x0FFFFFFF  # cluster model; bits 27:0 read as ones
    wr(apic, L.REG_SVR, 0xFFFFFFFF)
    assert rd(apic, L.REG_SVR) == 0x3FF
    wr(apic, L.REG_ICR_HIGH, 0xFFFFFFFF)
    assert rd(apic, L.REG_ICR_HIGH) == 0xFF000000
    wr(apic, L.REG_TIMER_DIVIDE, 0xFFFFFFFF)
    assert rd(apic, L.REG_TIMER_DIVIDE) == 0xB
    expected = {  # delivery status (12) and remote IRR (14) never read back as written
        L.REG_LVT_TIMER: 0x000300FF,
        L.REG_LVT_THERMAL: 0x000107FF,
        L.REG_LVT_PERF: 0x000107FF,
        L.REG_LVT_LINT0: 0x0001A7FF,
        L.REG_LVT_LINT1: 0x0001A7FF,
        L.REG_LVT_ERROR: 0x000100FF,
    }
    for reg, value in expected.items():
        wr(apic, reg, 0xFFFFFFFF)
        assert rd(apic, reg) == value, hex(reg)


def test_read_only_registers_ignore_writes() -> None:
    _, apic = enabled()
    for reg in (L.REG_VERSION, L.REG_APR, L.REG_PPR, L.REG_ISR, L.REG_TMR + 0x30, L.REG_IRR + 0x70):
        before = rd(apic, reg)
        wr(apic, reg, 0xFFFFFFFF)
        assert rd(apic, reg) == before, hex(reg)
    wr(apic, L.REG_TIMER_CURRENT, 1234)
    assert rd(apic, L.REG_TIMER_CURRENT) == 0
    assert rd(apic, L.REG_EOI) == 0  # write-only
    assert esr(apic) == 0  # none of these is an illegal register


def test_narrow_and_misaligned_accesses() -> None:
    _, apic = enabled()
    assert apic.read(L.REG_VERSION, 1) == 0x14
    assert apic.read(L.REG_VERSION + 2, 1) == 0x05
    assert apic.read(L.REG_VERSION, 2) == 0x0014
    assert apic.read(L.REG_VERSION + 4, 4) == 0  # bytes 4-15 of a slot hold nothing
    assert apic.read(L.REG_VERSION, 8) == 0x00050014
    wr(apic, L.REG_TPR, 0x20)
    apic.write(L.REG_TPR, 1, 0x80)  # narrower than 32 bits: dropped
    apic.write(L.REG_TPR + 4, 4, 0x80)  # not at the start of the slot: dropped
    assert rd(apic, L.REG_TPR) == 0x20
    apic.write(L.REG_TPR, 8, 0xFFFFFFFF_00000040)  # a 64-bit store writes the register with its low half
    assert rd(apic, L.REG_TPR) == 0x40


def test_reserved_register_sets_illegal_register_address_and_raises_the_error_interrupt() -> None:
    _, apic = enabled()
    wr(apic, L.REG_LVT_ERROR, 0xFE)
    assert apic.read(0x2F0, 4) == 0  # no LVT CMCI on a six-entry APIC
    assert esr(apic) == L.ESR_ILLEGAL_REGISTER
    assert irr_bit(apic, 0xFE)
    assert apic.acknowledge() == 0xFE
    apic.write(0x400, 4, 1)
    assert esr(apic) == L.ESR_ILLEGAL_REGISTER


def test_esr_is_written_then_read() -> None:
    _, apic = enabled()
    apic.receive_message(0x05, L.DM_FIXED)  # an illegal vector: an error, but not yet visible
    assert rd(apic, L.REG_ESR) == 0
    wr(apic, L.REG_ESR, 0)
    assert rd(apic, L.REG_ESR) == L.ESR_RECEIVE_ILLEGAL_VECTOR
    assert rd(apic, L.REG_ESR) == L.ESR_RECEIVE_ILLEGAL_VECTOR  # reading does not clear
    wr(apic, L.REG_ESR, 0)
    assert rd(apic, L.REG_ESR) == 0  # no error since the last write


def test_illegal_vectors_never_reach_the_irr() -> None:
    _, apic = enabled()
    for vector in (0, 15):
        assert not apic.receive_message(vector, L.DM_FIXED)
    assert apic.irr == 0
    self_ipi(apic, 0x0F)
    assert apic.irr == 0
    assert esr(apic) == L.ESR_RECEIVE_ILLEGAL_VECTOR | L.ESR_SEND_ILLEGAL_VECTOR
    wr(apic, L.REG_LVT_TIMER, 0x03)  # an illegal LVT vector: no interrupt when the timer fires
    clock = apic.clock
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)
    wr(apic, L.REG_TIMER_INITIAL, 1)
    clock.advance(100)
    assert apic.irr == 0 and esr(apic) == L.ESR_RECEIVE_ILLEGAL_VECTOR


# ---------------------------------------------------------------------- priorities and EOI


def test_tpr_gates_delivery_by_priority_class() -> None:
    _, apic = enabled()
    self_ipi(apic, 0x51)
    assert irr_bit(apic, 0x51)
    wr(apic, L.REG_TPR, 0x50)  # same class: held
    assert not apic.interrupt_pending()
    assert apic.acknowledge() == 0xFF  # the spurious vector; nothing moves
    assert irr_bit(apic, 0x51) and apic.isr == 0
    wr(apic, L.REG_TPR, 0x4F)
    assert apic.interrupt_pending()
    assert apic.acknowledge() == 0x51
    assert isr_bit(apic, 0x51) and not irr_bit(apic, 0x51)


def test_ppr_follows_tpr_and_the_highest_in_service_class() -> None:
    _, apic = enabled()
    wr(apic, L.REG_TPR, 0x23)
    assert rd(apic, L.REG_PPR) == 0x23
    self_ipi(apic, 0x61)
    assert apic.acknowledge() == 0x61
    assert rd(apic, L.REG_PPR) == 0x60  # in-service class above TPR's: sub-class 0
    wr(apic, L.REG_TPR, 0x6A)
    assert rd(apic, L.REG_PPR) == 0x6A  # equal classes: TPR (the model-specific choice QEMU makes)
    wr(apic, L.REG_TPR, 0x7A)
    assert rd(apic, L.REG_PPR) == 0x7A
    wr(apic, L.REG_TPR, 0)
    wr(apic, L.REG_EOI, 0)
    assert rd(apic, L.REG_PPR) == 0


def test_apr_formula() -> None:
    _, apic = enabled()
    wr(apic, L.REG_TPR, 0x45)
    assert rd(apic, L.REG_APR) == 0x45  # nothing requested or in service
    self_ipi(apic, 0x81)
    assert rd(apic, L.REG_APR) == 0x80  # the IRR's class is above the TPR's
    wr(apic, L.REG_TPR, 0x9F)
    assert rd(apic, L.REG_APR) == 0x9F
    wr(apic, L.REG_TPR, 0)
    assert apic.acknowledge() == 0x81
    wr(apic, L.REG_TPR, 0x35)  # class 3 below the in-service class 8: TPR[7:4] AND ISRV[7:4]
    assert rd(apic, L.REG_APR) == 0x00
    wr(apic, L.REG_TPR, 0xC5)
    assert rd(apic, L.REG_APR) == 0xC5
    wr(apic, L.REG_TPR, 0x75)  # 7 & 8 = 0
    self_ipi(apic, 0x21)
    assert rd(apic, L.REG_APR) == 0x20  # the IRR's class wins the max
    wr(apic, L.REG_TPR, 0x85)  # the in-service class itself: 8 & 8 = 8, above the IRR's 2
    assert rd(apic, L.REG_APR) == 0x80


def test_highest_vector_first_and_nesting_by_class() -> None:
    _, apic = enabled()
    self_ipi(apic, 0x31)
    self_ipi(apic, 0x52)
    assert rd(apic, L.REG_IRR + 0x20) == 1 << (0x52 - 64)  # IRR2 holds vectors 0x40-0x5F
    assert rd(apic, L.REG_IRR + 0x10) == 1 << (0x31 - 32)
    assert apic.acknowledge() == 0x52
    assert not apic.interrupt_pending()  # class 3 waits for class 5's EOI
    self_ipi(apic, 0x5F)
    assert not apic.interrupt_pending()  # the same class does not nest
    self_ipi(apic, 0x60)
    assert apic.acknowledge() == 0x60  # a higher class does
    wr(apic, L.REG_EOI, 0)  # ends 0x60
    assert isr_bit(apic, 0x52) and not isr_bit(apic, 0x60)
    wr(apic, L.REG_EOI, 0)  # ends 0x52
    assert apic.acknowledge() == 0x5F
    wr(apic, L.REG_EOI, 0)
    assert apic.acknowledge() == 0x31
    wr(apic, L.REG_EOI, 0)
    assert apic.isr == 0 and apic.irr == 0
    wr(apic, L.REG_EOI, 0)  # an EOI with nothing in service does nothing
    assert apic.isr == 0


def test_one_request_queues_behind_the_same_vector_in_service() -> None:
    _, apic = enabled()
    self_ipi(apic, 0x40)
    assert apic.acknowledge() == 0x40
    self_ipi(apic, 0x40)
    self_ipi(apic, 0x40)  # collapses into the one IRR bit
    assert isr_bit(apic, 0x40) and irr_bit(apic, 0x40)
    wr(apic, L.REG_EOI, 0)
    assert apic.acknowledge() == 0x40
    wr(apic, L.REG_EOI, 0)
    assert not apic.interrupt_pending()


def test_level_triggered_eoi_is_broadcast_and_edge_is_not() -> None:
    _, apic = enabled()
    heard: list[int] = []
    apic.add_eoi_listener(heard.append)
    assert apic.receive_message(0x70, L.DM_FIXED, level_triggered=True)
    assert rd(apic, L.REG_TMR + 0x30) == 1 << (0x70 - 96)
    assert apic.receive_message(0x41, L.DM_FIXED)
    assert apic.acknowledge() == 0x70
    wr(apic, L.REG_EOI, 0)
    assert heard == [0x70]
    assert apic.acknowledge() == 0x41
    wr(apic, L.REG_EOI, 0)
    assert heard == [0x70]


def test_spurious_vector_comes_from_svr() -> None:
    _, apic = make()
    wr(apic, L.REG_SVR, 0x13F)
    assert not apic.interrupt_pending()
    assert apic.acknowledge() == 0x3F
    assert apic.isr == 0


# ---------------------------------------------------------------------- software and global disable


def test_software_disable_masks_the_lvt_and_drops_new_fixed_interrupts() -> None:
    _, apic = enabled()
    wr(apic, L.REG_LVT_LINT0, 0x700)
    wr(apic, L.REG_LVT_TIMER, 0x40)
    self_ipi(apic, 0x50)  # pending before the disable
    wr(apic, L.REG_SVR, 0xFF)
    assert rd(apic, L.REG_LVT_LINT0) == 0x10700 and rd(apic, L.REG_LVT_TIMER) == 0x10040
    wr(apic, L.REG_LVT_TIMER, 0x40)  # the mask cannot be cleared while disabled
    assert rd(apic, L.REG_LVT_TIMER) == 0x10040
    self_ipi(apic, 0x60)
    assert not apic.receive_message(0x61, L.DM_FIXED)
    assert not irr_bit(apic, 0x60) and not irr_bit(apic, 0x61)
    assert apic.acknowledge() == 0x50  # what was pending is held and still dispensed
    assert apic.receive_message(0, L.DM_NMI) and apic.take_nmi()  # NMIs still arrive
    wr(apic, L.REG_SVR, 0x1FF)
    assert rd(apic, L.REG_LVT_TIMER) == 0x10040  # re-enabling leaves the masks set
    wr(apic, L.REG_LVT_TIMER, 0x40)
    assert rd(apic, L.REG_LVT_TIMER) == 0x40


def test_msr_reserved_bits_raise_gp_and_bsp_is_read_only() -> None:
    _, apic = make()
    for bad in (0xFEE00901, 0xFEE00D00, 0xFEE00B00, 1 << 32 | 0xFEE00900):  # reserved, x2APIC, bit 9, > 32 bits
        with pytest.raises(Fault) as caught:
            apic.msr_write(bad)
        assert caught.value.vector == 13 and caught.value.error_code == 0
    assert apic.msr_read() == 0xFEE00900
    apic.msr_write(0xFEE00800)  # clearing BSP changes nothing
    assert apic.msr_read() == 0xFEE00900


def test_msr_relocation_is_reported() -> None:
    _, apic = make()
    moved: list[int] = []
    apic.on_relocate = moved.append
    apic.msr_write(0xFED00800)
    assert apic.base_address == 0xFED00000 and moved == [0xFED00000]
    assert apic.msr_read() == 0xFED00900


def test_global_disable_removes_the_apic_and_hands_the_cpu_to_the_8259() -> None:
    pic = FakePic()
    clock, apic = enabled(pic)
    wr(apic, L.REG_TPR, 0x30)
    wr(apic, L.REG_LVT_TIMER, 0x20040)
    wr(apic, L.REG_TIMER_INITIAL, 100)
    self_ipi(apic, 0x80)
    assert apic.cpu_controller() is apic
    apic.msr_write(0xFEE00100)  # EN = 0
    assert apic.cpu_controller() is pic
    assert apic.read(L.REG_VERSION, 4) == 0xFFFFFFFF  # nothing answers at the page
    wr(apic, L.REG_TPR, 0x10)
    pic.vectors.append(0x21)
    assert apic.interrupt_pending()  # INTR straight from the 8259
    assert apic.acknowledge() == 0x21 and pic.acks == 1
    assert not apic.receive_message(0x90, L.DM_FIXED)
    clock.advance(100_000)
    assert apic.irr == 0  # the timer is gone too
    apic.set_irq(L.LINT1_PIN, True)  # LINT1 is the NMI pin now
    assert apic.take_nmi()
    apic.msr_write(0xFEE00900)
    assert apic.cpu_controller() is apic
    assert rd(apic, L.REG_TPR) == 0 and rd(apic, L.REG_SVR) == 0xFF and apic.irr == 0  # back from reset
    assert rd(apic, L.REG_TIMER_CURRENT) == 0


# ---------------------------------------------------------------------- ICR


def test_self_ipi_by_shorthand_and_by_own_destination() -> None:
    _, apic = make(apic_id=2)
    wr(apic, L.REG_SVR, 0x1FF)
    self_ipi(apic, 0x41)
    assert irr_bit(apic, 0x41)
    assert rd(apic, L.REG_ICR_LOW) & L.ICR_DELIVERY_STATUS == 0  # idle by the time it is read
    wr(apic, L.REG_ICR_LOW, L.SHORTHAND_ALL << 18 | 0x42)
    assert irr_bit(apic, 0x42)
    wr(apic, L.REG_ICR_HIGH, 2 << 24)
    wr(apic, L.REG_ICR_LOW, 0x43)  # physical destination 2: this APIC
    assert irr_bit(apic, 0x43)
    wr(apic, L.REG_ICR_HIGH, 5 << 24)
    wr(apic, L.REG_ICR_LOW, 0x44)  # another (absent) APIC
    assert not irr_bit(apic, 0x44)
    wr(apic, L.REG_ICR_LOW, L.SHORTHAND_OTHERS << 18 | 0x45)
    assert not irr_bit(apic, 0x45)
    wr(apic, L.REG_LDR, 0x04000000)  # flat logical: bit 2
    wr(apic, L.REG_ICR_HIGH, 0x06000000)
    wr(apic, L.REG_ICR_LOW, L.ICR_LOGICAL | 0x46)
    assert irr_bit(apic, 0x46)
    wr(apic, L.REG_ICR_HIGH, 0x08000000)
    wr(apic, L.REG_ICR_LOW, L.ICR_LOGICAL | 0x47)
    assert not irr_bit(apic, 0x47)
    wr(apic, L.REG_DFR, 0x0FFFFFFF)  # cluster model: cluster 0, member bit 2
    wr(apic, L.REG_ICR_HIGH, 0x04000000)
    wr(apic, L.REG_ICR_LOW, L.ICR_LOGICAL | 0x48)
    wr(apic, L.REG_ICR_HIGH, 0x14000000)  # cluster 1
    wr(apic, L.REG_ICR_LOW, L.ICR_LOGICAL | 0x49)
    assert irr_bit(apic, 0x48) and not irr_bit(apic, 0x49)


def test_init_and_sipi_to_absent_processors_go_nowhere() -> None:
    _, apic = enabled()
    wr(apic, L.REG_ICR_LOW, 0x000C4500)  # INIT to all excluding self (SeaBIOS, Linux)
    wr(apic, L.REG_ICR_LOW, 0x000C4608)  # SIPI to all excluding self
    wr(apic, L.REG_ICR_HIGH, 1 << 24)
    wr(apic, L.REG_ICR_LOW, 0x0000C500)  # INIT to APIC 1
    wr(apic, L.REG_ICR_LOW, 0x00000608)  # SIPI to APIC 1
    assert rd(apic, L.REG_ICR_LOW) == 0x00000608  # delivery status idle
    assert apic.irr == 0 and not apic.nmi_pending and esr(apic) == 0


def test_nmi_ipi_to_self_and_invalid_shorthand_combinations() -> None:
    _, apic = enabled()
    wr(apic, L.REG_ICR_LOW, L.SHORTHAND_SELF << 18 | L.DM_NMI << 8)  # invalid: self is fixed only
    assert not apic.nmi_pending
    wr(apic, L.REG_ICR_HIGH, 0)
    wr(apic, L.REG_ICR_LOW, L.DM_NMI << 8)  # to our own ID: valid
    assert apic.take_nmi() and not apic.take_nmi()


# ---------------------------------------------------------------------- the timer


DIVIDES = {0x0: 2, 0x1: 4, 0x2: 8, 0x3: 16, 0x8: 32, 0x9: 64, 0xA: 128, 0xB: 1}


@pytest.mark.parametrize(("config", "divisor"), DIVIDES.items())
def test_one_shot_counts_down_at_the_bus_rate_over_the_divisor(config: int, divisor: int) -> None:
    clock, apic = enabled()
    tick = L.NS_PER_S // L.APIC_BUS_HZ * divisor  # 10 ns per bus clock
    wr(apic, L.REG_TIMER_DIVIDE, config)
    wr(apic, L.REG_LVT_TIMER, 0x30)
    wr(apic, L.REG_TIMER_INITIAL, 1000)
    assert rd(apic, L.REG_TIMER_CURRENT) == 1000
    clock.advance(250 * tick)
    assert rd(apic, L.REG_TIMER_CURRENT) == 750
    clock.advance(tick - 1)
    assert rd(apic, L.REG_TIMER_CURRENT) == 750  # counts are whole
    clock.advance(1)
    assert rd(apic, L.REG_TIMER_CURRENT) == 749
    assert clock.next_deadline() == 1000 * tick
    clock.advance(1000 * tick - clock.now() - 1)
    assert not irr_bit(apic, 0x30) and rd(apic, L.REG_TIMER_CURRENT) == 1
    clock.advance(1)
    assert irr_bit(apic, 0x30) and rd(apic, L.REG_TIMER_CURRENT) == 0
    assert apic.acknowledge() == 0x30
    wr(apic, L.REG_EOI, 0)
    clock.advance(10_000 * tick)
    assert apic.irr == 0 and clock.next_deadline() is None  # one shot
    assert rd(apic, L.REG_TIMER_CURRENT) == 0


@pytest.mark.parametrize(("config", "divisor"), DIVIDES.items())
def test_periodic_reloads_without_drift(config: int, divisor: int) -> None:
    clock, apic = enabled()
    tick = 10 * divisor
    wr(apic, L.REG_TIMER_DIVIDE, config)
    wr(apic, L.REG_LVT_TIMER, L.LVT_TIMER_PERIODIC | 0x31)
    clock.advance(7)  # start off the clock's round numbers
    start = clock.now()
    wr(apic, L.REG_TIMER_INITIAL, 3)
    taken = []
    for period in range(1, 11):
        assert clock.next_deadline() == start + period * 3 * tick
        assert clock.skip_to_deadline()  # HLT until the timer
        assert apic.interrupt_pending()
        taken.append((clock.now() - start, apic.acknowledge()))
        wr(apic, L.REG_EOI, 0)
        assert rd(apic, L.REG_TIMER_CURRENT) == 3  # reloaded
        clock.advance(tick)
        assert rd(apic, L.REG_TIMER_CURRENT) == 2
    assert taken == [(p * 3 * tick, 0x31) for p in range(1, 11)]


def test_periodic_missed_periods_collapse_into_one_interrupt() -> None:
    clock, apic = enabled()
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)
    wr(apic, L.REG_LVT_TIMER, L.LVT_TIMER_PERIODIC | 0x32)
    wr(apic, L.REG_TIMER_INITIAL, 10)  # 100 ns periods
    clock.advance(1050)
    assert clock.timers_fired == 1  # ten periods gone: one expiry handled, one IRR bit
    assert irr_bit(apic, 0x32) and rd(apic, L.REG_TIMER_CURRENT) == 5
    assert clock.next_deadline() == 1100


def test_timer_stop_mask_and_restart() -> None:
    clock, apic = enabled()
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)
    wr(apic, L.REG_LVT_TIMER, L.LVT_MASKED | L.LVT_TIMER_PERIODIC | 0x33)
    wr(apic, L.REG_TIMER_INITIAL, 10)
    clock.advance(250)
    assert apic.irr == 0 and rd(apic, L.REG_TIMER_CURRENT) == 5  # masked: counts, never interrupts
    wr(apic, L.REG_TIMER_INITIAL, 0)
    assert rd(apic, L.REG_TIMER_CURRENT) == 0 and clock.next_deadline() is None
    wr(apic, L.REG_LVT_TIMER, L.LVT_TIMER_PERIODIC | 0x33)
    clock.advance(1000)
    assert apic.irr == 0  # stopped stays stopped
    wr(apic, L.REG_TIMER_INITIAL, 20)
    clock.advance(100)
    wr(apic, L.REG_TIMER_INITIAL, 20)  # a new initial count restarts the count
    assert rd(apic, L.REG_TIMER_CURRENT) == 20
    clock.advance(199)
    assert apic.irr == 0
    clock.advance(1)
    assert irr_bit(apic, 0x33)


def test_divide_and_mode_changes_act_on_the_count_in_progress() -> None:
    clock, apic = enabled()
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)  # 10 ns per count
    wr(apic, L.REG_LVT_TIMER, 0x34)
    wr(apic, L.REG_TIMER_INITIAL, 100)
    clock.advance(405)
    assert rd(apic, L.REG_TIMER_CURRENT) == 60
    wr(apic, L.REG_TIMER_DIVIDE, 0x0)  # divide by 2: 20 ns per count, from the last count boundary
    assert rd(apic, L.REG_TIMER_CURRENT) == 60
    assert clock.next_deadline() == 400 + 60 * 20
    wr(apic, L.REG_LVT_TIMER, L.LVT_TIMER_PERIODIC | 0x34)  # one-shot -> periodic: the count goes on
    assert rd(apic, L.REG_TIMER_CURRENT) == 60
    clock.skip_to_deadline()
    assert clock.now() == 1600 and irr_bit(apic, 0x34)
    assert rd(apic, L.REG_TIMER_CURRENT) == 100  # periodic now: reloaded
    assert clock.next_deadline() == 1600 + 100 * 20


def test_one_shot_timer_is_not_restarted_by_a_mode_change() -> None:
    clock, apic = enabled()
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)
    wr(apic, L.REG_LVT_TIMER, 0x35)
    wr(apic, L.REG_TIMER_INITIAL, 5)
    clock.advance(50)
    assert irr_bit(apic, 0x35)
    wr(apic, L.REG_LVT_TIMER, L.LVT_TIMER_PERIODIC | 0x35)
    assert clock.next_deadline() is None and rd(apic, L.REG_TIMER_CURRENT) == 0


# ---------------------------------------------------------------------- LINT0, LINT1, the 8259


def test_extint_virtual_wire_asks_the_8259_at_acknowledge() -> None:
    pic = FakePic()
    _, apic = make(pic)
    pic.vectors.append(0x20)
    assert not apic.interrupt_pending()  # reset: software-disabled, LINT0 masked
    apic.firmware_virtual_wire()
    assert rd(apic, L.REG_SVR) == 0x1FF
    assert rd(apic, L.REG_LVT_LINT0) == 0x8700 and rd(apic, L.REG_LVT_LINT1) == 0x8400
    wr(apic, L.REG_TPR, 0xFF)  # ExtINT ignores the priorities
    assert apic.interrupt_pending()
    assert apic.acknowledge() == 0x20 and pic.acks == 1
    assert apic.isr == 0 and apic.irr == 0  # and bypasses IRR/ISR
    assert not apic.interrupt_pending()
    wr(apic, L.REG_TPR, 0)
    self_ipi(apic, 0xE0)
    pic.vectors.append(0x21)
    assert apic.acknowledge() == 0x21  # the 8259 first
    assert apic.acknowledge() == 0xE0
    wr(apic, L.REG_LVT_LINT0, 0x18700)  # masked
    pic.vectors.append(0x22)
    assert not apic.interrupt_pending()
    wr(apic, L.REG_LVT_LINT0, 0x8700)
    wr(apic, L.REG_SVR, 0xFF)  # software disable masks LINT0: the 8259 is cut off
    assert not apic.interrupt_pending()


def test_extint_message_is_answered_by_the_8259() -> None:
    pic = FakePic()
    _, apic = enabled(pic)
    assert apic.receive_message(0, L.DM_EXTINT)  # as the I/O APIC sends it
    assert apic.interrupt_pending()
    assert apic.acknowledge() == 0x27 and pic.acks == 1  # the 8259 had nothing: its spurious IRQ 7
    assert not apic.interrupt_pending()


def test_lint_fixed_edge_level_and_nmi() -> None:
    _, apic = enabled()
    heard: list[int] = []
    apic.add_eoi_listener(heard.append)
    line0, line1 = IrqLine("lint0"), IrqLine("lint1")
    line0.connect(apic, L.LINT0_PIN)
    line1.connect(apic, L.LINT1_PIN)
    wr(apic, L.REG_LVT_LINT0, 0x50)  # fixed, edge, active high
    line0.raise_()
    assert irr_bit(apic, 0x50)
    assert apic.acknowledge() == 0x50
    wr(apic, L.REG_EOI, 0)
    assert not apic.interrupt_pending()  # an edge delivers once however long it stays high
    line0.lower()
    wr(apic, L.REG_LVT_LINT0, L.LVT_LEVEL | 0x51)
    line0.raise_()
    assert rd(apic, L.REG_LVT_LINT0) & L.LVT_REMOTE_IRR
    assert apic.acknowledge() == 0x51
    wr(apic, L.REG_EOI, 0)  # still asserted: delivered again
    assert heard == [0x51] and irr_bit(apic, 0x51) and rd(apic, L.REG_LVT_LINT0) & L.LVT_REMOTE_IRR
    assert apic.acknowledge() == 0x51
    line0.lower()
    wr(apic, L.REG_EOI, 0)
    assert not rd(apic, L.REG_LVT_LINT0) & L.LVT_REMOTE_IRR and apic.irr == 0
    wr(apic, L.REG_LVT_LINT1, L.DM_NMI << 8)
    line1.raise_()
    assert apic.take_nmi() and apic.nmis == 1
    line1.lower()
    wr(apic, L.REG_LVT_LINT1, L.LVT_MASKED | L.DM_NMI << 8)
    line1.raise_()  # masked: the edge is lost
    assert not apic.nmi_pending


def test_lint_polarity_and_unmasking_an_asserted_level_input() -> None:
    _, apic = enabled()
    wr(apic, L.REG_LVT_LINT0, L.LVT_MASKED | L.LVT_LEVEL | L.LVT_ACTIVE_LOW | 0x52)
    assert apic.irr == 0
    wr(apic, L.REG_LVT_LINT0, L.LVT_LEVEL | L.LVT_ACTIVE_LOW | 0x52)  # the idle-low pin is asserted
    assert irr_bit(apic, 0x52)
    apic.set_irq(L.LINT0_PIN, True)  # deasserted
    assert apic.acknowledge() == 0x52
    wr(apic, L.REG_EOI, 0)
    assert apic.irr == 0


def test_on_request_hears_new_requests() -> None:
    clock, apic = enabled()
    calls: list[int] = []
    apic.on_request = lambda: calls.append(apic.irr)
    wr(apic, L.REG_TIMER_DIVIDE, 0xB)
    wr(apic, L.REG_LVT_TIMER, 0x36)
    wr(apic, L.REG_TIMER_INITIAL, 3)
    assert calls == []
    clock.advance(100)
    assert calls == [1 << 0x36]  # told once the timer's vector is requested
