"""PCI configuration space: mechanism #1 (ports 0xCF8/0xCFC) and the functions on bus 0.

The bus a scan finds is that of a 440FX/PIIX3 PC (QEMU's `pc` machine, less its video and
network cards):
- 00:00.0 the 82441FX PMC host bridge (8086:1237, class 0600), its DRAM and PAM registers as
  plain read/write storage with their datasheet defaults;
- 00:01.0 the 82371SB PIIX3 PCI-to-ISA bridge (8086:7000, class 0601), a multi-function device
  (header type 80h), its configuration registers (PIRQ routing, top of memory, XBCS, APIC base...)
  as storage;
- 00:01.1 the PIIX3 IDE function (8086:7010, class 0101, programming interface 80h: both
  channels in legacy mode at 0x1F0/0x3F6 and 0x170/0x376, IRQ 14/15). Its I/O space enable
  (command bit 0) and the primary channel's IDE decode enable (IDETIM bit 15, register 41h bit 7)
  switch the ATA channel's ports on and off. The bus-master IDE range (BAR4, BMIBA) is absent:
  it reads 0 and takes no size, so drivers fall back to PIO (Linux's ata_piix says "BAR4 is
  zero"), which the drives' IDENTIFY asks for anyway; the secondary channel's decode is off.

Each function's 256 bytes of configuration space have a write mask per bit (read-only IDs and
class codes, writable command bits, base address registers that answer a write of all ones with
their size) and write-one-to-clear status bits, the behaviour `PciFunction` gives every header.

Mechanism #1: CONFIG_ADDRESS at 0xCF8 is a 32-bit register (enable bit 31, bus 23:16, device
15:11, function 10:8, register 7:2), reached only by 32-bit accesses; CONFIG_DATA at 0xCFC-0xCFF
takes byte, word and dword accesses at their offsets into the addressed dword. Byte and word
accesses to 0xCF8-0xCFB pass through the host bridge as ordinary I/O (which is how Linux tells
mechanism #1 from #2): nothing answers them but the PIIX3's reset control register at 0xCF9
(a 0-to-1 transition of bit 2 resets the system: hard when bit 1 is set, else soft). Reads of a
device that is not there, of a bus other than 0, or with the enable bit clear are all ones.

Not modelled: PCI-to-PCI bridges, interrupt routing through PIRQ (no PCI device here interrupts),
the memory effects of PAM/SMRAM, the BARs' decoding (no function here has one; `Bar` gives any
function the sizing behaviour, and the bus would need regions that move to decode it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ring1.runtime.devices.ata import AtaChannel

CONFIG_ADDRESS_PORT = 0xCF8  # the region's base: 0xCF8-0xCFF
CONFIG_PORTS = 8
CONFIG_ENABLE = 1 << 31
CONFIG_ADDRESS_MASK = CONFIG_ENABLE | 0x00FFFFFC  # bits 30:24 and 1:0 read as zero
RESET_CONTROL_OFFSET = 1  # 0xCF9
RC_SYSTEM_RESET, RC_RESET_CPU = 0x02, 0x04

# Configuration header offsets.
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_CODE, CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE, BIST = 0x08, 0x09, 0x0C, 0x0D, 0x0E, 0x0F
BAR0, SUBSYSTEM_VENDOR_ID, INTERRUPT_LINE, INTERRUPT_PIN = 0x10, 0x2C, 0x3C, 0x3D

# Command register bits.
CMD_IO_SPACE, CMD_MEMORY_SPACE, CMD_BUS_MASTER = 0x0001, 0x0002, 0x0004
CMD_SPECIAL_CYCLES, CMD_PARITY_ERROR_RESPONSE, CMD_SERR = 0x0008, 0x0040, 0x0100
# Status register bits: medium DEVSEL timing, fast back-to-back capable; the error bits clear on a write of 1.
STATUS_DEVSEL_MEDIUM, STATUS_FAST_BACK_TO_BACK = 0x0200, 0x0080
STATUS_ERRORS = 0xF900  # parity, SERR, master/target aborts, data parity

HEADER_MULTI_FUNCTION = 0x80


@dataclass(frozen=True)
class Bar:
    """A base address register: `size` bytes (a power of two) of I/O or memory space."""

    size: int
    io: bool
    prefetchable: bool = False

    def __post_init__(self) -> None:
        minimum = 4 if self.io else 16
        if self.size < minimum or self.size & (self.size - 1):
            raise ValueError(f"a BAR's size is a power of two of at least {minimum} bytes, not {self.size}")

    @property
    def type_bits(self) -> int:
        """The read-only low bits: 1 for I/O; memory: 32-bit, bit 3 if prefetchable."""
        if self.io:
            return 0x1
        return 0x8 if self.prefetchable else 0x0

    @property
    def address_mask(self) -> int:
        """The bits software may write: the address bits above the size (16-bit I/O decode)."""
        if self.io:
            return 0xFFFF & ~(self.size - 1) & ~0x3
        return 0xFFFFFFFF & ~(self.size - 1) & ~0xF


class PciFunction:
    """One function's configuration space: 256 bytes, each bit read-only, writable or
    write-one-to-clear, with the values it resets to."""

    def __init__(
        self,
        name: str,
        vendor_id: int,
        device_id: int,
        class_code: int,
        *,
        revision: int = 0,
        header_type: int = 0,
        command: int = 0,
        command_writable: int = 0,
        status: int = STATUS_DEVSEL_MEDIUM,
        bars: dict[int, Bar] | None = None,
    ) -> None:
        self.name = name
        self.defaults = bytearray(256)
        self.writable = bytearray(256)
        self.clear_on_write = bytearray(256)
        self.bars = dict(bars or {})
        self.define(VENDOR_ID, 2, vendor_id)
        self.define(DEVICE_ID, 2, device_id)
        self.define(COMMAND, 2, command, writable=command_writable)
        self.define(STATUS, 2, status, clear=STATUS_ERRORS)
        self.define(REVISION_ID, 1, revision)
        self.define(CLASS_CODE, 3, class_code)
        self.define(HEADER_TYPE, 1, header_type)
        self.define(INTERRUPT_LINE, 1, 0, writable=0xFF)  # a scratch byte for the IRQ software assigned
        for index, bar in self.bars.items():
            if not 0 <= index < 6:
                raise ValueError(f"BAR{index}: a type 0 header has BAR0-BAR5")
            self.define(BAR0 + 4 * index, 4, bar.type_bits, writable=bar.address_mask)
        self.config = bytearray(self.defaults)

    def define(self, offset: int, size: int, value: int, *, writable: int = 0, clear: int = 0) -> None:
        """A register's reset value and which of its bits software may write or clear."""
        for i in range(size):
            self.defaults[offset + i] = value >> (8 * i) & 0xFF
            self.writable[offset + i] = writable >> (8 * i) & 0xFF
            self.clear_on_write[offset + i] = clear >> (8 * i) & 0xFF

    def reset(self) -> None:
        self.config[:] = self.defaults
        self.configured()

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            at = offset + i
            byte = value >> (8 * i) & 0xFF
            writable, clear = self.writable[at], self.clear_on_write[at]
            self.config[at] = (self.config[at] & ~writable | byte & writable) & ~(byte & clear) & 0xFF
        self.configured()

    def configured(self) -> None:
        """Called after every configuration write and reset: a function whose registers switch
        something on or off acts here."""

    def bar_address(self, index: int) -> int | None:
        """Where software put a BAR (None if the function has no such BAR)."""
        bar = self.bars.get(index)
        if bar is None:
            return None
        return self.read(BAR0 + 4 * index, 4) & bar.address_mask

    def __repr__(self) -> str:
        return f"<{self.name} {self.read(VENDOR_ID, 2):04x}:{self.read(DEVICE_ID, 2):04x}>"


