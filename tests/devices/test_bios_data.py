"""The BIOS data area and the EBDA written into guest physical memory."""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.boot.bios_data import write_bios_data_area
from ring1.runtime.cpu.memory import PhysicalMemory


def word(memory: PhysicalMemory, address: int) -> int:
    return struct.unpack("<H", memory.read(address, 2))[0]


def test_bda_for_a_pc_with_two_com_ports() -> None:
    memory = PhysicalMemory(128 << 20)
    memory.write(0x400, b"\xaa" * 0x100)  # stale bytes: the whole BDA is written
    memory.write(0x9FC00, b"\xaa" * 1024)
    area = write_bios_data_area(memory, memory_size=128 << 20, com_ports=(0x3F8, 0x2F8))
    assert [word(memory, 0x400 + 2 * i) for i in range(4)] == [0x3F8, 0x2F8, 0, 0]
    assert [word(memory, 0x408 + 2 * i) for i in range(3)] == [0, 0, 0]
    assert word(memory, 0x40E) == 0x9FC0  # the EBDA's segment
    assert word(memory, 0x413) == 639  # base memory in KB, the EBDA's kilobyte taken
    equipment = word(memory, 0x410)
    assert equipment >> 9 & 7 == 2 and equipment >> 14 == 0  # two COM ports, no LPT
    assert equipment & 0x02 and equipment & 0x30 == 0x20 and not equipment & 0x01  # FPU, 80x25 colour, no floppy
    assert memory.read(0x449, 1) == b"\x03" and word(memory, 0x44A) == 80 and word(memory, 0x463) == 0x3D4
    assert memory.read(0x484, 1) == b"\x18"
    assert memory.read(0x9FC00, 1) == b"\x01" and memory.read(0x9FC01, 1023) == bytes(1023)  # EBDA size in KB
    assert memory.read(0x417, 1) == b"\0"
    assert (area.base_memory_kb, area.ebda_address, area.ebda_size) == (639, 0x9FC00, 1024)
    assert area.equipment == equipment


def test_small_memory_and_no_screen() -> None:
    memory = PhysicalMemory(512 << 10)
    area = write_bios_data_area(
        memory, memory_size=512 << 10, com_ports=(), lpt_ports=(0x378,), ebda_kb=4, text_screen=False
    )
    assert word(memory, 0x413) == 508 and word(memory, 0x40E) == 508 * 64
    assert word(memory, 0x408) == 0x378
    assert word(memory, 0x410) == 0x02 | 1 << 14  # FPU, one LPT, no COM, no initial video mode
    assert memory.read(0x449, 1) == b"\0" and word(memory, 0x463) == 0
    assert area.ebda_address == 508 * 1024 and memory.read(area.ebda_address, 1) == b"\x04"


def test_impossible_layouts_are_refused() -> None:
    memory = PhysicalMemory(1 << 20)
    with pytest.raises(ValueError, match="COM"):
        write_bios_data_area(memory, memory_size=1 << 20, com_ports=(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="EBDA"):
        write_bios_data_area(memory, memory_size=1 << 20, ebda_kb=640)
