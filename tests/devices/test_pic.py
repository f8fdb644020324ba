"""The 8259A pair and the ELCR, driven through their ports as a guest drives them."""

from __future__ import annotations

import pytest

from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.pic import ELCR_PORT, MASTER_PORT, SLAVE_PORT, PicPair

M_CMD, M_DATA, S_CMD, S_DATA = MASTER_PORT, MASTER_PORT + 1, SLAVE_PORT, SLAVE_PORT + 1
READ_IRR, READ_ISR, POLL = 0x0A, 0x0B, 0x0C
EOI, SPECIFIC_EOI = 0x20, 0x60


class Machine:
    """A bus with the pair mapped where a PC has it."""

    def __init__(self) -> None:
        self.bus = Bus()
        self.pic = PicPair()
        self.bus.map_ports("pic-master", MASTER_PORT, 2, self.pic.master)
        self.bus.map_ports("pic-slave", SLAVE_PORT, 2, self.pic.slave)
        self.bus.map_ports("elcr", ELCR_PORT, 2, self.pic.elcr)

    def out(self, port: int, value: int) -> None:
        self.bus.io_out(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus.io_in(port, 1)

    def isr(self, cmd: int) -> int:
        self.out(cmd, READ_ISR)
        value = self.inb(cmd)
        self.out(cmd, READ_IRR)
        return value

    def irr(self, cmd: int) -> int:
        self.out(cmd, READ_IRR)
        return self.inb(cmd)

    def linux_init(self, auto_eoi: bool = False) -> None:
        """arch/x86/kernel/i8259.c init_8259A: vectors 0x30/0x38, everything masked, then unmasked."""
        self.out(M_DATA, 0xFF)
        self.out(S_DATA, 0xFF)
        self.out(M_CMD, 0x11)  # ICW1: edge, cascade, ICW4 follows
        self.out(M_DATA, 0x30)  # ICW2: IRQ 0-7 at 0x30-0x37
        self.out(M_DATA, 0x04)  # ICW3: a slave on IR2
        self.out(M_DATA, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode (auto-EOI)
        self.out(S_CMD, 0x11)
        self.out(S_DATA, 0x38)
        self.out(S_DATA, 0x02)  # ICW3: slave ID 2
        self.out(S_DATA, 0x01)
        self.out(M_DATA, 0x00)
        self.out(S_DATA, 0x00)

    def bios_init(self) -> None:
        """What a PC BIOS writes: vectors 0x08/0x70, then masks for the IRQs it has handlers for."""
        for cmd, base, icw3 in ((M_CMD, 0x08, 0x04), (S_CMD, 0x70, 0x02)):
            self.out(cmd, 0x11)
            self.out(cmd + 1, base)
            self.out(cmd + 1, icw3)
            self.out(cmd + 1, 0x01)
        self.out(M_DATA, 0xB8)  # timer, keyboard, cascade, COM1... enabled
        self.out(S_DATA, 0x8E)


@pytest.fixture
def pc() -> Machine:
    return Machine()


@pytest.fixture
def linux() -> Machine:
    machine = Machine()
    machine.linux_init()
    return machine


# ---------------------------------------------------------------- reset and initialization


def test_power_on_state_masks_everything_but_records_requests(pc: Machine) -> None:
    assert pc.inb(M_DATA) == 0xFF and pc.inb(S_DATA) == 0xFF
    assert pc.inb(M_CMD) == 0 and pc.isr(M_CMD) == 0
    pc.pic.set_irq(0, True)
    assert not pc.pic.interrupt_pending()  # masked: INT stays low
    assert pc.inb(M_CMD) == 0x01  # but the IRR holds the request (the read select is IRR)
    assert pc.inb(ELCR_PORT) == 0 and pc.inb(ELCR_PORT + 1) == 0


def test_linux_init_sequence_gives_vectors_from_icw2(linux: Machine) -> None:
    assert linux.inb(M_DATA) == 0 and linux.inb(S_DATA) == 0  # OCW1s after the ICWs are masks
    linux.pic.set_irq(0, True)
    assert linux.pic.interrupt_pending()
    assert linux.pic.acknowledge() == 0x30
    linux.out(M_CMD, SPECIFIC_EOI | 0)
    linux.pic.set_irq(15, True)
    assert linux.pic.acknowledge() == 0x3F
    assert linux.isr(S_CMD) == 0x80 and linux.isr(M_CMD) == 0x04
    # Linux's EOI for a slave IRQ: specific EOI to the slave, then IR2's to the master.
    linux.out(S_CMD, SPECIFIC_EOI | 7)
    linux.out(M_CMD, SPECIFIC_EOI | 2)
    assert linux.isr(S_CMD) == 0 and linux.isr(M_CMD) == 0


def test_bios_init_sequence_and_program_as_bios_agree(pc: Machine) -> None:
    pc.bios_init()
    pc.pic.set_irq(1, True)
    pc.pic.set_irq(8, True)
    assert pc.pic.acknowledge() == 0x09  # keyboard first: IR1 outranks IR2 (the cascade)
    pc.out(M_CMD, EOI)
    assert pc.pic.acknowledge() == 0x70
    pc.out(S_CMD, EOI)
    pc.out(M_CMD, EOI)
    assert pc.isr(M_CMD) == 0 and pc.isr(S_CMD) == 0

    other = Machine()
    other.pic.program_as_bios()
    assert other.inb(M_DATA) == 0xFB and other.inb(S_DATA) == 0xFF
    other.out(M_DATA, 0xB8)
    other.out(S_DATA, 0x8E)
    other.pic.set_irq(8, True)
    assert other.pic.acknowledge() == 0x70


def test_icw2_low_bits_are_the_ir_number(pc: Machine) -> None:
    pc.out(M_CMD, 0x13)  # single, ICW4
    pc.out(M_DATA, 0x47)
    pc.out(M_DATA, 0x01)
    pc.out(M_DATA, 0x00)
    pc.pic.set_irq(5, True)
    assert pc.pic.acknowledge() == 0x45


def test_single_mode_skips_icw3_and_ic4_clear_skips_icw4(pc: Machine) -> None:
    pc.out(M_CMD, 0x13)  # SNGL + IC4: ICW2, then ICW4 (no ICW3)
    pc.out(M_DATA, 0x20)
    pc.out(M_DATA, 0x03)  # ICW4 with auto-EOI
    pc.out(M_DATA, 0xAA)  # now OCW1
    assert pc.inb(M_DATA) == 0xAA
    assert pc.pic.master.auto_eoi
    pc.out(M_CMD, 0x12)  # SNGL, no ICW4: ICW4's functions go back to zero
    pc.out(M_DATA, 0x20)
    pc.out(M_DATA, 0x55)  # already OCW1
    assert pc.inb(M_DATA) == 0x55
    assert not pc.pic.master.auto_eoi


def test_master_in_single_mode_answers_ir2_itself(pc: Machine) -> None:
    pc.out(M_CMD, 0x13)
    pc.out(M_DATA, 0x20)
    pc.out(M_DATA, 0x01)
    pc.out(M_DATA, 0x00)
    pc.pic.slave.set_input(3, True)
    pc.out(S_CMD, 0x13)
    pc.out(S_DATA, 0x70)
    pc.out(S_DATA, 0x01)
    pc.out(S_DATA, 0x00)
    pc.pic.set_irq(11, False)
    pc.pic.set_irq(11, True)
    assert pc.pic.acknowledge() == 0x22  # no cascade: IR2's own vector, the slave is not asked
    assert pc.isr(S_CMD) == 0


def test_icw1_resets_masks_service_and_edge_sense(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    linux.pic.acknowledge()
    linux.out(M_DATA, 0x5A)
    linux.pic.set_irq(4, True)  # pending, and the line stays high
    linux.out(M_CMD, 0x11)
    linux.out(M_DATA, 0x30)
    linux.out(M_DATA, 0x04)
    linux.out(M_DATA, 0x01)
    assert linux.inb(M_DATA) == 0 and linux.isr(M_CMD) == 0
    assert linux.irr(M_CMD) == 0  # the high IR4 needs a new rising edge
    assert not linux.pic.interrupt_pending()
    linux.pic.set_irq(4, False)
    linux.pic.set_irq(4, True)
    assert linux.pic.acknowledge() == 0x34


def test_icw1_restores_fixed_priority_and_irr_read(linux: Machine) -> None:
    linux.out(M_CMD, 0xC0 | 4)  # IR4 lowest
    linux.out(M_CMD, READ_ISR)
    linux.out(M_CMD, 0x11)
    linux.out(M_DATA, 0x30)
    linux.out(M_DATA, 0x04)
    linux.out(M_DATA, 0x01)
    linux.pic.set_irq(7, True)
    linux.pic.set_irq(5, True)
    assert linux.inb(M_CMD) == 0xA0  # IRR, not ISR
    assert linux.pic.acknowledge() == 0x35  # IR5 outranks IR7 again


# ---------------------------------------------------------------- masks and EOI


def test_imr_masks_delivery_not_the_request(linux: Machine) -> None:
    linux.out(M_DATA, 0x10)
    assert linux.inb(M_DATA) == 0x10
    linux.pic.set_irq(4, True)
    assert not linux.pic.interrupt_pending()
    assert linux.irr(M_CMD) == 0x10
    linux.out(M_DATA, 0x00)
    assert linux.pic.interrupt_pending()
    assert linux.pic.acknowledge() == 0x34


def test_slave_mask_and_master_cascade_mask(linux: Machine) -> None:
    linux.out(M_DATA, 0x04)  # cascade masked: no slave IRQ reaches the CPU
    linux.pic.set_irq(14, True)
    assert not linux.pic.interrupt_pending()
    assert linux.irr(S_CMD) == 0x40 and linux.irr(M_CMD) == 0x04
    linux.out(M_DATA, 0x00)
    assert linux.pic.acknowledge() == 0x3E


def test_in_service_blocks_equal_and_lower_priorities(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    assert linux.pic.acknowledge() == 0x33
    linux.pic.set_irq(5, True)
    assert not linux.pic.interrupt_pending()
    linux.pic.set_irq(1, True)
    assert linux.pic.interrupt_pending()  # a higher priority nests
    assert linux.pic.acknowledge() == 0x31
    assert linux.isr(M_CMD) == 0x0A


def test_nonspecific_eoi_ends_the_highest_priority_in_service(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    linux.pic.acknowledge()
    linux.pic.set_irq(1, True)
    linux.pic.acknowledge()
    linux.out(M_CMD, EOI)
    assert linux.isr(M_CMD) == 0x08
    linux.pic.set_irq(5, True)
    assert not linux.pic.interrupt_pending()  # IR3 still in service
    linux.out(M_CMD, EOI)
    assert linux.isr(M_CMD) == 0 and linux.pic.acknowledge() == 0x35


def test_specific_eoi_ends_the_named_level(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    linux.pic.acknowledge()
    linux.pic.set_irq(1, True)
    linux.pic.acknowledge()
    linux.out(M_CMD, SPECIFIC_EOI | 3)
    assert linux.isr(M_CMD) == 0x02
    linux.out(M_CMD, SPECIFIC_EOI | 6)  # not in service: nothing changes
    assert linux.isr(M_CMD) == 0x02
    linux.out(M_CMD, 0x40)  # OCW2 no-operation
    assert linux.isr(M_CMD) == 0x02


def test_read_select_persists_until_changed(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    linux.pic.set_irq(6, True)
    linux.pic.acknowledge()
    linux.out(M_CMD, READ_ISR)
    assert linux.inb(M_CMD) == 0x08 and linux.inb(M_CMD) == 0x08
    linux.out(M_CMD, 0x08)  # OCW3 without RR: the selection stays
    assert linux.inb(M_CMD) == 0x08
    linux.out(M_CMD, READ_IRR)
    assert linux.inb(M_CMD) == 0x40
    assert linux.inb(M_DATA) == 0x00  # the odd port is always the IMR


def test_auto_eoi_leaves_nothing_in_service(pc: Machine) -> None:
    pc.linux_init(auto_eoi=True)
    pc.pic.set_irq(3, True)
    assert pc.pic.acknowledge() == 0x33
    assert pc.isr(M_CMD) == 0
    pc.pic.set_irq(5, True)
    assert pc.pic.acknowledge() == 0x35  # no EOI was needed


# ---------------------------------------------------------------- cascade


def test_cascade_acknowledge_asks_the_slave(linux: Machine) -> None:
    linux.pic.set_irq(12, True)
    assert linux.irr(M_CMD) == 0x04  # the slave's INT latched on IR2
    assert linux.pic.acknowledge() == 0x3C
    assert linux.isr(M_CMD) == 0x04 and linux.isr(S_CMD) == 0x10
    assert linux.irr(M_CMD) == 0
    # With IR2 in service on the master a second slave request waits for the master's EOI,
    # even after the slave's.
    linux.pic.set_irq(9, True)
    linux.out(S_CMD, EOI)
    assert not linux.pic.interrupt_pending()
    linux.out(M_CMD, EOI)
    assert linux.pic.acknowledge() == 0x39


def test_slave_output_rises_again_after_its_eoi(linux: Machine) -> None:
    linux.pic.set_irq(9, True)
    assert linux.pic.acknowledge() == 0x39
    linux.pic.set_irq(13, True)  # lower on the slave: blocked there, the slave's INT stays low
    assert linux.irr(M_CMD) == 0
    linux.out(M_CMD, EOI)
    assert not linux.pic.interrupt_pending()
    linux.out(S_CMD, EOI)  # now the slave's INT rises: a new edge on IR2
    assert linux.pic.acknowledge() == 0x3D


def test_slave_in_auto_eoi_delivers_each_of_two_pending_requests(pc: Machine) -> None:
    pc.linux_init()
    pc.out(S_CMD, 0x11)
    pc.out(S_DATA, 0x38)
    pc.out(S_DATA, 0x02)
    pc.out(S_DATA, 0x03)  # slave in auto-EOI
    pc.out(S_DATA, 0x00)
    pc.pic.set_irq(10, True)
    pc.pic.set_irq(11, True)
    assert pc.pic.acknowledge() == 0x3A
    pc.out(M_CMD, EOI)
    assert pc.pic.acknowledge() == 0x3B  # the slave's INT dropped during the cycle and rose again


def test_slave_with_another_id_does_not_answer(pc: Machine) -> None:
    pc.linux_init()
    pc.out(S_CMD, 0x11)
    pc.out(S_DATA, 0x38)
    pc.out(S_DATA, 0x05)  # the slave thinks it sits on IR5
    pc.out(S_DATA, 0x01)
    pc.out(S_DATA, 0x00)
    pc.pic.set_irq(8, True)
    assert pc.pic.acknowledge() == 0xFF  # nobody drives the data bus
    assert pc.isr(S_CMD) == 0 and pc.isr(M_CMD) == 0x04


def test_special_fully_nested_mode_lets_a_higher_slave_request_nest(linux: Machine) -> None:
    linux.pic.set_irq(12, True)
    assert linux.pic.acknowledge() == 0x3C
    linux.pic.set_irq(9, True)  # higher on the slave: its INT rises again
    assert not linux.pic.interrupt_pending()  # fully nested: IR2 in service blocks IR2

    sfnm = Machine()
    sfnm.linux_init()
    sfnm.out(M_CMD, 0x11)
    sfnm.out(M_DATA, 0x30)
    sfnm.out(M_DATA, 0x04)
    sfnm.out(M_DATA, 0x11)  # ICW4: 8086, special fully nested
    sfnm.out(M_DATA, 0x00)
    sfnm.pic.set_irq(12, True)
    assert sfnm.pic.acknowledge() == 0x3C
    sfnm.pic.set_irq(9, True)
    assert sfnm.pic.acknowledge() == 0x39
    assert sfnm.isr(S_CMD) == 0x12
    sfnm.pic.set_irq(4, True)
    assert not sfnm.pic.interrupt_pending()  # a lower master IR is still held back by IR2


def test_isa_irq2_pin_lands_on_irq9(linux: Machine) -> None:
    linux.pic.set_irq(2, True)
    assert linux.irr(S_CMD) == 0x02
    assert linux.pic.acknowledge() == 0x39
    # Both bus pins drive one wire: IRQ 9 rising while IRQ 2 holds it high is no new edge.
    linux.pic.set_irq(9, True)
    assert linux.irr(S_CMD) == 0
    linux.pic.set_irq(2, False)
    assert linux.irr(S_CMD) == 0


# ---------------------------------------------------------------- edge and level


def test_edge_input_latches_a_pulse(linux: Machine) -> None:
    line = IrqLine("timer")
    line.connect(linux.pic, 0)
    line.pulse()
    assert linux.pic.interrupt_pending()
    assert linux.pic.acknowledge() == 0x30


def test_edge_input_held_high_requests_once(linux: Machine) -> None:
    linux.pic.set_irq(4, True)
    assert linux.pic.acknowledge() == 0x34
    linux.out(M_CMD, EOI)
    assert not linux.pic.interrupt_pending()  # the line is still high, but that is no new edge
    assert linux.irr(M_CMD) == 0
    linux.pic.set_irq(4, False)
    linux.pic.set_irq(4, True)
    assert linux.pic.acknowledge() == 0x34


def test_level_input_follows_the_line(linux: Machine) -> None:
    linux.out(ELCR_PORT + 1, 0x08)  # IRQ 11 level-sensitive
    linux.pic.set_irq(11, True)
    assert linux.pic.acknowledge() == 0x3B
    linux.out(S_CMD, EOI)
    linux.out(M_CMD, EOI)
    assert linux.pic.interrupt_pending()  # still asserted after the EOI: served again
    assert linux.pic.acknowledge() == 0x3B
    linux.pic.set_irq(11, False)
    assert linux.irr(S_CMD) == 0


def test_ltim_makes_every_input_of_the_chip_level_sensitive(pc: Machine) -> None:
    pc.out(M_CMD, 0x1B)  # LTIM, single, ICW4
    pc.out(M_DATA, 0x50)
    pc.out(M_DATA, 0x01)
    pc.out(M_DATA, 0x00)
    pc.pic.set_irq(6, True)
    assert pc.irr(M_CMD) == 0x40
    pc.pic.set_irq(6, False)
    assert pc.irr(M_CMD) == 0 and not pc.pic.interrupt_pending()


def test_elcr_keeps_the_isa_edge_inputs_edge(pc: Machine) -> None:
    pc.out(ELCR_PORT, 0xFF)
    pc.out(ELCR_PORT + 1, 0xFF)
    assert pc.inb(ELCR_PORT) == 0xF8  # IRQ 0, 1, 2 edge-only
    assert pc.inb(ELCR_PORT + 1) == 0xDE  # IRQ 8, 13 edge-only
    assert pc.bus.io_in(ELCR_PORT, 2) == 0xDEF8
    pc.out(ELCR_PORT, 0x20)
    assert pc.inb(ELCR_PORT) == 0x20


def test_switching_an_input_to_level_takes_its_line_as_the_request(linux: Machine) -> None:
    linux.pic.set_irq(5, True)
    linux.pic.acknowledge()
    linux.out(M_CMD, EOI)
    assert linux.irr(M_CMD) == 0
    linux.out(ELCR_PORT, 0x20)
    assert linux.irr(M_CMD) == 0x20 and linux.pic.interrupt_pending()


# ---------------------------------------------------------------- spurious interrupts


def test_master_request_gone_before_acknowledge_is_spurious_irq7(linux: Machine) -> None:
    linux.out(ELCR_PORT, 0x08)  # IRQ 3 level-sensitive
    linux.pic.set_irq(3, True)
    assert linux.pic.interrupt_pending()
    linux.pic.set_irq(3, False)
    assert linux.pic.acknowledge() == 0x37
    assert linux.isr(M_CMD) == 0  # a default IR7 sets nothing in service
    assert linux.pic.spurious[7] == 1 and linux.pic.acknowledged[7] == 0


def test_request_masked_before_acknowledge_is_spurious(linux: Machine) -> None:
    linux.pic.set_irq(5, True)
    linux.out(M_DATA, 0x20)
    assert linux.pic.acknowledge() == 0x37
    assert linux.isr(M_CMD) == 0 and linux.irr(M_CMD) == 0x20  # the request stays latched


def test_slave_request_gone_before_acknowledge_is_spurious_irq15(linux: Machine) -> None:
    linux.out(ELCR_PORT + 1, 0x04)  # IRQ 10 level-sensitive
    linux.pic.set_irq(10, True)
    linux.pic.set_irq(10, False)
    assert linux.pic.interrupt_pending()  # the edge on IR2 stays latched in the master
    assert linux.pic.acknowledge() == 0x3F
    assert linux.isr(S_CMD) == 0
    assert linux.isr(M_CMD) == 0x04  # the master has IR2 in service: the handler must EOI it
    assert linux.pic.spurious[15] == 1


# ---------------------------------------------------------------- priority rotation


def test_set_priority_command(linux: Machine) -> None:
    linux.out(M_CMD, 0xC0 | 3)  # IR3 lowest, so IR4 highest
    linux.pic.set_irq(1, True)
    linux.pic.set_irq(5, True)
    assert linux.pic.acknowledge() == 0x35
    linux.pic.set_irq(6, True)
    assert not linux.pic.interrupt_pending()  # IR1 and IR6 rank below IR5 now
    linux.out(M_CMD, EOI)
    assert linux.pic.acknowledge() == 0x36


def test_rotate_on_nonspecific_eoi(linux: Machine) -> None:
    linux.pic.set_irq(0, True)
    assert linux.pic.acknowledge() == 0x30
    linux.out(M_CMD, 0xA0)  # rotate on non-specific EOI: IR0 becomes lowest
    assert linux.isr(M_CMD) == 0
    linux.pic.set_irq(0, False)
    linux.pic.set_irq(0, True)
    linux.pic.set_irq(7, True)
    assert linux.pic.acknowledge() == 0x37  # IR7 now outranks IR0
    linux.out(M_CMD, 0xA0)  # IR7 lowest: IR0 highest again
    assert linux.pic.acknowledge() == 0x30


def test_rotate_on_specific_eoi(linux: Machine) -> None:
    linux.pic.set_irq(2 + 8, True)
    linux.pic.set_irq(4, True)
    assert linux.pic.acknowledge() == 0x3A  # the cascade (IR2) outranks IR4
    linux.out(S_CMD, EOI)
    linux.out(M_CMD, 0xE0 | 2)  # end IR2 and make it lowest: IR3 highest
    assert linux.isr(M_CMD) == 0
    linux.pic.set_irq(1, True)
    assert linux.pic.acknowledge() == 0x34  # IR4 outranks IR1 (order 3,4,...,0,1,2)


def test_rotate_in_auto_eoi_mode(pc: Machine) -> None:
    pc.linux_init(auto_eoi=True)
    pc.out(M_CMD, 0x80)  # rotate in auto-EOI mode (set)
    pc.pic.set_irq(3, True)
    assert pc.pic.acknowledge() == 0x33
    pc.pic.set_irq(3, False)
    pc.pic.set_irq(3, True)
    pc.pic.set_irq(5, True)
    assert pc.pic.acknowledge() == 0x35  # IR3 went to the bottom
    pc.out(M_CMD, 0x00)  # rotate in auto-EOI mode (clear): priorities stay where they are
    assert pc.pic.acknowledge() == 0x33
    pc.pic.set_irq(5, False)
    pc.pic.set_irq(5, True)
    pc.pic.set_irq(3, False)
    pc.pic.set_irq(3, True)
    assert pc.pic.acknowledge() == 0x33  # still 6,7,0..5 order: IR3 above IR5


# ---------------------------------------------------------------- special mask mode and poll


def test_special_mask_mode_lets_lower_levels_in(linux: Machine) -> None:
    linux.pic.set_irq(3, True)
    linux.pic.acknowledge()
    linux.out(M_DATA, 0x08)  # the handler masks its own level
    linux.pic.set_irq(5, True)
    assert not linux.pic.interrupt_pending()  # IR3 in service still blocks IR5
    linux.out(M_CMD, 0x68)  # set special mask
    assert linux.pic.acknowledge() == 0x35
    # A non-specific EOI in special mask mode leaves the masked IR3 alone.
    linux.out(M_CMD, EOI)
    assert linux.isr(M_CMD) == 0x08
    linux.out(M_CMD, 0x48)  # reset special mask
    linux.pic.set_irq(6, True)
    assert not linux.pic.interrupt_pending()  # IR3 in service blocks again
    linux.out(M_CMD, EOI)
    assert linux.pic.acknowledge() == 0x36


def test_poll_command_acknowledges_on_the_next_read(linux: Machine) -> None:
    linux.out(M_DATA, 0xFF)  # polled systems keep INT unused
    linux.pic.set_irq(6, True)
    linux.out(M_CMD, POLL)
    assert linux.inb(M_CMD) == 0  # masked: no request to report (I = 0)
    linux.out(M_DATA, 0x00)
    linux.out(M_CMD, POLL)
    assert linux.inb(M_CMD) == 0x86
    assert linux.isr(M_CMD) == 0x40 and linux.irr(M_CMD) == 0
    assert linux.inb(M_CMD) == 0  # one read only: back to the IRR
    linux.out(M_CMD, POLL | READ_ISR)  # poll wins over a read-register command...
    assert linux.inb(M_DATA) == 0  # ...and takes a read of the odd port too
    assert linux.inb(M_CMD) == 0x40  # the ISR selection stayed


def test_poll_no_request_reads_zero(linux: Machine) -> None:
    linux.out(M_CMD, POLL)
    assert linux.inb(M_CMD) == 0


# ---------------------------------------------------------------- the CPU and APIC side


class Recorder:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_irq(self, pin: int, level: bool) -> None:
        self.levels.append(level)


def test_intr_line_follows_the_master_output(linux: Machine) -> None:
    lint0 = Recorder()
    linux.pic.intr.connect(lint0, 0)
    linux.pic.set_irq(0, True)
    assert lint0.levels == [True]
    assert linux.pic.acknowledge() == 0x30  # an ExtINT acknowledge through the APIC
    assert lint0.levels == [True, False]


def test_stats_count_acknowledges_per_irq(linux: Machine) -> None:
    for _ in range(3):
        linux.pic.set_irq(0, True)
        linux.pic.acknowledge()
        linux.pic.set_irq(0, False)
        linux.out(M_CMD, EOI)
    linux.pic.set_irq(14, True)
    linux.pic.acknowledge()
    linux.out(M_DATA, 0xFF)
    linux.pic.acknowledge()  # nothing unmasked: spurious
    assert linux.pic.stats() == {"irq0": 3, "irq14": 1, "spurious7": 1}
    assert linux.pic.acknowledged_total == 5


def test_wide_and_out_of_range_accesses(linux: Machine) -> None:
    linux.out(M_DATA, 0x5A)
    linux.pic.set_irq(1, True)
    assert linux.pic.master.read(0, 2) == 0x5A02  # an unsplit word: IRR, then IMR
    assert linux.pic.elcr.read(1, 2) == 0xFF00  # beyond the ELCR: floats high
    linux.pic.master.write(1, 2, 0xFF00)  # the second byte falls off the chip
    assert linux.inb(M_DATA) == 0x00


def test_reset_returns_to_power_on_state(linux: Machine) -> None:
    linux.out(ELCR_PORT + 1, 0x08)
    linux.pic.set_irq(3, True)
    linux.pic.acknowledge()
    linux.pic.reset()
    assert linux.inb(M_DATA) == 0xFF and linux.isr(M_CMD) == 0 and linux.inb(ELCR_PORT + 1) == 0
    assert not linux.pic.interrupt_pending()