class I440fxHostBridge(PciFunction):
    """82441FX PCI and Memory Controller, function 0 of device 0."""

    def __init__(self) -> None:
        super().__init__(
            "i440FX host bridge",
            0x8086,
            0x1237,
            0x060000,
            revision=0x02,
            command=CMD_MEMORY_SPACE | CMD_BUS_MASTER,  # always on
            command_writable=CMD_PARITY_ERROR_RESPONSE | CMD_SERR,
            status=STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK_TO_BACK,
        )
        self.define(LATENCY_TIMER, 1, 0x00, writable=0xF8)
        self.define(0x50, 2, 0x0000, writable=0xFFFF)  # PMCCFG
        self.define(0x52, 1, 0x00, writable=0xFF)  # DETURBO
        self.define(0x53, 1, 0x80, writable=0xFF)  # DBC
        self.define(0x54, 1, 0x00, writable=0xFF)  # AXC
        self.define(0x55, 2, 0x0000, writable=0xFFFF)  # DRT
        self.define(0x57, 1, 0x01, writable=0xFF)  # DRAMC
        self.define(0x58, 1, 0x10, writable=0xFF)  # DRAMT
        for pam in range(0x59, 0x60):  # PAM0-6: shadow RAM read/write enables
            self.define(pam, 1, 0x00, writable=0xFF if pam != 0x59 else 0xF0)
        for drb in range(0x60, 0x68):  # DRB0-7: DRAM row boundaries
            self.define(drb, 1, 0x01, writable=0xFF)
        self.define(0x68, 1, 0x00, writable=0xC0)  # FDHC
        self.define(0x70, 1, 0x00, writable=0xFC)  # MTT
        self.define(0x71, 1, 0x10, writable=0xFF)  # CLT
        self.define(0x72, 1, 0x02, writable=0x78)  # SMRAM (the C_BASE_SEG bits are fixed at 010b)
        self.define(0x90, 1, 0x00, writable=0xFF)  # ERRCMD
        self.define(0x91, 1, 0x00, clear=0xFF)  # ERRSTS
        self.define(0x93, 1, 0x00, writable=0x0F)  # TRC
        self.config = bytearray(self.defaults)


