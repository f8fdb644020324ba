"""The i8042 keyboard controller (ports 0x60/0x64), its keyboard, and port 0x92 (system control
port A): what a kernel does with them when nobody types.

The controller (as Intel's 8042 with the IBM PC/AT and PS/2 firmware):
- Status (read 0x64): OBF, SYS (the system flag: the command byte's bit 2, set by a self-test),
  A2 (the last write was a command), INH (1: the keyboard lock is open), AUXB (the byte waiting
  is the aux port's), TIMEOUT. IBF is never set: commands are taken at once.
- Commands (write 0x64): 0x20-0x3F read RAM (0x20: the command byte), 0x60-0x7F write it (the
  next byte at 0x60), 0xA4 password test (none installed), 0xA7/0xA8 aux off/on, 0xA9/0xAB the
  interface tests (0x00: no error), 0xAA self-test (0x55), 0xAD/0xAE keyboard off/on, 0xC0
  read input port, 0xD0/0xD1 read/write the output port (bit 0 the reset line, active low;
  bit 1 the A20 gate), 0xD2/0xD3 put a byte in the output buffer as the keyboard's / the aux
  device's (the loopback drivers probe with), 0xD4 send to the aux device, 0xDD/0xDF A20 off/on,
  0xF0-0xFF pulse output port bits 0-3 low for each 0 in the command's low nibble: 0xFE (or
  any even one) pulses the reset line. Unknown commands are ignored.
- The output buffer holds one byte; the controller's replies come first, then the keyboard's,
  then the aux port's, each only while its interface is enabled (a disabled keyboard keeps its
  bytes until enabled). OBF with the command byte's interrupt enable drives IRQ 1 (keyboard
  bytes) or IRQ 12 (aux bytes), as the output port's bits 4 and 5 do. Reading 0x60 with the
  buffer empty returns the last byte again.
- With the command byte's XLATE bit the controller translates the keyboard's scan code set 2
  into set 1: the keyboard here only ever sends replies, whose translation is the table's
  entries for 0x01-0x03 and 0x83 (the identify reply AB 83 arrives as AB 41).

The keyboard (a byte written to 0x60 with no command pending goes to it, and re-enables the
keyboard interface as controllers do): ACK 0xFA to what it knows, 0xFF reset (FA then the
self-test's AA), 0xF2 identify (FA AB 83), 0xED set LEDs, 0xEE echo (EE), 0xF0 scan code set
(get and set), 0xF3 typematic rate, 0xF4/0xF5/0xF6 enable/disable/defaults, 0xF7-0xFD (set 3
key types) acknowledged, 0xFE resend, anything else RESEND (0xFE). No key is ever pressed.

The aux port has nothing plugged in: a byte sent with 0xD4 times out (0xFE in the buffer with
AUXB and TIMEOUT, as PS/2 controllers report it); the interface test and loopback work.

Port 0x92 (a separate device, as on the chipset): bit 1 the fast A20 gate, bit 0 the fast
reset (a 0 to 1 write resets), bits 3, 6, 7 kept. The A20 line is the OR of the controller's
output port bit 1 and port 0x92 bit 1 (`A20Gate`, as Intel chipsets combine A20GATE and
ALT_A20); what masking the memory system does with it is the platform's business.

A reset (the controller's reset line or port 0x92) raises SystemReset, a VMStop of kind "reset".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.irq import IrqLine

# Status register (read 0x64).
STATUS_OBF = 0x01
STATUS_IBF = 0x02
STATUS_SYS = 0x04
STATUS_A2 = 0x08  # the last write went to 0x64 (a command)
STATUS_INH = 0x10  # 1: the keyboard is not inhibited by the lock
STATUS_AUXB = 0x20
STATUS_TIMEOUT = 0x40
STATUS_PARITY = 0x80

# Command byte (controller RAM byte 0).
CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_XLATE = 0x40
BIOS_COMMAND_BYTE = CTR_XLATE | CTR_AUX_DISABLE | CTR_SYS | CTR_KBD_INT  # 0x65, as a PC BIOS leaves it

# Output port.
OUT_RESET = 0x01  # the CPU reset line, active low
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10  # IRQ 1
OUT_AUX_OBF = 0x20  # IRQ 12
OUT_IDLE_LINES = 0xCC  # the keyboard and aux clock and data lines, idle high
INPUT_PORT = 0xA0  # keyboard not inhibited (bit 7), no manufacturing jumper (bit 5)

# Controller commands.
CMD_READ_RAM, CMD_WRITE_RAM = 0x20, 0x60
CMD_PASSWORD_TEST = 0xA4
CMD_AUX_DISABLE, CMD_AUX_ENABLE, CMD_AUX_TEST = 0xA7, 0xA8, 0xA9
CMD_SELF_TEST, CMD_KBD_TEST, CMD_KBD_DISABLE, CMD_KBD_ENABLE = 0xAA, 0xAB, 0xAD, 0xAE
CMD_READ_INPUT = 0xC0
CMD_READ_OUTPUT, CMD_WRITE_OUTPUT = 0xD0, 0xD1
CMD_WRITE_KBD_BUFFER, CMD_WRITE_AUX_BUFFER, CMD_WRITE_AUX = 0xD2, 0xD3, 0xD4
CMD_A20_OFF, CMD_A20_ON = 0xDD, 0xDF
CMD_PULSE = 0xF0  # 0xF0-0xFF
SELF_TEST_PASSED = 0x55
INTERFACE_OK = 0x00
NO_PASSWORD = 0xF1

# Keyboard replies and commands.
KBD_ACK, KBD_RESEND, KBD_BAT_OK, KBD_ECHO = 0xFA, 0xFE, 0xAA, 0xEE
KBD_ID = (0xAB, 0x83)  # an MF2 keyboard
KBD_SET_LEDS, KBD_SCAN_SET, KBD_IDENTIFY, KBD_TYPEMATIC = 0xED, 0xF0, 0xF2, 0xF3
KBD_ENABLE, KBD_DISABLE, KBD_DEFAULTS, KBD_RESEND_CMD, KBD_RESET = 0xF4, 0xF5, 0xF6, 0xFE, 0xFF
AUX_TIMEOUT_REPLY = 0xFE

# Scan code set 2 -> set 1 for the bytes this keyboard can send; bytes from 0x80 up pass as
# they are (ACK, BAT, echo, resend, the ID's first byte).
XLATE = {0x01: 0x43, 0x02: 0x41, 0x03: 0x3F, 0x83: 0x41}

# Port 0x92.
PORT92_FAST_RESET = 0x01
PORT92_A20 = 0x02


class SystemReset(VMStop):
    """The guest pulsed the CPU's reset line: the run ends (or the platform reboots)."""

    def __init__(self, source: str) -> None:
        super().__init__("reset", f"the guest reset the system ({source})")
        self.source = source


