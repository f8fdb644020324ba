"""PCI configuration mechanism #1 through the bus: a scan of bus 0, read-only and writable
fields, BAR sizing, pass-through accesses and the reset control register at 0xCF9."""

from __future__ import annotations

import pytest

from ring1.runtime.devices.ata import AtaChannel
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.pci import Bar, PciFunction, PciHost, Piix3Ide, pc_pci_bus

ADDRESS, DATA = 0xCF8, 0xCFC


class Config:
    """A guest's view: config_read/config_write as a kernel's PCI code does them."""

    def __init__(self, host: PciHost) -> None:
        self.bus = Bus()
        self.host = host
        self.bus.map_ports("pci-config", 0xCF8, 8, host, split=False)

    def select(self, bus: int, device: int, function: int, register: int) -> None:
        address = 1 << 31 | bus << 16 | device << 11 | function << 8 | register & 0xFC
        self.bus.io_out(ADDRESS, 4, address)

    def read(self, device: int, function: int, register: int, size: int = 4, bus: int = 0) -> int:
        self.select(bus, device, function, register)
        return self.bus.io_in(DATA + (register & 3), size)

    def write(self, device: int, function: int, register: int, value: int, size: int = 4) -> None:
        self.select(0, device, function, register)
        self.bus.io_out(DATA + (register & 3), size, value)


@pytest.fixture
def config() -> Config:
    return Config(pc_pci_bus())


def scan(config: Config) -> list[tuple[int, int, int, int]]:
    """The classic scan: vendor ID at function 0, the other functions if header type bit 7."""
    found = []
    for bus in range(2):
        for device in range(32):
            for function in range(8):
                ids = config.read(device, function, 0, bus=bus)
                if ids == 0xFFFFFFFF:
                    if function == 0:
                        break
                    continue
                class_code = config.read(device, function, 8, bus=bus) >> 8
                found.append((bus, device, function, ids, class_code))
                if function == 0 and not config.read(device, 0, 0x0E, size=1, bus=bus) & 0x80:
                    break
    return [(d, f, ids, cls) for _, d, f, ids, cls in found]


def test_a_scan_of_bus_0_finds_exactly_the_chipset(config: Config) -> None:
    assert scan(config) == [
        (0, 0, 0x1237_8086, 0x060000),  # 440FX host bridge
        (1, 0, 0x7000_8086, 0x060100),  # PIIX3 ISA bridge
        (1, 1, 0x7010_8086, 0x010180),  # PIIX3 IDE, legacy mode
    ]


def test_header_defaults(config: Config) -> None:
    assert config.read(0, 0, 0x04, size=2) == 0x0006 and config.read(0, 0, 0x06, size=2) == 0x0280
    assert config.read(0, 0, 0x08, size=1) == 0x02  # 440FX revision
    assert config.read(0, 0, 0x0E, size=1) == 0x00 and config.read(1, 0, 0x0E, size=1) == 0x80
    assert config.read(0, 0, 0x57, size=1) == 0x01 and config.read(0, 0, 0x72, size=1) == 0x02
    assert [config.read(1, 0, r, size=1) for r in range(0x60, 0x64)] == [0x80] * 4  # PIRQs unrouted
    assert config.read(1, 0, 0x04, size=2) == 0x0007
    assert config.read(1, 1, 0x04, size=2) == 0x0001  # I/O decode on, as a BIOS leaves it
    assert config.read(1, 1, 0x40, size=2) == 0x8000 and config.read(1, 1, 0x42, size=2) == 0


def test_byte_word_and_dword_reads_of_one_register(config: Config) -> None:
    assert config.read(1, 1, 0x00) == 0x70108086
    assert config.read(1, 1, 0x02, size=2) == 0x7010
    assert config.read(1, 1, 0x01, size=1) == 0x80 and config.read(1, 1, 0x03, size=1) == 0x70
    assert config.read(1, 1, 0x0A, size=2) == 0x0101  # class and subclass


def test_ids_and_class_are_read_only(config: Config) -> None:
    for register in (0x00, 0x08):
        before = config.read(1, 1, register)
        config.write(1, 1, register, 0x12345678)
        assert config.read(1, 1, register) == before


def test_command_register_keeps_only_its_writable_bits(config: Config) -> None:
    config.write(1, 1, 0x04, 0xFFFF, size=2)
    assert config.read(1, 1, 0x04, size=2) == 0x0005  # I/O space and bus master
    config.write(0, 0, 0x04, 0x0000, size=2)
    assert config.read(0, 0, 0x04, size=2) == 0x0006  # the host bridge's are hardwired
    config.write(0, 0, 0x06, 0xFFFF, size=2)  # status: error bits clear on one, the rest is fixed
    assert config.read(0, 0, 0x06, size=2) == 0x0280


def test_writable_storage_and_scratch(config: Config) -> None:
    config.write(0, 0, 0x59, 0x33, size=1)  # PAM0: only the high nibble exists
    config.write(0, 0, 0x5A, 0x33, size=1)
    assert config.read(0, 0, 0x59, size=2) == 0x3330
    config.write(1, 1, 0x3C, 0x0E, size=1)  # interrupt line: software's note
    assert config.read(1, 1, 0x3C, size=1) == 0x0E
    config.write(1, 0, 0x60, 0xFF, size=1)  # PIRQA: bits 6:4 are reserved
    assert config.read(1, 0, 0x60, size=1) == 0x8F


