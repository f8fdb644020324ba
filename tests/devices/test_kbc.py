"""The i8042 keyboard controller, its keyboard and port 0x92, at the register level, on the bus."""

from __future__ import annotations

import pytest

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.kbc import (
    A20Gate,
    KeyboardController,
    SystemControlPortA,
    SystemReset,
)

OBF, SYS, A2, INH, AUXB, TIMEOUT = 0x01, 0x04, 0x08, 0x10, 0x20, 0x40


class Edges:
    """An interrupt controller input counting rising edges."""

    def __init__(self) -> None:
        self.rises = 0

    def set_irq(self, pin: int, level: bool) -> None:
        self.rises += level


class Machine:
    def __init__(self) -> None:
        self.bus = Bus()
        self.irq1, self.irq12 = IrqLine("irq1"), IrqLine("irq12")
        self.edges1, self.edges12 = Edges(), Edges()
        self.irq1.connect(self.edges1, 1)
        self.irq12.connect(self.edges12, 12)
        self.a20 = A20Gate()
        self.kbc = KeyboardController(self.irq1, self.irq12, self.a20)
        self.port92 = SystemControlPortA(self.a20)
        self.bus.map_ports("kbc-data", 0x60, 1, self.kbc.data_port)
        self.bus.map_ports("kbc-command", 0x64, 1, self.kbc.command_port)
        self.bus.map_ports("port92", 0x92, 1, self.port92)

    def status(self) -> int:
        return self.bus.io_in(0x64, 1)

    def command(self, byte: int, data: int | None = None) -> None:
        self.bus.io_out(0x64, 1, byte)
        if data is not None:
            self.bus.io_out(0x60, 1, data)

    def drain(self) -> list[int]:
        """Read every byte waiting, as a polling driver does."""
        out = []
        while self.status() & OBF:
            out.append(self.bus.io_in(0x60, 1))
        return out

    def ask(self, byte: int) -> list[int]:
        self.command(byte)
        return self.drain()


@pytest.fixture
def m() -> Machine:
    return Machine()


def test_power_on_state_is_what_a_bios_leaves(m: Machine) -> None:
    assert m.status() == SYS | INH
    assert m.ask(0x20) == [0x65]  # XLATE, aux disabled, SYS, keyboard interrupt
    assert m.a20.enabled and m.kbc.output_port & 0x03 == 0x03


def test_self_test_and_interface_tests(m: Machine) -> None:
    assert m.ask(0xAA) == [0x55]
    assert m.ask(0xAB) == [0x00]
    assert m.ask(0xA9) == [0x00]
    assert m.ask(0xA4) == [0xF1]  # no password installed
    assert m.status() & A2  # the last write was a command


def test_command_byte_write_and_read_back(m: Machine) -> None:
    m.command(0x60, 0x30)  # both interfaces off, no interrupts, SYS clear
    assert m.status() & (SYS | A2) == 0  # SYS follows the command byte; A2: the data byte came last
    assert m.ask(0x20) == [0x30]
    m.command(0xAE)
    m.command(0xA8)
    assert m.ask(0x20) == [0x00]
    m.command(0xAD)
    m.command(0xA7)
    assert m.ask(0x20) == [0x30]
    m.command(0x60, 0xFF)
    assert m.ask(0x20) == [0x7F]  # bit 7 is reserved
    m.command(0x65, 0x42)  # controller RAM byte 5
    assert m.ask(0x25) == [0x42]


def test_replies_raise_irq1_only_when_the_command_byte_allows(m: Machine) -> None:
    m.command(0x60, 0x64)  # keyboard interrupt off
    m.command(0xAA)
    assert not m.irq1.level and m.edges1.rises == 0
    assert m.drain() == [0x55]
    m.command(0x60, 0x65)
    m.command(0xAA)
    assert m.irq1.level and m.edges1.rises == 1 and not m.irq12.level
    m.bus.io_in(0x60, 1)
    assert not m.irq1.level
    assert m.bus.io_in(0x60, 1) == 0x55  # an empty buffer reads its last byte again


def test_keyboard_reset_identify_leds_echo(m: Machine) -> None:
    m.command(0x60, 0x25)  # translation off
    m.bus.io_out(0x60, 1, 0xFF)
    assert m.drain() == [0xFA, 0xAA]
    m.bus.io_out(0x60, 1, 0xF2)
    assert m.drain() == [0xFA, 0xAB, 0x83]
    m.bus.io_out(0x60, 1, 0xED)
    assert m.drain() == [0xFA]
    m.bus.io_out(0x60, 1, 0x05)
    assert m.drain() == [0xFA] and m.kbc.keyboard.leds == 0x05
    m.bus.io_out(0x60, 1, 0xEE)
    assert m.drain() == [0xEE]
    m.bus.io_out(0x60, 1, 0xF0)
    m.bus.io_out(0x60, 1, 0x00)
    assert m.drain() == [0xFA, 0xFA, 0x02]  # scan code set 2
    m.bus.io_out(0x60, 1, 0x42)  # not a command
    assert m.drain() == [0xFE]


