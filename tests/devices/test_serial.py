"""The 16550A UART at register level, the console sink, and the host input side (pipe and pty)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import pty
import signal
import termios
from collections.abc import Iterator

import pytest

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.clock import NS_PER_INSN, VirtualClock
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.serial import (
    FCR,
    IER,
    IIR,
    LCR,
    LSR,
    MCR,
    MSR,
    RBR,
    SCR,
    THR,
    ConsoleSink,
    Serial16550,
)
from ring1.runtime.devices.serial_input import IDLE_POLL_NS, SerialInput

# IIR values with the FIFOs on (bits 6-7 set).
NONE, RLS, RDA, TIMEOUT, THRE, MODEM = 0xC1, 0xC6, 0xC4, 0xCC, 0xC2, 0xC0


class Pin:
    """One controller input: remembers every level it was driven to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_irq(self, pin: int, level: bool) -> None:
        self.levels.append(level)

    @property
    def level(self) -> bool:
        return bool(self.levels) and self.levels[-1]


class Rig:
    """A UART on its own, with its sink, its IRQ line (wired to a recording pin) and a clock."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.clock = VirtualClock()
        self.pin = Pin()
        line = IrqLine("IRQ4")
        line.connect(self.pin, 4)
        self.uart = Serial16550(self.out.extend, line, self.clock)

    def rd(self, offset: int) -> int:
        return self.uart.read(offset, 1)

    def wr(self, offset: int, value: int) -> None:
        self.uart.write(offset, 1, value)

    def advance_ns(self, ns: int) -> None:
        self.clock.advance(-(-ns // NS_PER_INSN))

    def program(self, divisor: int = 1, fcr: int | None = 0x07, ier: int = 0, mcr: int = 0x0B) -> None:
        """What a driver does: divisor, 8N1, FIFOs, modem lines with OUT2, interrupts."""
        self.wr(LCR, 0x80)
        self.wr(THR, divisor & 0xFF)
        self.wr(IER, divisor >> 8)
        self.wr(LCR, 0x03)
        if fcr is not None:
            self.wr(FCR, fcr)
        self.wr(MCR, mcr)
        self.wr(IER, ier)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# ---------------------------------------------------------------- registers


def test_power_on_state(rig: Rig) -> None:
    assert rig.rd(LSR) == 0x60  # THRE and TEMT, nothing received
    assert rig.rd(IIR) == 0x01  # no interrupt, no FIFOs
    assert rig.rd(IER) == 0 and rig.rd(MCR) == 0 and rig.rd(LCR) == 0x03
    assert rig.rd(MSR) == 0xB0  # a ready terminal at the far end: CTS, DSR, DCD; no deltas
    assert rig.rd(RBR) == 0
    rig.wr(LCR, 0x83)
    assert (rig.rd(THR), rig.rd(IER)) == (0x0C, 0x00)  # 9600 baud
    assert not rig.pin.levels


def test_divisor_latch_and_scratch(rig: Rig) -> None:
    rig.wr(IER, 0x05)
    rig.wr(LCR, 0x80)
    rig.wr(THR, 0x34)  # DLL, not a transmission
    rig.wr(IER, 0x12)  # DLM, not IER
    assert (rig.rd(THR), rig.rd(IER)) == (0x34, 0x12) and rig.out == b""
    assert rig.uart.divisor == 0x1234 and rig.uart.baud == pytest.approx(115200 / 0x1234)
    rig.wr(LCR, 0x03)
    assert rig.rd(IER) == 0x05 and rig.rd(LCR) == 0x03
    rig.wr(SCR, 0xA5)
    assert rig.rd(SCR) == 0xA5
    rig.wr(IER, 0xFF)
    rig.wr(MCR, 0xFF)
    assert rig.rd(IER) == 0x0F and rig.rd(MCR) == 0x1F  # reserved bits read 0 (no 16750 sleep/UUE bits)


def test_character_time_follows_divisor_and_lcr(rig: Rig) -> None:
    rig.program(divisor=1)
    assert rig.uart.char_time_ns() == 86806  # 10 bits at 115200 baud, rounded up
    rig.wr(LCR, 0x80)
    rig.wr(THR, 12)
    rig.wr(LCR, 0x0F)  # 8 data bits, parity, 2 stop bits: 12 bits at 9600
    assert rig.uart.char_time_ns() == 1_250_000
    rig.wr(LCR, 0x04)  # 5 data bits and 1.5 stop bits: 7.5 bits
    assert rig.uart.char_time_ns() == 781_250


def test_transmit_goes_to_the_sink_at_once_with_the_word_length(rig: Rig) -> None:
    for ch in b"hi\n":
        rig.wr(THR, ch)
        assert rig.rd(LSR) & 0x60 == 0x60  # the instant transmitter is empty again
    assert rig.out == b"hi\n" and rig.uart.transmitted == 3
    rig.wr(LCR, 0x00)  # 5-bit words: only the low five bits go on the line
    rig.wr(THR, ord("A"))
    assert rig.out[-1] == ord("A") & 0x1F


# ---------------------------------------------------------------- FIFOs and overrun


def test_fifo_holds_sixteen_and_an_overrun_loses_the_new_byte(rig: Rig) -> None:
    rig.program()
    assert rig.rd(IIR) == NONE
    assert rig.uart.rx_room() == 16
    assert rig.uart.feed(bytes(range(0x40, 0x54))) == 16  # 20 bytes: four overrun
    assert rig.uart.rx_room() == 0 and rig.uart.overruns == 4
    assert rig.rd(LSR) == 0x63  # DR, OE, THRE, TEMT
    assert rig.rd(LSR) == 0x61  # reading LSR cleared OE
    assert bytes(rig.rd(RBR) for _ in range(16)) == bytes(range(0x40, 0x50))  # the first sixteen
    assert rig.rd(LSR) == 0x60


def test_without_fifos_a_new_byte_overwrites_the_unread_one(rig: Rig) -> None:
    rig.program(fcr=None)
    assert rig.uart.rx_room() == 1
    assert rig.uart.feed(b"ab") == 2
    assert rig.rd(LSR) == 0x63 and rig.rd(RBR) == ord("b")
    assert rig.rd(LSR) == 0x60
    assert rig.rd(RBR) == ord("b")  # the holding register keeps its last character


@pytest.mark.parametrize(("fcr", "level"), [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_receive_interrupt_at_the_trigger_level(rig: Rig, fcr: int, level: int) -> None:
    rig.program(fcr=fcr, ier=0x01)
    rig.uart.feed(b"x" * (level - 1))
    assert rig.rd(IIR) == NONE and not rig.pin.level
    rig.uart.feed(b"y")
    assert rig.rd(IIR) == RDA and rig.pin.level
    rig.rd(RBR)  # one below the trigger level again
    assert rig.rd(IIR) == NONE and not rig.pin.level


def test_fcr_bits_need_bit0_and_switching_mode_empties_the_fifo(rig: Rig) -> None:
    rig.program(fcr=0x01)
    rig.uart.feed(b"abc")
    rig.wr(FCR, 0xC0)  # bit 0 clear: FIFOs off (and emptied); the trigger bits are not programmed
    assert rig.rd(IIR) == 0x01 and rig.rd(LSR) & 0x01 == 0
    rig.wr(FCR, 0x01)
    assert rig.uart.rx_trigger == 1
    rig.uart.feed(b"abc")
    rig.wr(FCR, 0x01)  # rewriting the enable alone keeps the data
    assert rig.rd(LSR) & 0x01
    rig.wr(FCR, 0x03)  # receive FIFO reset
    assert rig.rd(LSR) == 0x60 and rig.rd(IIR) == NONE


def test_linux_probe_sees_a_16550a_without_16750_or_efr(rig: Rig) -> None:
    rig.wr(FCR, 0x21)  # FIFO enable and the 16750's 64-byte bit
    assert rig.rd(IIR) >> 5 == 6  # bits 6-7 set, bit 5 clear: no 64-byte FIFO
    rig.wr(LCR, 0xBF)
    assert rig.rd(IIR) != 0  # no EFR reading 0 at offset 2 with LCR 0xBF
    rig.wr(LCR, 0x03)


# ---------------------------------------------------------------- character timeout


def test_character_timeout_after_four_character_times(rig: Rig) -> None:
    rig.program(fcr=0xC7, ier=0x01)  # trigger level 14
    char = rig.uart.char_time_ns()
    rig.uart.feed(b"abc")
    rig.advance_ns(4 * char - 100)
    assert rig.rd(IIR) == NONE and not rig.pin.level
    rig.advance_ns(200)
    assert rig.rd(IIR) == TIMEOUT and rig.pin.level
    assert rig.rd(RBR) == ord("a")  # reading one character clears the indication...
    assert rig.rd(IIR) == NONE and not rig.pin.level
    rig.advance_ns(4 * char + 100)  # ...and the timer starts again for what is left
    assert rig.rd(IIR) == TIMEOUT
    rig.rd(RBR)
    rig.rd(RBR)
    rig.advance_ns(10 * char)
    assert rig.rd(IIR) == NONE and not rig.clock.next_deadline()


def test_a_new_character_restarts_the_timeout(rig: Rig) -> None:
    rig.program(fcr=0xC7, ier=0x01)
    char = rig.uart.char_time_ns()
    rig.uart.feed(b"a")
    rig.advance_ns(3 * char)
    rig.uart.feed(b"b")
    rig.advance_ns(3 * char)
    assert rig.rd(IIR) == NONE
    rig.advance_ns(char + 100)
    assert rig.rd(IIR) == TIMEOUT


def test_no_timeout_indication_without_fifos(rig: Rig) -> None:
    rig.program(fcr=None, ier=0x01)
    rig.uart.feed(b"a")
    assert rig.rd(IIR) == 0x04  # data available at once, no FIFO bits
    rig.advance_ns(10 * rig.uart.char_time_ns())
    assert rig.rd(IIR) == 0x04 and rig.clock.next_deadline() is None


# ---------------------------------------------------------------- interrupts


def test_iir_priorities(rig: Rig) -> None:
    rig.program(fcr=0x07, ier=0x0F)  # every source enabled, trigger level 1
    assert rig.rd(IIR) == THRE  # enabling ETBEI with THR empty; reading IIR acknowledges it
    rig.uart.feed(bytes(17))  # data and an overrun
    rig.wr(THR, ord("!"))  # THRE again
    rig.uart.set_modem_inputs(cts=False, dsr=True, ri=False, dcd=True)  # DCTS
    assert rig.rd(IIR) == RLS
    assert rig.rd(IIR) == RLS  # reading IIR does not clear a line status interrupt
    assert rig.rd(LSR) & 0x02
    assert rig.rd(IIR) == RDA  # reading IIR did not acknowledge THRE while it was hidden
    for _ in range(16):
        rig.rd(RBR)
    assert rig.rd(IIR) == THRE and rig.pin.level
    assert rig.rd(IIR) == MODEM
    assert rig.rd(MSR) == 0xA1  # DSR and DCD, delta CTS
    assert rig.rd(IIR) == NONE and not rig.pin.level


def test_thre_interrupt(rig: Rig) -> None:
    rig.program(ier=0x00)
    assert rig.rd(IIR) == NONE
    rig.wr(IER, 0x02)  # rising ETBEI with an empty THR
    assert rig.pin.level and rig.rd(IIR) == THRE
    assert rig.rd(IIR) == NONE and not rig.pin.level  # acknowledged by that read
    rig.wr(IER, 0x02)  # no new edge on ETBEI: nothing
    assert rig.rd(IIR) == NONE
    rig.wr(THR, ord("a"))  # THR empties (at once): THRE again
    assert rig.pin.level and rig.rd(IIR) == THRE
    rig.wr(THR, ord("b"))
    rig.wr(IER, 0x00)  # disabling drops it
    assert not rig.pin.level and rig.rd(IIR) == NONE
    rig.wr(IER, 0x02)
    assert rig.rd(IIR) == THRE and rig.out == b"ab"


def test_line_status_interrupt_clears_on_lsr_read(rig: Rig) -> None:
    rig.program(fcr=None, ier=0x04)
    rig.uart.feed(b"ab")  # overrun in the holding register
    assert rig.rd(IIR) == 0x06 and rig.pin.level
    rig.rd(LSR)
    assert rig.rd(IIR) == 0x01 and not rig.pin.level


def test_out2_gates_the_irq_line(rig: Rig) -> None:
    rig.program(mcr=0x03, ier=0x02)  # THRE pending, but OUT2 clear
    assert rig.uart.interrupt_output and not rig.pin.levels
    rig.wr(MCR, 0x0B)
    assert rig.pin.levels == [True]
    rig.wr(MCR, 0x1B)  # loopback forces the OUT2 pin inactive: the gate closes
    assert rig.pin.levels == [True, False] and rig.uart.interrupt_output
    rig.wr(MCR, 0x0B)
    assert rig.pin.levels == [True, False, True]
    rig.rd(IIR)  # acknowledged: INTR and the line fall
    assert rig.pin.levels[-1] is False and not rig.uart.interrupt_output


# ---------------------------------------------------------------- modem lines, loopback, break


def test_modem_status_deltas_and_interrupt(rig: Rig) -> None:
    rig.program(ier=0x08)
    assert rig.rd(IIR) == NONE
    rig.uart.set_modem_inputs(cts=True, dsr=True, ri=True, dcd=True)
    assert rig.rd(IIR) == NONE and not rig.pin.level  # RI rising is no TERI: no delta at all
    assert rig.rd(MSR) == 0xF0
    rig.uart.set_modem_inputs(cts=False, dsr=True, ri=False, dcd=True)
    assert rig.rd(IIR) == MODEM and rig.pin.level
    assert rig.rd(MSR) == 0xA5  # DCTS, and TERI: the ring ended
    assert rig.rd(IIR) == NONE and not rig.pin.level
    rig.uart.set_modem_inputs(cts=False, dsr=False, ri=False, dcd=False)
    assert rig.rd(MSR) == 0x0A  # DDSR, DDCD
    assert rig.rd(MSR) == 0x00  # deltas cleared by the read


def test_loopback(rig: Rig) -> None:
    rig.program(ier=0x01, mcr=0x0B)
    rig.wr(MCR, 0x10)  # loopback, every output off: CTS, DSR, DCD fall
    assert rig.rd(MSR) == 0x0B
    rig.wr(MCR, 0x1F)  # DTR, RTS, OUT1, OUT2 -> DSR, CTS, RI, DCD
    assert rig.rd(MSR) == 0xFB
    rig.wr(MCR, 0x1B)  # OUT1 off: RI's trailing edge
    assert rig.rd(MSR) == 0xB4
    assert rig.uart.rx_room() == 0 and rig.uart.feed(b"lost") == 0  # SIN is disconnected
    rig.wr(THR, ord("x"))
    assert rig.out == b"" and rig.rd(LSR) == 0x61 and rig.rd(IIR) == RDA
    assert not rig.pin.level  # the interrupt is pending but does not leave the board
    assert rig.rd(RBR) == ord("x")
    rig.wr(LCR, 0x43)  # a break goes round the loop
    assert rig.rd(LSR) == 0xF1 and rig.rd(RBR) == 0  # BI, and bit 7: the FIFOs are on
    rig.wr(LCR, 0x03)
    rig.wr(MCR, 0x0B)  # back to the line: the terminal's CTS, DSR, DCD, unchanged
    assert rig.rd(MSR) == 0xB0 and rig.uart.feed(b"k") == 1 and rig.pin.level


def test_break_from_the_line_and_fifo_error_bit(rig: Rig) -> None:
    rig.program(fcr=0x07, ier=0x04)
    rig.uart.feed(b"a")
    rig.uart.receive_break()
    assert rig.rd(IIR) == NONE  # the break is not at the top of the FIFO yet
    assert rig.rd(LSR) == 0xE1  # but bit 7 says an error waits in the FIFO
    assert rig.rd(RBR) == ord("a")
    assert rig.rd(IIR) == RLS and rig.pin.level
    assert rig.rd(LSR) == 0xF1  # BI with its zero character at the top
    assert rig.rd(RBR) == 0
    assert rig.rd(LSR) == 0x60 and rig.rd(IIR) == NONE


def test_platform_constructor_still_works() -> None:
    out = bytearray()
    uart = Serial16550(out.extend)
    uart.write(THR, 1, ord("A"))
    uart.write(IER, 1, 0x02)
    assert out == b"A" and uart.read(IIR, 1) == 0x02 and not uart.irq.level  # no OUT2


# ---------------------------------------------------------------- the console sink


def test_console_sink_flushes_lines_and_stops_when_the_reader_goes() -> None:
    buffer = io.BytesIO()
    sink = ConsoleSink(buffer)
    sink(b"ab")
    assert buffer.getvalue() == b""
    sink(b"c\n")
    assert buffer.getvalue() == b"abc\n"
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb", buffering=0) as stream:
        sink = ConsoleSink(stream)
        with pytest.raises(VMStop) as stop:
            sink(b"x\n")
        assert stop.value.kind == "console-closed" and sink.closed
        sink(b"later\n")  # dropped, no second stop


# ---------------------------------------------------------------- the host input side


def drain(rig: Rig, steps: int, step_insns: int = 1000) -> list[tuple[int, int]]:
    """A polling guest: every step, read whatever the UART holds, noting the virtual time."""
    seen = []
    for _ in range(steps):
        rig.clock.advance(step_insns)
        while rig.rd(LSR) & 0x01:
            seen.append((rig.clock.now(), rig.rd(RBR)))
    return seen


def piped(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


def test_pipe_input_is_delivered_in_order_one_character_time_apart() -> None:
    runs = []
    for _ in range(2):
        rig = Rig()
        rig.program(divisor=1)
        fd = piped(b"hello, guest")
        source = SerialInput(fd, rig.uart, rig.clock, owns_source=True)
        assert not source.is_terminal and not source.escapes
        source.start()
        seen = drain(rig, 2000, step_insns=100)
        assert bytes(b for _, b in seen) == b"hello, guest" and source.eof
        gaps = {b - a for (a, _), (b, _) in itertools.pairwise(seen)}
        assert min(gaps) >= rig.uart.char_time_ns() - 100 * NS_PER_INSN  # never faster than the line
        assert not source.timer.armed  # end of file: polling stopped
        source.close()
        runs.append(seen)
    assert runs[0] == runs[1]  # same guest-visible sequence, same virtual times


def test_input_waits_for_room_and_never_overruns() -> None:
    rig = Rig()
    rig.program(fcr=None)  # a single holding register
    source = SerialInput(piped(b"abc"), rig.uart, rig.clock, owns_source=True)
    source.start()
    rig.advance_ns(50 * rig.uart.char_time_ns())
    assert list(rig.uart.rx) == [(ord("a"), 0)] and rig.uart.overruns == 0
    assert rig.rd(RBR) == ord("a")
    rig.advance_ns(IDLE_POLL_NS + rig.uart.char_time_ns())  # at most one backed-off poll away
    assert rig.rd(RBR) == ord("b") and rig.rd(LSR) & 0x03 == 0
    rig.advance_ns(IDLE_POLL_NS + rig.uart.char_time_ns())
    assert rig.rd(RBR) == ord("c") and rig.uart.overruns == 0
    source.close()


def test_a_pipe_carries_escape_bytes_as_data() -> None:
    rig = Rig()
    rig.program()
    source = SerialInput(piped(b"\x01x\x01"), rig.uart, rig.clock, owns_source=True)
    source.start()
    assert bytes(b for _, b in drain(rig, 100)) == b"\x01x\x01"
    source.close()


def test_input_from_a_file(tmp_path) -> None:
    path = tmp_path / "typed"
    path.write_bytes(b"ls\r")
    rig = Rig()
    rig.program()
    source = SerialInput.open(str(path), rig.uart, rig.clock)
    source.start()
    assert bytes(b for _, b in drain(rig, 100)) == b"ls\r" and source.eof
    source.close()
    assert source.source.closed  # type: ignore[union-attr]


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    controller, device = pty.openpty()
    yield controller, device
    for fd in (controller, device):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_terminal_raw_mode_escape_and_restore(terminal: tuple[int, int]) -> None:
    controller, device = terminal
    before = termios.tcgetattr(device)
    assert before[3] & termios.ECHO and before[3] & termios.ICANON
    rig = Rig()
    rig.program()
    source = SerialInput(device, rig.uart, rig.clock)
    assert source.is_terminal and source.escapes
    source.start()
    raw = termios.tcgetattr(device)
    assert not raw[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
    assert not raw[0] & (termios.ICRNL | termios.IXON) and raw[1] & termios.OPOST
    os.write(controller, b"ab")
    assert bytes(b for _, b in drain(rig, 100)) == b"ab"
    os.write(controller, b"\x01\x01c\x01x never")
    with pytest.raises(VMStop) as stop:
        drain(rig, 100)
    assert stop.value.kind == "user-quit" and source.escape is stop.value
    assert termios.tcgetattr(device) == before  # restored before the stop is reported
    assert source.closed and not source.timer.armed


def test_escape_is_seen_when_the_guest_never_reads(terminal: tuple[int, int]) -> None:
    controller, device = terminal
    rig = Rig()
    rig.program()
    source = SerialInput(device, rig.uart, rig.clock)
    source.start()
    os.write(controller, bytes(40))
    rig.advance_ns(100 * rig.uart.char_time_ns())
    assert rig.uart.rx_room() == 0 and rig.uart.overruns == 0  # the FIFO is full, the rest waits
    os.write(controller, b"\x01x")
    with pytest.raises(VMStop, match="escape"):
        rig.advance_ns(2 * IDLE_POLL_NS)
    assert source.closed


def test_terminal_escape_keys_deliver_in_order(terminal: tuple[int, int]) -> None:
    controller, device = terminal
    rig = Rig()
    rig.program()
    notices = io.StringIO()
    with SerialInput(device, rig.uart, rig.clock, notices=notices) as source:
        os.write(controller, b"a\x01\x01b\x01bc\x01hd\x01zq")
        seen = []
        for _ in range(300):
            rig.clock.advance(1000)
            while (lsr := rig.rd(LSR)) & 0x01:  # its BI belongs to the character at the top
                seen.append((rig.rd(RBR), bool(lsr & 0x10)))
        assert seen == [
            (ord("a"), False),
            (0x01, False),  # Ctrl-A Ctrl-A: one Ctrl-A
            (ord("b"), False),
            (0x00, True),  # Ctrl-A b: a break
            (ord("c"), False),
            (ord("d"), False),  # Ctrl-A h printed the help; Ctrl-A z was swallowed
            (ord("q"), False),
        ]
        assert "C-a x" in notices.getvalue() and not source.eof
    assert source.closed


def test_terminal_restored_on_exception_and_on_signal(terminal: tuple[int, int]) -> None:
    _controller, device = terminal
    before = termios.tcgetattr(device)
    rig = Rig()
    with pytest.raises(RuntimeError), SerialInput(device, rig.uart, rig.clock):
        assert termios.tcgetattr(device) != before
        raise RuntimeError("the engine failed")
    assert termios.tcgetattr(device) == before

    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        source = SerialInput(device, rig.uart, rig.clock)
        source.start()
        assert termios.tcgetattr(device) != before
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]  # the earlier handler still ran...
        assert termios.tcgetattr(device) == before  # ...with the terminal given back first
        assert signal.getsignal(signal.SIGTERM) is handler
        source.close()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_terminal_hang_up_is_end_of_file(terminal: tuple[int, int]) -> None:
    controller, device = terminal
    rig = Rig()
    rig.program()
    source = SerialInput(device, rig.uart, rig.clock)
    source.start()
    os.write(controller, b"z")
    drain(rig, 50)
    os.close(controller)  # the terminal's other side goes away: reads fail with EIO
    drain(rig, 2000)
    assert source.eof and not source.timer.armed
    source.close()
