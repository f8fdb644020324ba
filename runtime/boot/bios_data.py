"""The BIOS data area (0x400-0x4FF) and the extended BIOS data area a PC BIOS leaves in low
memory, for kernels that read them (their base memory size, where the EBDA is, which COM ports
exist), written into guest physical memory by `write_bios_data_area`.

Written (the IBM PC/AT and PS/2 layout; every other byte of the BDA is zero):

  0x400  COM1-COM4 base ports (words; 0 for a port that is not there)
  0x408  LPT1-LPT3 base ports (words)
  0x40E  the EBDA's segment (word)
  0x410  equipment word: bit 1 a math coprocessor, bits 5-4 the initial video mode (10: 80x25
         colour text, when there is a text screen), bits 11-9 how many COM ports, bits 15-14
         how many LPT ports; no floppy (bit 0), no PS/2 mouse (bit 2)
  0x413  base memory in KB: conventional memory (640 KB, or less RAM) minus the EBDA
  0x449  video mode 3, 0x44A 80 columns, 0x44C the page size 4096 (4000 bytes rounded to 2 KB),
         0x460 the cursor shape (lines 6-7), 0x463 the CRTC's port 0x3D4, 0x484 rows - 1 (24),
         0x485 the character height (16): the 80x25 colour text mode a VGA BIOS sets, when
         there is a text screen

The EBDA sits at the top of conventional memory (1 KB by default, so at 0x9FC00 with 640 KB):
its first byte is its size in KB, the rest is cleared. Write the BDA before anything the
platform places in the EBDA (an MP floating pointer may go in its first KB), and keep the EBDA
out of the memory the boot memory map calls available.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BDA_BASE = 0x400
BDA_SIZE = 0x100
CONVENTIONAL_KB = 640

BDA_COM_PORTS = 0x400
BDA_LPT_PORTS = 0x408
BDA_EBDA_SEGMENT = 0x40E
BDA_EQUIPMENT = 0x410
BDA_MEMORY_KB = 0x413
BDA_VIDEO_MODE = 0x449
BDA_COLUMNS = 0x44A
BDA_PAGE_SIZE = 0x44C
BDA_CURSOR_SHAPE = 0x460
BDA_CRTC_PORT = 0x463
BDA_ROWS_MINUS_1 = 0x484
BDA_CHARACTER_HEIGHT = 0x485

EQUIPMENT_FPU = 1 << 1
EQUIPMENT_VIDEO_80X25_COLOUR = 0b10 << 4
EQUIPMENT_COM_SHIFT = 9
EQUIPMENT_LPT_SHIFT = 14
MAX_COM_PORTS, MAX_LPT_PORTS = 4, 3

TEXT_MODE = 0x03
TEXT_COLUMNS, TEXT_ROWS = 80, 25
CRTC_COLOUR_PORT = 0x3D4


class GuestPhysical(Protocol):
    def write(self, pa: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class BiosDataArea:
    """What was written, for whoever places tables in the EBDA or builds the memory map."""

    base_memory_kb: int  # the BDA's 0x413
    ebda_address: int
    ebda_size: int  # bytes
    equipment: int


def write_bios_data_area(
    memory: GuestPhysical,
    *,
    memory_size: int,
    com_ports: Sequence[int] = (0x3F8,),
    lpt_ports: Sequence[int] = (),
    ebda_kb: int = 1,
    text_screen: bool = True,
    fpu: bool = True,
) -> BiosDataArea:
    """Fill the BDA and clear the EBDA for a machine with `memory_size` bytes of RAM."""
    if len(com_ports) > MAX_COM_PORTS or len(lpt_ports) > MAX_LPT_PORTS:
        raise ValueError(f"the BDA lists at most {MAX_COM_PORTS} COM and {MAX_LPT_PORTS} LPT ports")
    conventional_kb = min(CONVENTIONAL_KB, memory_size // 1024)
    if not 1 <= ebda_kb < conventional_kb:
        raise ValueError(f"an EBDA of {ebda_kb} KB does not fit in {conventional_kb} KB of conventional memory")
    base_memory_kb = conventional_kb - ebda_kb
    ebda_address = base_memory_kb * 1024

    equipment = (
        (EQUIPMENT_FPU if fpu else 0)
        | (EQUIPMENT_VIDEO_80X25_COLOUR if text_screen else 0)
        | len(com_ports) << EQUIPMENT_COM_SHIFT
        | len(lpt_ports) << EQUIPMENT_LPT_SHIFT
    )
    bda = bytearray(BDA_SIZE)

    def put16(address: int, value: int) -> None:
        struct.pack_into("<H", bda, address - BDA_BASE, value)

    for i, port in enumerate(com_ports):
        put16(BDA_COM_PORTS + 2 * i, port)
    for i, port in enumerate(lpt_ports):
        put16(BDA_LPT_PORTS + 2 * i, port)
    put16(BDA_EBDA_SEGMENT, ebda_address >> 4)
    put16(BDA_EQUIPMENT, equipment)
    put16(BDA_MEMORY_KB, base_memory_kb)
    if text_screen:
        bda[BDA_VIDEO_MODE - BDA_BASE] = TEXT_MODE
        put16(BDA_COLUMNS, TEXT_COLUMNS)
        put16(BDA_PAGE_SIZE, -(-TEXT_COLUMNS * TEXT_ROWS * 2 // 2048) * 2048)
        put16(BDA_CURSOR_SHAPE, 0x0607)
        put16(BDA_CRTC_PORT, CRTC_COLOUR_PORT)
        bda[BDA_ROWS_MINUS_1 - BDA_BASE] = TEXT_ROWS - 1
        put16(BDA_CHARACTER_HEIGHT, 16)
    memory.write(BDA_BASE, bytes(bda))
    memory.write(ebda_address, bytes((ebda_kb,)) + bytes(ebda_kb * 1024 - 1))
    return BiosDataArea(base_memory_kb, ebda_address, ebda_kb * 1024, equipment)