class Piix3IsaBridge(PciFunction):
    """82371SB PIIX3 function 0: the PCI-to-ISA bridge (the first of a multi-function device)."""

    def __init__(self) -> None:
        super().__init__(
            "PIIX3 ISA bridge",
            0x8086,
            0x7000,
            0x060100,
            header_type=HEADER_MULTI_FUNCTION,
            command=CMD_IO_SPACE | CMD_MEMORY_SPACE | CMD_BUS_MASTER,  # hardwired on
            command_writable=CMD_SPECIAL_CYCLES | CMD_SERR,
            status=STATUS_DEVSEL_MEDIUM,
        )
        self.define(0x4C, 1, 0x4D, writable=0xFF)  # IORT
        self.define(0x4E, 2, 0x0003, writable=0x07FF)  # XBCS
        for pirq in range(0x60, 0x64):  # PIRQA-D route control: routing disabled
            self.define(pirq, 1, 0x80, writable=0x8F)
        self.define(0x69, 1, 0x02, writable=0xFF)  # TOM
        self.define(0x6A, 2, 0x0000, writable=0x00FF)  # MSTAT
        self.define(0x70, 1, 0x80, writable=0xCF)  # MBIRQ0
        self.define(0x71, 1, 0x80, writable=0xCF)  # MBIRQ1
        self.define(0x76, 1, 0x0C, writable=0x8F)  # MBDMA0
        self.define(0x77, 1, 0x0C, writable=0x8F)  # MBDMA1
        self.define(0x78, 2, 0x0002, writable=0xFFFF)  # PCSC
        self.define(0x80, 1, 0x00, writable=0x7F)  # APICBASE
        self.define(0x82, 1, 0x00, writable=0x0F)  # DLC
        self.define(0xA0, 1, 0x08, writable=0xFF)  # SMICNTL
        self.define(0xA2, 2, 0x0000, writable=0x00FF)  # SMIEN
        self.define(0xA4, 4, 0x00000000, writable=0xFFFFFFFF)  # SEE
        self.define(0xA8, 1, 0x0F, writable=0xFF)  # FTMR
        self.define(0xAA, 2, 0x0000, clear=0x01FF)  # SMIREQ
        self.define(0xAC, 1, 0x00, writable=0xFF)  # CTLTMR
        self.define(0xAE, 1, 0x00, writable=0xFF)  # CTHTMR
        self.config = bytearray(self.defaults)


IDETIM_PRIMARY, IDETIM_SECONDARY = 0x40, 0x42
IDETIM_DECODE_ENABLE = 0x8000


