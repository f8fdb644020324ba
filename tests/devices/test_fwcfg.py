"""QEMU's fw_cfg on the bus at 0x510/0x511 (and its DMA register at 0x514): the signature,
the items in the byte order the spec gives each, the file directory, reads past the end."""

from __future__ import annotations

import struct
import uuid

import pytest

from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.fwcfg import FirmwareConfig

MACHINE_UUID = uuid.UUID("12345678-9abc-def0-1122-334455667788")


def make(**kwargs: object) -> tuple[Bus, FirmwareConfig]:
    bus = Bus()
    fw = FirmwareConfig(ram_size=kwargs.pop("ram_size", 256 << 20), **kwargs)  # type: ignore[arg-type]
    bus.map_ports("fw_cfg", 0x510, 2, fw, split=False)
    if fw.dma_port is not None:
        bus.map_ports("fw_cfg-dma", 0x514, 8, fw.dma_port, split=False)
    return bus, fw


def read_item(bus: Bus, key: int, n: int) -> bytes:
    bus.io_out(0x510, 2, key)
    return bytes(bus.io_in(0x511, 1) for _ in range(n))


def test_signature_and_id_without_dma() -> None:
    bus, _ = make()
    assert read_item(bus, 0x0000, 4) == b"QEMU"
    assert struct.unpack("<I", read_item(bus, 0x0001, 4))[0] == 0x1  # traditional interface only


def test_items_little_endian_where_qemu_stores_them_so() -> None:
    bus, _ = make(ram_size=0x1_2345_6000, cpus=2, max_cpus=4, uuid=MACHINE_UUID)
    assert read_item(bus, 0x03, 8) == (0x1_2345_6000).to_bytes(8, "little")
    assert read_item(bus, 0x05, 2) == b"\x02\x00"
    assert read_item(bus, 0x0F, 2) == b"\x04\x00"
    assert read_item(bus, 0x02, 16) == MACHINE_UUID.bytes


def test_selecting_restarts_at_offset_0_and_past_the_end_reads_0() -> None:
    bus, _ = make()
    assert read_item(bus, 0x00, 2) == b"QE"
    assert bytes(bus.io_in(0x511, 1) for _ in range(4)) == b"MU\0\0"
    assert read_item(bus, 0x00, 1) == b"Q"
    assert read_item(bus, 0x1234, 4) == bytes(4)  # no such item


def test_the_write_channel_bit_reads_the_same_item_and_data_writes_are_ignored() -> None:
    bus, _ = make()
    bus.io_out(0x510, 2, 0x4000)
    bus.io_out(0x511, 1, 0x41)  # ignored: items are read-only
    assert bytes(bus.io_in(0x511, 1) for _ in range(4)) == b"QEMU"


def test_either_port_reads_data_and_other_widths_are_not_decoded() -> None:
    bus, _ = make()
    bus.io_out(0x510, 2, 0)
    assert bus.io_in(0x510, 1) == ord("Q") and bus.io_in(0x511, 1) == ord("E")
    assert bus.io_in(0x511, 2) == 0xFFFF
    bus.io_out(0x510, 4, 0x19)  # not a selector write
    assert bus.io_in(0x511, 1) == ord("M")


def test_file_directory_is_big_endian_and_sorted_by_name() -> None:
    bus, fw = make()
    assert read_item(bus, 0x19, 4) == b"\0\0\0\0"
    key_b = fw.add_file("opt/org.ring1/b", b"second")
    key_a = fw.add_file("etc/a", b"x" * 300)
    assert (key_b, key_a) == (0x20, 0x21)
    directory = read_item(bus, 0x19, 4 + 2 * 64)
    assert struct.unpack(">I", directory[:4])[0] == 2
    entries = [struct.unpack(">IHH56s", directory[4 + 64 * i : 4 + 64 * (i + 1)]) for i in range(2)]
    assert [(size, select, name.rstrip(b"\0")) for size, select, _, name in entries] == [
        (300, 0x21, b"etc/a"),
        (6, 0x20, b"opt/org.ring1/b"),
    ]
    assert read_item(bus, 0x20, 8) == b"second\0\0"


def test_file_names_and_keys_are_checked() -> None:
    _, fw = make()
    fw.add_file("etc/x", b"")
    with pytest.raises(ValueError, match="already"):
        fw.add_file("etc/x", b"")
    with pytest.raises(ValueError, match="55"):
        fw.add_file("n" * 56, b"")
    with pytest.raises(ValueError, match="out of range"):
        fw.set_item(0x10000, b"")


def test_arch_local_items_are_their_own_space() -> None:
    bus, fw = make()
    fw.set_item(0x8003, b"\x01\x02")
    assert read_item(bus, 0x8003, 3) == b"\x01\x02\0"
    assert read_item(bus, 0x0003, 2) == (256 << 20).to_bytes(8, "little")[:2]


def dma(bus: Bus, access_address: int) -> None:
    """Start a transfer as Linux does: the two halves of the address, big-endian."""
    swap = lambda v: int.from_bytes(v.to_bytes(4, "big"), "little")  # noqa: E731
    bus.io_out(0x514, 4, swap(access_address >> 32))
    bus.io_out(0x518, 4, swap(access_address & 0xFFFFFFFF))


def test_dma_select_read_skip_and_refused_write() -> None:
    memory = PhysicalMemory(1 << 20)
    bus, fw = make(memory=memory)
    assert struct.unpack("<I", read_item(bus, 0x01, 4))[0] == 0x3  # DMA advertised
    assert bus.io_in(0x514, 4).to_bytes(4, "little") + bus.io_in(0x518, 4).to_bytes(4, "little") == b"QEMU CFG"
    fw.add_file("etc/blob", bytes(range(10)))
    memory.write(0x1000, struct.pack(">IIQ", 0x0020 << 16 | 0x08 | 0x02, 4, 0x2000))  # select + read 4
    dma(bus, 0x1000)
    assert memory.read(0x2000, 4) == bytes(range(4)) and memory.read(0x1000, 4) == bytes(4)
    memory.write(0x1000, struct.pack(">IIQ", 0x04, 4, 0))  # skip 4
    dma(bus, 0x1000)
    memory.write(0x1000, struct.pack(">IIQ", 0x02, 6, 0x3000))  # read past the end: zeros
    memory.write(0x3000, b"\xff" * 8)
    dma(bus, 0x1000)
    assert memory.read(0x3000, 8) == bytes((8, 9, 0, 0, 0, 0)) + b"\xff\xff"
    memory.write(0x1000, struct.pack(">IIQ", 0x10, 1, 0x3000))  # write: read-only items
    dma(bus, 0x1000)
    assert struct.unpack(">I", memory.read(0x1000, 4))[0] == 0x01  # the error bit


def test_no_dma_port_without_memory() -> None:
    _, fw = make()
    assert fw.dma_port is None