def test_translation_turns_the_identify_reply_into_set_1(m: Machine) -> None:
    m.bus.io_out(0x60, 1, 0xF2)
    assert m.drain() == [0xFA, 0xAB, 0x41]


def test_each_keyboard_byte_is_its_own_interrupt(m: Machine) -> None:
    m.bus.io_out(0x60, 1, 0xFF)
    assert m.edges1.rises == 1
    assert m.bus.io_in(0x60, 1) == 0xFA
    assert m.irq1.level and m.edges1.rises == 2  # the BAT byte follows at once: a new edge
    assert m.bus.io_in(0x60, 1) == 0xAA
    assert not m.irq1.level and m.status() & OBF == 0


def test_disabled_keyboard_holds_its_bytes(m: Machine) -> None:
    m.command(0xD2, 0x1C)  # a byte as if from the keyboard
    m.command(0xAD)
    assert m.drain() == [0x1C]  # already in the buffer
    m.command(0xD2, 0x32)
    assert m.status() & OBF == 0
    m.command(0xAE)
    assert m.drain() == [0x32]


def test_aux_loopback_and_absent_mouse(m: Machine) -> None:
    m.command(0x60, 0x47)  # aux enabled, both interrupts on
    m.command(0xD3, 0x5A)
    assert m.status() & (OBF | AUXB) == OBF | AUXB and m.irq12.level and not m.irq1.level
    assert m.drain() == [0x5A]
    m.command(0xD4, 0xF2)  # identify the mouse: nobody answers
    assert m.status() & (OBF | AUXB | TIMEOUT) == OBF | AUXB | TIMEOUT
    assert m.drain() == [0xFE] and m.status() & TIMEOUT == 0
    assert m.edges12.rises == 2


def test_a20_through_the_output_port(m: Machine) -> None:
    heard: list[bool] = []
    m.a20.on_change = heard.append
    m.command(0xD1, 0xDD)  # A20 off
    assert not m.a20.enabled
    assert m.ask(0xD0)[0] & 0x03 == 0x01
    m.command(0xD1, 0xDF)
    assert m.a20.enabled and m.ask(0xD0)[0] & 0x03 == 0x03
    m.command(0xDD)
    assert not m.a20.enabled
    m.command(0xDF)
    assert m.a20.enabled and heard == [False, True, False, True]


def test_output_port_read_shows_the_buffer_bits(m: Machine) -> None:
    m.command(0xD0)
    assert m.bus.io_in(0x60, 1) & 0x30 == 0  # read after leaving the buffer: nothing was waiting
    m.command(0xD2, 0x11)
    m.command(0xD0)  # read while the keyboard byte waits (IRQ 1 up), queued behind it
    assert m.drain() == [0x11, 0xCF | 0x10]


def test_a20_through_port_92_is_ored_with_the_controller(m: Machine) -> None:
    assert m.bus.io_in(0x92, 1) == 0x00
    m.command(0xD1, 0xDD)
    assert not m.a20.enabled
    m.bus.io_out(0x92, 1, 0x02)
    assert m.a20.enabled and m.bus.io_in(0x92, 1) == 0x02
    m.command(0xD1, 0xDF)
    m.bus.io_out(0x92, 1, 0x00)
    assert m.a20.enabled  # still on through the controller
    m.command(0xD1, 0xDD)
    assert not m.a20.enabled


@pytest.mark.parametrize("command", [0xFE, 0xF0, 0xFC])
def test_reset_through_the_controller_stops_the_run(m: Machine, command: int) -> None:
    with pytest.raises(SystemReset) as stop:
        m.command(command)
    assert isinstance(stop.value, VMStop) and stop.value.kind == "reset"
    assert f"{command:#04x}" in str(stop.value) and "reset" in str(stop.value)


def test_pulsing_other_lines_does_not_reset(m: Machine) -> None:
    m.command(0xFF)
    m.command(0xF1)
    assert m.status() & OBF == 0


def test_reset_through_the_output_port(m: Machine) -> None:
    with pytest.raises(SystemReset, match="output port"):
        m.command(0xD1, 0xDE)


def test_port_92_resets_on_a_rising_bit_0(m: Machine) -> None:
    m.bus.io_out(0x92, 1, 0x02)
    with pytest.raises(SystemReset, match="0x92"):
        m.bus.io_out(0x92, 1, 0x03)
    m.bus.io_out(0x92, 1, 0x03)  # already 1: no new edge
    assert m.bus.io_in(0x92, 1) == 0x03


def test_a_new_command_drops_one_waiting_for_data(m: Machine) -> None:
    m.command(0x60)
    m.command(0xAA)
    assert m.drain() == [0x55]
    m.bus.io_out(0x60, 1, 0xF4)  # goes to the keyboard, not into the command byte
    assert m.drain() == [0xFA]
    assert m.ask(0x20) == [0x65]