class A20Gate:
    """The A20 line: enabled while the controller's output port bit 1 or port 0x92's bit 1 is
    set. `on_change(enabled)` hears each change of the combined line."""

    def __init__(self, *, controller: bool = True, fast: bool = False) -> None:
        self.controller = controller  # a PC BIOS enables A20 through the controller before booting
        self.fast = fast
        self.on_change: Callable[[bool], None] | None = None
        self.changes = 0

    @property
    def enabled(self) -> bool:
        return self.controller or self.fast

    def set_controller(self, level: bool) -> None:
        self._set(level, self.fast)

    def set_fast(self, level: bool) -> None:
        self._set(self.controller, level)

    def _set(self, controller: bool, fast: bool) -> None:
        before = self.enabled
        self.controller, self.fast = controller, fast
        if self.enabled != before:
            self.changes += 1
            if self.on_change is not None:
                self.on_change(self.enabled)


class Keyboard:
    """An MF2 keyboard that nobody types on: it answers a driver's commands."""

    def __init__(self) -> None:
        self.leds = 0
        self.scan_set = 2
        self.typematic = 0x2B  # 10.9 characters/s after 500 ms
        self.scanning = True
        self._awaiting: int | None = None  # the command whose parameter comes next
        self._last_sent = KBD_BAT_OK

    def receive(self, byte: int) -> list[int]:
        """The bytes the keyboard sends back for `byte` from the host."""
        replies = self._answer(byte)
        if replies and byte != KBD_RESEND_CMD:
            self._last_sent = replies[-1]
        return replies

    def _answer(self, byte: int) -> list[int]:
        awaiting, self._awaiting = self._awaiting, None
        if awaiting is not None and byte < KBD_SET_LEDS:  # a parameter, not a new command
            if awaiting == KBD_SET_LEDS:
                self.leds = byte & 0x07
                return [KBD_ACK]
            if awaiting == KBD_TYPEMATIC:
                self.typematic = byte & 0x7F
                return [KBD_ACK]
            if byte == 0:  # KBD_SCAN_SET: 0 asks for the current set
                return [KBD_ACK, self.scan_set]
            if byte <= 3:
                self.scan_set = byte
                return [KBD_ACK]
            return [KBD_RESEND]
        if byte in (KBD_SET_LEDS, KBD_TYPEMATIC, KBD_SCAN_SET):
            self._awaiting = byte
            return [KBD_ACK]
        if byte == KBD_ECHO:
            return [KBD_ECHO]
        if byte == KBD_IDENTIFY:
            return [KBD_ACK, *KBD_ID]
        if byte == KBD_ENABLE:
            self.scanning = True
            return [KBD_ACK]
        if byte in (KBD_DISABLE, KBD_DEFAULTS):
            self.typematic, self.scan_set = 0x2B, 2
            if byte == KBD_DISABLE:
                self.scanning = False
            return [KBD_ACK]
        if byte == KBD_RESEND_CMD:
            return [self._last_sent]
        if byte == KBD_RESET:
            self.leds, self.typematic, self.scan_set, self.scanning = 0, 0x2B, 2, True
            return [KBD_ACK, KBD_BAT_OK]
        if 0xF7 <= byte <= 0xFD:
            return [KBD_ACK]  # scan code set 3 key types: nothing to type, nothing to change
        return [KBD_RESEND]