def test_absent_bars_take_no_size(config: Config) -> None:
    for device, function in ((0, 0), (1, 0), (1, 1)):
        for bar in range(6):
            config.write(device, function, 0x10 + 4 * bar, 0xFFFFFFFF)
            assert config.read(device, function, 0x10 + 4 * bar) == 0


def test_bar_sizing_of_a_function_with_bars() -> None:
    host = PciHost()
    host.add(
        3, 0, PciFunction("test", 0x1234, 0x5678, 0x020000, bars={0: Bar(0x1000, io=False), 1: Bar(0x20, io=True)})
    )
    host.add(
        3, 1, PciFunction("prefetch", 0x1234, 0x5679, 0x030000, bars={2: Bar(0x100000, io=False, prefetchable=True)})
    )
    config = Config(host)
    assert config.read(3, 0, 0x10) == 0x00000000 and config.read(3, 0, 0x14) == 0x00000001
    config.write(3, 0, 0x10, 0xFFFFFFFF)
    config.write(3, 0, 0x14, 0xFFFFFFFF)
    assert config.read(3, 0, 0x10) == 0xFFFFF000  # 4 KiB of memory
    assert config.read(3, 0, 0x14) == 0x0000FFE1  # 32 bytes of I/O (16-bit decode)
    config.write(3, 0, 0x10, 0xFEB01234)
    assert config.read(3, 0, 0x10) == 0xFEB01000 and host.functions[3, 0].bar_address(0) == 0xFEB01000
    config.write(3, 1, 0x18, 0xFFFFFFFF)
    assert config.read(3, 1, 0x18) == 0xFFF00008
    with pytest.raises(ValueError):
        Bar(24, io=True)


def test_nothing_answers_without_the_enable_bit_or_off_bus_0(config: Config) -> None:
    config.bus.io_out(ADDRESS, 4, 0x00000000)  # enable clear
    assert config.bus.io_in(DATA, 4) == 0xFFFFFFFF
    assert config.read(0, 0, 0, bus=1) == 0xFFFFFFFF
    assert config.read(2, 0, 0) == 0xFFFFFFFF and config.read(0, 3, 0) == 0xFFFFFFFF


def test_config_address_reads_back_without_reserved_bits(config: Config) -> None:
    config.bus.io_out(ADDRESS, 4, 0xFFFFFFFF)
    assert config.bus.io_in(ADDRESS, 4) == 0x80FFFFFC
    config.bus.io_out(ADDRESS, 4, 0x80000000)  # Linux's mechanism #1 probe
    assert config.bus.io_in(ADDRESS, 4) == 0x80000000
    # Byte accesses pass through as ordinary I/O: the address register is untouched, reads float.
    config.bus.io_out(0xCFB, 1, 0x01)
    config.bus.io_out(0xCF8, 1, 0x00)
    assert config.bus.io_in(ADDRESS, 4) == 0x80000000
    assert config.bus.io_in(0xCF8, 1) == 0xFF and config.bus.io_in(0xCFA, 1) == 0xFF


def test_reset_control_at_cf9() -> None:
    resets: list[bool] = []
    config = Config(pc_pci_bus(reset_system=resets.append))
    config.bus.io_out(0xCF9, 1, 0x02)  # hard reset selected: nothing yet
    assert resets == [] and config.bus.io_in(0xCF9, 1) == 0x02
    config.bus.io_out(0xCF9, 1, 0x06)  # RCPU 0 -> 1
    assert resets == [True]
    config.bus.io_out(0xCF9, 1, 0x06)  # no new transition
    config.bus.io_out(0xCF9, 1, 0x00)
    config.bus.io_out(0xCF9, 1, 0x04)  # a soft reset
    assert resets == [True, False]


def test_the_ide_function_switches_the_channel() -> None:
    channel = AtaChannel(IrqLine("ide0"))
    config = Config(pc_pci_bus(channel))
    assert channel.decoding
    config.write(1, 1, 0x40, 0x0000, size=2)  # IDETIM: primary decode off
    assert not channel.decoding
    config.write(1, 1, 0x40, 0x8000, size=2)
    assert channel.decoding
    config.write(1, 1, 0x04, 0x0000, size=2)  # I/O space off
    assert not channel.decoding
    powered_on = Piix3Ide(AtaChannel(IrqLine("ide0")), firmware_configured=False)
    assert not powered_on.channel.decoding and powered_on.read(0x04, 2) == 0 and powered_on.read(0x40, 2) == 0


def test_reset_restores_defaults(config: Config) -> None:
    config.write(1, 0, 0x69, 0x20, size=1)
    config.bus.io_out(ADDRESS, 4, 0x80000800)
    config.host.reset()
    assert config.bus.io_in(ADDRESS, 4) == 0 and config.read(1, 0, 0x69, size=1) == 0x02


def test_slots_are_checked() -> None:
    host = pc_pci_bus()
    with pytest.raises(ValueError, match="taken"):
        host.add(0, 0, PciFunction("again", 1, 2, 0))
    with pytest.raises(ValueError):
        host.add(32, 0, PciFunction("nowhere", 1, 2, 0))


def test_status_error_bits_clear_on_a_write_of_one(config: Config) -> None:
    host_bridge = config.host.functions[0, 0]
    host_bridge.config[0x07] |= 0x30  # the chip saw a master abort and a target abort
    config.write(0, 0, 0x06, 0x1000, size=2)  # clear the target abort only
    assert config.read(0, 0, 0x06, size=2) == 0x2280
    config.write(0, 0, 0x06, 0x2000, size=2)
    assert config.read(0, 0, 0x06, size=2) == 0x0280