class Piix3Ide(PciFunction):
    """82371SB PIIX3 function 1: the IDE controller in legacy mode, the ATA channel's switch.

    `firmware_configured`: the state a PC BIOS leaves for the OS (I/O space on, the primary
    channel's decode on), which a guest started without a BIOS (Multiboot) needs to find its
    disks; False gives the datasheet's power-on state (everything off, for a BIOS to enable)."""

    def __init__(self, channel: AtaChannel | None = None, *, firmware_configured: bool = True) -> None:
        self.channel = channel
        super().__init__(
            "PIIX3 IDE",
            0x8086,
            0x7010,
            0x010180,  # mass storage, IDE, bus-master capable and both channels fixed in legacy mode
            command=CMD_IO_SPACE if firmware_configured else 0,
            command_writable=CMD_IO_SPACE | CMD_BUS_MASTER,
            status=STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK_TO_BACK,
        )
        self.define(LATENCY_TIMER, 1, 0x00, writable=0xF0)
        primary = IDETIM_DECODE_ENABLE if firmware_configured else 0
        self.define(IDETIM_PRIMARY, 2, primary, writable=0xF3FF)
        self.define(IDETIM_SECONDARY, 2, 0x0000, writable=0xF3FF)
        self.define(0x44, 1, 0x00, writable=0xFF)  # SIDETIM
        self.config = bytearray(self.defaults)
        self.configured()

    @property
    def primary_decoding(self) -> bool:
        return bool(self.read(COMMAND, 2) & CMD_IO_SPACE and self.read(IDETIM_PRIMARY, 2) & IDETIM_DECODE_ENABLE)

    def configured(self) -> None:
        if self.channel is not None:
            self.channel.decoding = self.primary_decoding
            self.channel.update_irq()


class PciHost:
    """Configuration mechanism #1 on ports 0xCF8-0xCFF (map with split=False: CONFIG_ADDRESS is
    only reached by whole 32-bit accesses), and bus 0 behind it."""

    def __init__(self, reset_system: Callable[[bool], None] | None = None) -> None:
        self.functions: dict[tuple[int, int], PciFunction] = {}  # (device, function) on bus 0
        self.address = 0
        self.reset_control = 0
        self.reset_system = reset_system  # called with hard=True/False when 0xCF9 asks for a reset

    def add(self, device: int, function: int, pci_function: PciFunction) -> None:
        if not (0 <= device < 32 and 0 <= function < 8):
            raise ValueError(f"PCI slot {device:02x}.{function} does not exist")
        if (device, function) in self.functions:
            raise ValueError(f"PCI slot 00:{device:02x}.{function} is taken by {self.functions[device, function]!r}")
        self.functions[device, function] = pci_function

    def reset(self) -> None:
        self.address = 0
        self.reset_control = 0
        for function in self.functions.values():
            function.reset()

    def addressed(self) -> tuple[PciFunction, int] | None:
        """The function and dword-aligned register CONFIG_ADDRESS names, if it is enabled and exists."""
        address = self.address
        if not address & CONFIG_ENABLE or address >> 16 & 0xFF:
            return None
        function = self.functions.get((address >> 11 & 0x1F, address >> 8 & 0x7))
        if function is None:
            return None
        return function, address & 0xFC

    # ------------------------------------------------------------ the bus device (offsets from 0xCF8)

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & CONFIG_ADDRESS_MASK
            return
        target = self.addressed() if offset + size > 4 else None
        for i in range(size):
            at = offset + i
            byte = value >> (8 * i) & 0xFF
            if at >= 4 and target is not None and at < CONFIG_PORTS:
                function, register = target
                function.write(register + at - 4, 1, byte)
            elif at == RESET_CONTROL_OFFSET:
                self._write_reset_control(byte)

    def _read_byte(self, at: int) -> int:
        if at == RESET_CONTROL_OFFSET:
            return self.reset_control
        if 4 <= at < CONFIG_PORTS:
            target = self.addressed()
            if target is not None:
                function, register = target
                return function.read(register + at - 4, 1)
        return 0xFF  # a pass-through cycle nobody claims, or no such function

    def _write_reset_control(self, value: int) -> None:
        starting = value & RC_RESET_CPU and not self.reset_control & RC_RESET_CPU
        self.reset_control = value & (RC_SYSTEM_RESET | RC_RESET_CPU)
        if starting and self.reset_system is not None:
            self.reset_system(bool(value & RC_SYSTEM_RESET))


def pc_pci_bus(
    ide_channel: AtaChannel | None = None,
    *,
    firmware_configured: bool = True,
    reset_system: Callable[[bool], None] | None = None,
) -> PciHost:
    """Bus 0 of a 440FX/PIIX3 PC: the host bridge at 00:00.0, the ISA bridge at 00:01.0 and the
    IDE function at 00:01.1 (switching `ide_channel` on and off)."""
    host = PciHost(reset_system)
    host.add(0, 0, I440fxHostBridge())
    host.add(1, 0, Piix3IsaBridge())
    host.add(1, 1, Piix3Ide(ide_channel, firmware_configured=firmware_configured))
    return host
