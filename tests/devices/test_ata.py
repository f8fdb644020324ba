"""The ATA controller at register level, through the bus at the primary channel's ports, over
temporary raw images: IDENTIFY, PIO reads and writes, multiple mode, errors, interrupts, SRST."""

from __future__ import annotations

from pathlib import Path

import pytest

from ring1.runtime.devices.ata import (
    AtaChannel,
    default_geometry,
    identify_string,
)
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.disk import DiskImage
from ring1.runtime.devices.irq import IrqLine

DATA, ERROR, COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE, STATUS = range(0x1F0, 0x1F8)
FEATURES, COMMAND = ERROR, STATUS
CONTROL = 0x3F6
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
ABRT, IDNF = 0x04, 0x10
SECTORS = 2048  # a 1 MiB image


class Pin:
    """An interrupt controller input that records the levels it is driven to."""

    def __init__(self) -> None:
        self.level = False
        self.rises = 0

    def set_irq(self, pin: int, level: bool) -> None:
        if level and not self.level:
            self.rises += 1
        self.level = level


def pattern(lba: int) -> bytes:
    """A sector's recognisable contents: its number, then bytes that differ per sector."""
    return lba.to_bytes(4, "little") + bytes((lba * 7 + i) & 0xFF for i in range(508))


def make_image(path: Path, sectors: int = SECTORS) -> Path:
    path.write_bytes(b"".join(pattern(i) for i in range(sectors)))
    return path


