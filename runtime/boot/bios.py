"""Booting from a system ROM (`ring1 run --bios FILE`), as a PC's hardware does.

The ROM (a multiple of 4 KB, at most 256 KB) is mapped twice, as a PC's chipset maps its
firmware: at the top of the 4 GB physical space (ending at 0xFFFFFFFF: the platform's ROM
region, read-only) and below 1 MB (ending at 0xFFFFF, where real-mode code reaches it). The
low copy is shadow RAM, as chipsets leave it writable after POST (the PAM registers of the
440FX are kept but not acted on). The CPU starts in its reset state (SDM vol. 3, 9.1.1):
real mode, CS selector F000 with base FFFF0000 (so the first fetch is at FFFFFFF0, the
reset vector at the top of the ROM), EIP FFF0, CR0 60000010, EFLAGS 2, EDX the processor
signature, everything else zero; the other segments selector 0, base 0, limit FFFF.

Nothing else of a BIOS is there: no tables, no BIOS data area, no interrupt vectors. The ROM
programs the machine itself. Its POST codes (port 0x80, or `--post-port`) appear in the stop
diagnosis and in `--stats`.

`bare` starts at F000:FFF0 through the low copy (unicorn cannot hold a real-mode CS base of
FFFF0000): the same bytes, the same instructions.
"""

from __future__ import annotations

from pathlib import Path

from ring1.runtime.boot.multiboot import BootCpu, BootImage, ImageError, SegmentCache, read_file
from ring1.runtime.cpu.cpuid import cpuid
from ring1.runtime.cpu.state import SEG_NAMES
from ring1.runtime.tools import fresh_machine

MAX_ROM = 256 << 10
LOW_END = 0x100000  # the low copy ends at 0xFFFFF
TOP = 1 << 32
RESET_CR0 = 0x60000010  # CD, NW, ET
RESET_EIP = 0xFFF0
RESET_CS = 0xF000
RESET_CS_BASE = 0xFFFF0000


def load_bios(path: str | Path, memory_size: int) -> BootImage:
    """Read and check a ROM image; ImageError (a one-line reason) if it cannot be one."""
    path = Path(path)
    rom = read_file(path)
    if not rom:
        raise ImageError("an empty file is no ROM")
    if len(rom) % 0x1000 or len(rom) > MAX_ROM:
        raise ImageError(f"a ROM is a multiple of 4 KB up to {MAX_ROM >> 10} KB; this one is {len(rom):,} bytes")
    if memory_size < LOW_END:
        raise ImageError("the VM needs at least 1 MB of memory under a ROM")
    regs = dict.fromkeys(fresh_machine.GPR_NAMES, 0)
    regs["edx"] = cpuid(1)[0]  # the processor signature, as after RESET
    segs = {name: SegmentCache(0, 0, 0xFFFF, 0x93) for name in SEG_NAMES}
    segs["cs"] = SegmentCache(RESET_CS, RESET_CS_BASE, 0xFFFF, 0x9B)
    cpu = BootCpu(
        regs=regs, eip=RESET_EIP, eflags=0x2, cr0=RESET_CR0, gdtr=(0, 0xFFFF), idtr=(0, 0x3FF), segs=segs
    )
    return BootImage(
        name=path.name,
        memory_size=memory_size,
        entry=RESET_CS_BASE + RESET_EIP,
        segments=[],
        writes=[(LOW_END - len(rom), rom)],
        cpu=cpu,
        cmdline="",
        rom=rom,
    )