class _Port:
    """One of the controller's two ports as a bus device (0x60 and 0x64 are not adjacent)."""

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> int:
        return self._read()

    def write(self, offset: int, size: int, value: int) -> None:
        self._write(value & 0xFF)


class KeyboardController:
    """The i8042. Map `data_port` at 0x60 and `command_port` at 0x64 (one port each)."""

    def __init__(self, irq: IrqLine, aux_irq: IrqLine | None = None, a20: A20Gate | None = None) -> None:
        self.irq = irq  # IRQ 1
        self.aux_irq = aux_irq  # IRQ 12, if the platform wires it
        self.a20 = a20 if a20 is not None else A20Gate()
        self.keyboard = Keyboard()
        self.ram = bytearray(32)
        self.ram[0] = BIOS_COMMAND_BYTE
        self.output_port = OUT_IDLE_LINES | OUT_RESET | (OUT_A20 if self.a20.controller else 0)
        self._system_flag = True  # POST passed
        self._last_was_command = False
        self._pending: int | None = None  # the command whose data byte comes next
        self._buffer: int | None = None  # the output buffer, None when empty
        self._buffer_aux = False
        self._buffer_timeout = False
        self._last_read = 0
        self._replies: deque[int] = deque()  # the controller's own
        self._keyboard_bytes: deque[int] = deque()
        self._aux_bytes: deque[tuple[int, bool]] = deque()  # (byte, timed out)
        self.data_port = _Port(self.read_data, self.write_data)
        self.command_port = _Port(self.read_status, self.write_command)

    @property
    def command_byte(self) -> int:
        return self.ram[0]

    # ------------------------------------------------------------------ port 0x64

    def read_status(self) -> int:
        status = STATUS_INH
        if self._buffer is not None:
            status |= STATUS_OBF
            if self._buffer_aux:
                status |= STATUS_AUXB
            if self._buffer_timeout:
                status |= STATUS_TIMEOUT
        if self._system_flag:
            status |= STATUS_SYS
        if self._last_was_command:
            status |= STATUS_A2
        return status

    def write_command(self, command: int) -> None:
        self._last_was_command = True
        self._pending = None  # a new command drops one still waiting for its data
        ram = self.ram
        if CMD_READ_RAM <= command < CMD_READ_RAM + 0x20:
            self._reply(ram[command - CMD_READ_RAM])
        elif (CMD_WRITE_RAM <= command < CMD_WRITE_RAM + 0x20) or command in (
            CMD_WRITE_OUTPUT,
            CMD_WRITE_KBD_BUFFER,
            CMD_WRITE_AUX_BUFFER,
            CMD_WRITE_AUX,
        ):
            self._pending = command
        elif command == CMD_PASSWORD_TEST:
            self._reply(NO_PASSWORD)
        elif command == CMD_AUX_DISABLE:
            self._set_command_byte(ram[0] | CTR_AUX_DISABLE)
        elif command == CMD_AUX_ENABLE:
            self._set_command_byte(ram[0] & ~CTR_AUX_DISABLE)
        elif command in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._reply(INTERFACE_OK)
        elif command == CMD_SELF_TEST:
            self._system_flag = True
            self._reply(SELF_TEST_PASSED)
        elif command == CMD_KBD_DISABLE:
            self._set_command_byte(ram[0] | CTR_KBD_DISABLE)
        elif command == CMD_KBD_ENABLE:
            self._set_command_byte(ram[0] & ~CTR_KBD_DISABLE)
        elif command == CMD_READ_INPUT:
            self._reply(INPUT_PORT)
        elif command == CMD_READ_OUTPUT:
            self._reply(self._output_port_value())
        elif command in (CMD_A20_OFF, CMD_A20_ON):
            self._write_output_port(self.output_port & ~OUT_A20 | (OUT_A20 if command == CMD_A20_ON else 0))
        elif command >= CMD_PULSE and not command & OUT_RESET:
            raise SystemReset(f"keyboard controller command {command:#04x} pulsed the reset line")
        # Other commands (vendor ones, pulses of lines nothing listens to) do nothing.

    # ------------------------------------------------------------------ port 0x60

    def read_data(self) -> int:
        if self._buffer is None:
            return self._last_read  # the buffer's latch still holds the last byte
        self._last_read = self._buffer
        self._buffer = None
        self._buffer_aux = self._buffer_timeout = False
        # OBF falls before the next byte moves in, so that byte is a new edge on IRQ 1 / 12.
        self.irq.set(False)
        if self.aux_irq is not None:
            self.aux_irq.set(False)
        self._refill()
        return self._last_read

    def write_data(self, value: int) -> None:
        self._last_was_command = False
        pending, self._pending = self._pending, None
        if pending is None:
            # To the keyboard: the controller releases its clock to send, enabling it again.
            self.ram[0] &= ~CTR_KBD_DISABLE
            self._keyboard_bytes.extend(self.keyboard.receive(value))
            self._refill()
        elif CMD_WRITE_RAM <= pending < CMD_WRITE_RAM + 0x20:
            if pending == CMD_WRITE_RAM:
                self._system_flag = bool(value & CTR_SYS)
                self._set_command_byte(value)
            else:
                self.ram[pending - CMD_WRITE_RAM] = value
        elif pending == CMD_WRITE_OUTPUT:
            self._write_output_port(value)
        elif pending == CMD_WRITE_KBD_BUFFER:
            self._keyboard_bytes.append(value)
            self._refill()
        elif pending == CMD_WRITE_AUX_BUFFER:
            self._aux_bytes.append((value, False))
            self._refill()
        else:  # CMD_WRITE_AUX: no device on the aux port answers
            self._aux_bytes.append((AUX_TIMEOUT_REPLY, True))
            self._refill()

    # ------------------------------------------------------------------ internals

    def _reply(self, byte: int) -> None:
        self._replies.append(byte)
        self._refill()

    def _set_command_byte(self, value: int) -> None:
        self.ram[0] = value & 0x7F  # bit 7 is reserved, reads 0
        self._refill()

    def _output_port_value(self) -> int:
        value = self.output_port & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if self._buffer is not None:
            value |= OUT_AUX_OBF if self._buffer_aux else OUT_KBD_OBF
        return value

    def _write_output_port(self, value: int) -> None:
        self.output_port = value & ~(OUT_KBD_OBF | OUT_AUX_OBF) | OUT_IDLE_LINES
        self.a20.set_controller(bool(value & OUT_A20))
        if not value & OUT_RESET:
            raise SystemReset(f"the keyboard controller's output port was written {value:#04x}: reset line low")

    def _refill(self) -> None:
        """Move the next byte into an empty output buffer and set the interrupt lines."""
        if self._buffer is None:
            ctr = self.ram[0]
            if self._replies:
                self._buffer = self._replies.popleft()
            elif self._keyboard_bytes and not ctr & CTR_KBD_DISABLE:
                byte = self._keyboard_bytes.popleft()
                self._buffer = XLATE.get(byte, byte) if ctr & CTR_XLATE else byte
            elif self._aux_bytes and not ctr & CTR_AUX_DISABLE:
                self._buffer, self._buffer_timeout = self._aux_bytes.popleft()
                self._buffer_aux = True
        full = self._buffer is not None
        self.irq.set(full and not self._buffer_aux and bool(self.ram[0] & CTR_KBD_INT))
        if self.aux_irq is not None:
            self.aux_irq.set(full and self._buffer_aux and bool(self.ram[0] & CTR_AUX_INT))


class SystemControlPortA:
    """Port 0x92: fast A20 (bit 1) and fast reset (bit 0, on a 0 to 1 write)."""

    def __init__(self, a20: A20Gate) -> None:
        self.a20 = a20
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value & ~PORT92_A20 | (PORT92_A20 if self.a20.fast else 0)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        before, self.value = self.value, value
        self.a20.set_fast(bool(value & PORT92_A20))
        if value & PORT92_FAST_RESET and not before & PORT92_FAST_RESET:
            raise SystemReset(f"port 0x92 written {value:#04x}: fast reset")