class Machine:
    def __init__(self, master: DiskImage | None, slave: DiskImage | None = None) -> None:
        self.bus = Bus()
        self.irq = IrqLine("ide0")
        self.pin = Pin()
        self.irq.connect(self.pin, 14)
        self.channel = AtaChannel(self.irq, master, slave)
        self.channel.map_on(self.bus)

    def inb(self, port: int) -> int:
        return self.bus.io_in(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.io_out(port, 1, value)

    def select(self, unit: int = 0, lba: bool = True, head: int = 0) -> None:
        self.outb(DEVICE, 0xA0 | (0x40 if lba else 0) | unit << 4 | head)

    def task(self, lba: int, count: int, unit: int = 0) -> None:
        self.select(unit, head=lba >> 24 & 0x0F)
        self.outb(COUNT, count & 0xFF)
        self.outb(LBA_LOW, lba & 0xFF)
        self.outb(LBA_MID, lba >> 8 & 0xFF)
        self.outb(LBA_HIGH, lba >> 16 & 0xFF)

    def read_block(self, words: int = 256, size: int = 2) -> bytes:
        out = bytearray()
        for _ in range(words * 2 // size):
            out += self.bus.io_in(DATA, size).to_bytes(size, "little")
        return bytes(out)

    def write_block(self, data: bytes, size: int = 2) -> None:
        for i in range(0, len(data), size):
            self.bus.io_out(DATA, size, int.from_bytes(data[i : i + size], "little"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img")


@pytest.fixture
def machine(image: Path) -> Machine:
    m = Machine(DiskImage(image))
    yield m
    m.channel.close()


def identify(m: Machine, unit: int = 0) -> list[int]:
    m.select(unit)
    m.outb(COMMAND, 0xEC)
    assert m.inb(CONTROL) == DRDY | DSC | DRQ
    block = m.read_block()
    return [int.from_bytes(block[i : i + 2], "little") for i in range(0, 512, 2)]


def text(words: list[int], first: int, count: int) -> str:
    return b"".join(w.to_bytes(2, "big") for w in words[first : first + count]).decode().rstrip()


# ---------------------------------------------------------------- IDENTIFY


def test_identify_describes_an_lba28_pio_disk(machine: Machine) -> None:
    words = identify(machine)
    assert words[0] == 0x0040  # ATA, fixed
    cylinders, heads, per_track = default_geometry(SECTORS)
    assert (words[1], words[3], words[6]) == (cylinders, heads, per_track) == (2, 16, 63)
    assert text(words, 27, 20) == "RING1 HARDDISK"
    assert text(words, 10, 10) == "RING1-IDE0-0"
    assert text(words, 23, 4) == "1.0"
    assert words[47] == 0x8010  # up to 16 sectors per multiple block
    assert words[49] & 0x0200 and not words[49] & 0x0100  # LBA, no DMA
    assert words[53] & 1 and words[54:57] == [2, 16, 63] and words[57] | words[58] << 16 == 2 * 16 * 63
    assert words[59] == 0x0110  # multiple mode on at power-on, 16 sectors (vendor specific; QEMU's)
    assert words[60] | words[61] << 16 == SECTORS
    assert words[80] & 0x0040 and words[81] == 0x0019  # ATA/ATAPI-6
    assert words[83] & 0x1000 and words[86] & 0x1000  # FLUSH CACHE
    assert not words[83] & 0x0400  # no LBA48
    assert words[85] & 0x0020  # write cache enabled
    assert words[255] & 0xFF == 0xA5
    block = b"".join(w.to_bytes(2, "little") for w in words)
    assert sum(block) & 0xFF == 0  # the integrity checksum
    assert machine.inb(STATUS) == DRDY | DSC  # all read: the data phase is over


def test_identify_strings_swap_each_pair() -> None:
    assert identify_string("ABC", 4) == b"BA C"


def test_identify_follows_settings(machine: Machine) -> None:
    machine.outb(COUNT, 8)
    machine.outb(COMMAND, 0xC6)  # SET MULTIPLE MODE 8
    machine.outb(FEATURES, 0x82)
    machine.outb(COMMAND, 0xEF)  # SET FEATURES: write cache off
    words = identify(machine)
    assert words[59] == 0x0108 and not words[85] & 0x0020


def test_identify_packet_aborts_with_the_ata_signature(machine: Machine) -> None:
    machine.outb(LBA_MID, 0x12)
    machine.outb(LBA_HIGH, 0x34)
    machine.outb(COMMAND, 0xA1)
    assert machine.inb(STATUS) == DRDY | DSC | ERR and machine.inb(ERROR) == ABRT
    assert [machine.inb(p) for p in (COUNT, LBA_LOW, LBA_MID, LBA_HIGH)] == [1, 1, 0, 0]


# ---------------------------------------------------------------- reads and writes


def test_read_sectors_gives_the_image_one_block_per_interrupt(machine: Machine) -> None:
    machine.task(100, 3)
    machine.outb(COMMAND, 0x20)
    for lba in (100, 101, 102):
        assert machine.pin.level
        assert machine.inb(STATUS) == DRDY | DSC | DRQ
        assert not machine.pin.level  # reading status acknowledged it
        assert machine.read_block() == pattern(lba)
    assert machine.inb(STATUS) == DRDY | DSC and not machine.pin.level  # no interrupt after the last
    assert machine.pin.rises == 3
    # The address registers show the last sector transferred, the count what is left.
    assert [machine.inb(p) for p in (COUNT, LBA_LOW, LBA_MID, LBA_HIGH)] == [0, 102, 0, 0]


def test_write_sectors_reach_the_file(machine: Machine, image: Path) -> None:
    new = [bytes([0x5A ^ i]) * 512 for i in range(2)]
    machine.task(7, 2)
    machine.outb(COMMAND, 0x30)
    assert machine.inb(STATUS) == DRDY | DSC | DRQ and machine.pin.rises == 0  # first block: no interrupt
    machine.write_block(new[0])
    assert machine.pin.level and machine.inb(STATUS) == DRDY | DSC | DRQ
    machine.write_block(new[1])
    assert machine.pin.rises == 2 and machine.inb(STATUS) == DRDY | DSC
    contents = image.read_bytes()
    assert contents[7 * 512 : 9 * 512] == new[0] + new[1]
    assert contents[6 * 512 : 7 * 512] == pattern(6) and contents[9 * 512 : 10 * 512] == pattern(9)
    machine.task(7, 2)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block() + machine.read_block() == new[0] + new[1]


def test_a_sector_count_of_zero_means_256(machine: Machine) -> None:
    machine.task(1000, 0)
    machine.outb(COMMAND, 0x20)
    blocks = 0
    while machine.inb(STATUS) & DRQ:
        assert machine.read_block()[:4] == (1000 + blocks).to_bytes(4, "little")
        blocks += 1
    assert blocks == 256


def test_data_port_takes_32_bit_accesses_and_bytes(machine: Machine) -> None:
    machine.task(5, 1)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block(size=4) == pattern(5)
    machine.task(5, 1)
    machine.outb(COMMAND, 0x20)
    first = machine.bus.io_in(DATA, 1)  # one 16-bit cycle, the low byte kept
    assert first == pattern(5)[0] and machine.bus.io_in(DATA, 2) == int.from_bytes(pattern(5)[2:4], "little")
    assert machine.read_block(words=254) == pattern(5)[4:]
    machine.task(9, 1)
    machine.outb(COMMAND, 0x30)
    data = bytes(range(256)) * 2
    machine.write_block(data, size=4)
    machine.task(9, 1)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block() == data


def test_data_port_reads_nothing_outside_a_data_phase(machine: Machine) -> None:
    assert machine.bus.io_in(DATA, 2) == 0
    machine.bus.io_out(DATA, 2, 0x1234)  # dropped: no write in progress
    assert machine.inb(STATUS) == DRDY | DSC


def test_multiple_mode_transfers_blocks(machine: Machine, image: Path) -> None:
    machine.outb(COUNT, 0)
    machine.outb(COMMAND, 0xC6)  # SET MULTIPLE MODE 0: disabled
    machine.task(0, 10)
    machine.outb(COMMAND, 0xC4)
    assert machine.inb(STATUS) & ERR and machine.inb(ERROR) == ABRT
    machine.outb(COUNT, 4)
    machine.outb(COMMAND, 0xC6)
    assert machine.inb(STATUS) == DRDY | DSC
    machine.task(20, 10)
    machine.outb(COMMAND, 0xC4)
    got = bytearray()
    interrupts = 0
    while machine.pin.level:
        interrupts += 1
        assert machine.inb(STATUS) & DRQ
        before = len(got)
        got += machine.read_block(words=256 * min(4, 10 - before // 512))
    assert interrupts == 3  # 4 + 4 + 2 sectors
    assert bytes(got) == b"".join(pattern(i) for i in range(20, 30))
    data = bytes(range(256)) * 2 * 6
    rises = machine.pin.rises
    machine.task(40, 6)
    machine.outb(COMMAND, 0xC5)
    machine.write_block(data[: 4 * 512])
    assert machine.pin.level and machine.inb(STATUS) & DRQ
    machine.write_block(data[4 * 512 :])
    assert machine.inb(STATUS) == DRDY | DSC and machine.pin.rises == rises + 2
    assert image.read_bytes()[40 * 512 : 46 * 512] == data


def test_multiple_mode_is_on_at_power_on(machine: Machine) -> None:
    machine.task(100, 20)
    machine.outb(COMMAND, 0xC4)  # READ MULTIPLE without SET MULTIPLE MODE: blocks of 16
    assert machine.pin.rises == 1
    assert machine.inb(STATUS) & DRQ and machine.read_block(words=16 * 256)[-512:] == pattern(115)
    assert machine.pin.rises == 2 and machine.inb(STATUS) & DRQ
    assert machine.read_block(words=4 * 256)[:512] == pattern(116)
    assert machine.inb(STATUS) == DRDY | DSC and machine.pin.rises == 2


def test_set_multiple_mode_refuses_odd_sizes_and_disables(machine: Machine) -> None:
    machine.outb(COUNT, 16)
    machine.outb(COMMAND, 0xC6)
    assert machine.inb(STATUS) == DRDY | DSC
    machine.outb(COUNT, 3)
    machine.outb(COMMAND, 0xC6)
    assert machine.inb(STATUS) & ERR and machine.inb(ERROR) == ABRT
    assert identify(machine)[59] == 0


def test_read_verify_and_flush_complete_with_an_interrupt(machine: Machine) -> None:
    machine.task(SECTORS - 4, 4)
    machine.outb(COMMAND, 0x40)
    assert machine.pin.level and machine.inb(STATUS) == DRDY | DSC
    machine.outb(COMMAND, 0xE7)
    assert machine.pin.level and machine.inb(STATUS) == DRDY | DSC


def test_chs_addressing(machine: Machine) -> None:
    # cylinder 1, head 2, sector 5 of 16 heads x 63 sectors
    lba = (1 * 16 + 2) * 63 + 4
    machine.select(lba=False, head=2)
    machine.outb(COUNT, 1)
    machine.outb(LBA_LOW, 5)
    machine.outb(LBA_MID, 1)
    machine.outb(LBA_HIGH, 0)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block() == pattern(lba)
    machine.outb(LBA_LOW, 0)  # sector numbers start at 1
    machine.outb(COUNT, 1)
    machine.outb(COMMAND, 0x20)
    assert machine.inb(STATUS) & ERR and machine.inb(ERROR) == IDNF
    # A new translation: 4 heads of 32 sectors.
    machine.select(lba=False, head=3)
    machine.outb(COUNT, 32)
    machine.outb(COMMAND, 0x91)
    assert machine.inb(STATUS) == DRDY | DSC
    words = identify(machine)
    assert words[54:57] == [SECTORS // 128, 4, 32]
    machine.select(lba=False, head=3)
    machine.outb(COUNT, 1)
    machine.outb(LBA_LOW, 32)
    machine.outb(LBA_MID, 2)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block() == pattern((2 * 4 + 3) * 32 + 31)


# ---------------------------------------------------------------- errors


def test_unknown_command_aborts_with_an_interrupt(machine: Machine) -> None:
    for command in (0x00, 0x25, 0xC8, 0xFF):  # NOP, READ SECTORS EXT, READ DMA, vendor
        machine.outb(COMMAND, command)
        assert machine.pin.level
        assert machine.inb(STATUS) == DRDY | DSC | ERR and machine.inb(ERROR) == ABRT
    machine.outb(FEATURES, 0x99)
    machine.outb(COMMAND, 0xEF)  # an unknown SET FEATURES subcommand
    assert machine.inb(ERROR) == ABRT
    machine.outb(FEATURES, 0x03)
    machine.outb(COUNT, 0x45)  # UDMA mode 5: not offered
    machine.outb(COMMAND, 0xEF)
    assert machine.inb(ERROR) == ABRT
    machine.outb(COUNT, 0x0C)  # PIO 4 with flow control
    machine.outb(COMMAND, 0xEF)
    assert machine.inb(STATUS) == DRDY | DSC and machine.inb(ERROR) == 0


def test_reads_past_the_end_stop_with_idnf_at_the_first_missing_sector(machine: Machine) -> None:
    machine.task(SECTORS - 2, 4)
    machine.outb(COMMAND, 0x20)
    assert machine.read_block() == pattern(SECTORS - 2)
    assert machine.read_block() == pattern(SECTORS - 1)
    assert machine.pin.level
    assert machine.inb(STATUS) == DRDY | DSC | ERR and machine.inb(ERROR) == IDNF
    lba = machine.inb(LBA_LOW) | machine.inb(LBA_MID) << 8 | machine.inb(LBA_HIGH) << 16
    assert lba == SECTORS and machine.inb(COUNT) == 2
    machine.task(SECTORS + 100, 1)
    machine.outb(COMMAND, 0x40)  # READ VERIFY
    assert machine.inb(STATUS) & ERR and machine.inb(ERROR) == IDNF


def test_writes_past_the_end_change_nothing(machine: Machine, image: Path) -> None:
    before = image.read_bytes()
    machine.task(SECTORS, 1)
    machine.outb(COMMAND, 0x30)
    machine.write_block(bytes(512))
    assert machine.inb(STATUS) == DRDY | DSC | ERR and machine.inb(ERROR) == IDNF
    assert image.read_bytes() == before


def test_an_absent_slave_floats_and_ignores_commands(machine: Machine) -> None:
    machine.select(1)
    assert machine.inb(STATUS) == 0 and machine.inb(CONTROL) == 0 and machine.inb(ERROR) == 0
    machine.outb(COUNT, 0x55)  # both devices latch register writes
    assert machine.inb(COUNT) == 0x55
    machine.outb(COMMAND, 0xEC)
    assert machine.inb(STATUS) == 0 and not machine.pin.level and machine.bus.io_in(DATA, 2) == 0
    machine.select(0)
    assert machine.inb(STATUS) == DRDY | DSC


def test_no_device_at_all_reads_zero(tmp_path: Path) -> None:
    m = Machine(None)
    assert [m.inb(p) for p in range(ERROR, STATUS + 1)] == [0] * 7
    m.outb(COMMAND, 0xEC)
    assert m.inb(STATUS) == 0 and not m.pin.level


def test_master_and_slave_are_separate_disks(tmp_path: Path) -> None:
    slave_path = tmp_path / "slave.img"
    slave_path.write_bytes(b"\xee" * 512 * 64)
    m = Machine(DiskImage(make_image(tmp_path / "master.img")), DiskImage(slave_path))
    assert text(identify(m, 1), 10, 10) == "RING1-IDE0-1" and identify(m, 1)[60] == 64
    m.task(3, 1, unit=1)
    m.outb(COMMAND, 0x20)
    assert m.read_block() == b"\xee" * 512
    m.task(3, 1, unit=0)
    m.outb(COMMAND, 0x20)
    assert m.read_block() == pattern(3)
    m.channel.close()


def test_commands_are_ignored_during_a_data_phase(machine: Machine) -> None:
    machine.task(1, 2)
    machine.outb(COMMAND, 0x20)
    machine.outb(LBA_LOW, 0x77)  # ignored: DRQ is set
    machine.select(1)  # ignored too: the master keeps the cable
    assert machine.inb(DEVICE) & 0x10 == 0
    machine.outb(COMMAND, 0xEC)  # ignored too
    assert machine.read_block() == pattern(1) and machine.read_block() == pattern(2)


# ---------------------------------------------------------------- interrupts and reset


def test_nien_masks_the_line_but_not_the_pending_interrupt(machine: Machine) -> None:
    machine.outb(CONTROL, 0x02)  # nIEN
    machine.task(0, 1)
    machine.outb(COMMAND, 0x20)
    assert not machine.pin.level and machine.inb(CONTROL) & DRQ
    machine.outb(CONTROL, 0x00)
    assert machine.pin.level  # still pending: INTRQ follows it again
    assert machine.inb(CONTROL) & DRQ and machine.pin.level  # alternate status leaves it
    machine.inb(STATUS)
    assert not machine.pin.level


def test_selecting_the_other_device_releases_intrq(tmp_path: Path) -> None:
    slave_path = tmp_path / "slave.img"
    slave_path.write_bytes(bytes(512 * 8))
    m = Machine(DiskImage(make_image(tmp_path / "master.img")), DiskImage(slave_path))
    m.select(0)
    m.outb(COMMAND, 0xE7)
    assert m.pin.level
    m.select(1)
    assert not m.pin.level
    m.select(0)
    assert m.pin.level
    m.channel.close()


def test_writing_a_command_clears_the_pending_interrupt(machine: Machine) -> None:
    machine.outb(COMMAND, 0xFF)
    assert machine.pin.level
    machine.task(0, 1)
    machine.outb(COMMAND, 0x30)  # WRITE SECTORS: DRQ without an interrupt
    assert not machine.pin.level


def test_software_reset_loads_the_signature(machine: Machine) -> None:
    machine.task(0x123456, 9)
    machine.outb(COMMAND, 0x20)  # left mid-transfer
    machine.outb(CONTROL, 0x04)  # SRST
    assert machine.inb(STATUS) == BSY and machine.inb(CONTROL) == BSY
    machine.outb(CONTROL, 0x00)
    assert machine.inb(STATUS) == DRDY | DSC and not machine.pin.level
    assert [machine.inb(p) for p in (ERROR, COUNT, LBA_LOW, LBA_MID, LBA_HIGH)] == [0x01, 1, 1, 0, 0]
    assert machine.inb(DEVICE) & 0x1F == 0  # device 0, head 0
    assert machine.bus.io_in(DATA, 2) == 0  # the transfer is gone


def test_execute_device_diagnostic(machine: Machine) -> None:
    machine.select(1)  # addressed to both devices, whichever is selected
    machine.outb(COMMAND, 0x90)
    assert machine.pin.level
    assert machine.inb(DEVICE) & 0x10 == 0  # device 0 answers
    assert machine.inb(STATUS) == DRDY | DSC and machine.inb(ERROR) == 0x01
    assert [machine.inb(p) for p in (COUNT, LBA_LOW, LBA_MID, LBA_HIGH)] == [1, 1, 0, 0]


def test_power_commands(machine: Machine) -> None:
    machine.outb(COMMAND, 0xE0)  # STANDBY IMMEDIATE
    machine.outb(COMMAND, 0xE5)
    assert machine.inb(COUNT) == 0x00
    machine.task(0, 1)
    machine.outb(COMMAND, 0x40)  # a media access spins it up
    machine.outb(COMMAND, 0xE5)
    assert machine.inb(COUNT) == 0xFF


def test_decode_disabled_floats(machine: Machine) -> None:
    machine.channel.decoding = False
    assert machine.inb(STATUS) == 0xFF and machine.bus.io_in(DATA, 2) == 0xFFFF
    machine.outb(COMMAND, 0xEC)
    machine.channel.decoding = True
    assert machine.inb(STATUS) == DRDY | DSC


# ---------------------------------------------------------------- the host's failures and flushes


def test_host_io_errors_are_reported_to_the_guest(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    image = machine.channel.devices[0].image

    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(image, "read", broken)
    monkeypatch.setattr(image, "write", broken)
    monkeypatch.setattr(image, "flush", broken)
    machine.task(12, 2)
    machine.outb(COMMAND, 0x20)
    assert machine.pin.level and machine.inb(STATUS) == DRDY | DSC | ERR and machine.inb(ERROR) == 0x40 | ABRT
    assert machine.inb(LBA_LOW) == 12 and machine.inb(COUNT) == 2
    machine.task(12, 1)
    machine.outb(COMMAND, 0x30)
    machine.write_block(bytes(512))
    assert machine.inb(STATUS) == DRDY | DF | DSC | ERR and machine.inb(ERROR) == ABRT
    machine.outb(COMMAND, 0xE7)
    assert machine.inb(STATUS) & DF and machine.inb(ERROR) == ABRT


def test_without_the_write_cache_each_block_is_synced(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    image = machine.channel.devices[0].image
    syncs: list[bool] = []
    write = image.write
    monkeypatch.setattr(image, "write", lambda lba, data, durable=False: (syncs.append(durable), write(lba, data))[1])
    machine.task(3, 1)
    machine.outb(COMMAND, 0x30)
    machine.write_block(bytes(512))
    machine.outb(FEATURES, 0x82)
    machine.outb(COMMAND, 0xEF)  # write cache off
    machine.task(3, 1)
    machine.outb(COMMAND, 0x30)
    machine.write_block(bytes(512))
    assert syncs == [False, True]
