"""The Linux/x86 boot protocol, 32-bit entry (the kernel's Documentation/arch/x86/boot.rst), as
QEMU's -kernel and boot loaders use it: a bzImage's setup header is read and checked, its
protected-mode kernel loaded at 1 MB, the zero page (struct boot_params) filled in (the setup
header, the e820 map of the platform, the command line, the initrd), and the CPU entered in
flat 32-bit protected mode at code32_start with ESI at the zero page, interrupts off, EBP, EDI
and EBX zero, CS = __BOOT_CS (0x10) and the data segments __BOOT_DS (0x18), as the protocol
says. The 16-bit setup code is not run (ring1 is the boot loader, and enters at 32 bits).

Where things go (below 640 KB, clear of the BIOS data the platform installs):
  0x00500  the boot GDT (null, null, __BOOT_CS, __BOOT_DS)
  0x10000  the zero page (4 KB)
  0x20000  the command line (at most the header's cmdline_size bytes, NUL-terminated)
  1 MB     the protected-mode kernel
  the initrd: as high as the header's initrd_addr_max and the RAM allow, page-aligned
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ring1.runtime.boot.firmware import e820_map
from ring1.runtime.boot.multiboot import (
    BootCpu,
    BootImage,
    ImageError,
    LoadedModule,
    LoadedSegment,
    flat_boot_cpu,
    read_file,
)
from ring1.runtime.cpu import descriptors

SETUP_HEADER = 0x1F1  # where the setup header starts, in the file and in the zero page
BOOT_FLAG, HEADER_MAGIC = 0xAA55, b"HdrS"
MIN_VERSION = 0x0206  # 2.06: cmdline_size; every kernel since 2.6.22
LOADED_HIGH = 0x01  # loadflags: the protected-mode kernel goes to 1 MB (a bzImage)
KEEP_SEGMENTS = 0x40  # loadflags: the kernel must not reload its segments (ring1 leaves it clear)
TYPE_OF_LOADER = 0xFF  # "undefined": ring1 has no assigned boot loader ID
KERNEL_ADDR = 0x100000
BOOT_GDT, ZERO_PAGE, CMDLINE_ADDR = 0x500, 0x10000, 0x20000
BOOT_CS, BOOT_DS = 0x10, 0x18
E820_ENTRIES, E820_TABLE, E820_MAX = 0x1E8, 0x2D0, 128  # zero-page offsets and the table's size
ALT_MEM_K = 0x1E0


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header ring1 reads (offsets in the file)."""

    setup_sects: int  # 0x1F1: 512-byte sectors of 16-bit setup code after the boot sector
    version: int  # 0x206
    loadflags: int  # 0x211
    code32_start: int  # 0x214
    initrd_addr_max: int  # 0x22C
    cmdline_size: int  # 0x238
    init_size: int  # 0x260 (2.10+; else 0)
    header_end: int  # one past the last byte of the header (0x202 + the byte at 0x201)


def read_setup_header(data: bytes) -> SetupHeader:
    """The setup header of a bzImage, checked; ImageError (one line) if this is not one ring1 boots."""
    if len(data) < 0x264:
        raise ImageError(f"too short for a Linux kernel image ({len(data)} bytes): no setup header")
    if struct.unpack_from("<H", data, 0x1FE)[0] != BOOT_FLAG or data[0x202:0x206] != HEADER_MAGIC:
        raise ImageError("not a Linux kernel image (no boot flag 0xAA55 and 'HdrS' setup header)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < MIN_VERSION:
        raise ImageError(
            f"Linux boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.06, which ring1 needs"
        )
    setup_sects = data[0x1F1] or 4  # 0 means 4 (the protocol's rule)
    loadflags = data[0x211]
    if not loadflags & LOADED_HIGH:
        raise ImageError("a zImage (its kernel loaded below 1 MB) is not supported: give a bzImage")
    (code32_start,) = struct.unpack_from("<I", data, 0x214)
    (initrd_addr_max,) = struct.unpack_from("<I", data, 0x22C)
    (cmdline_size,) = struct.unpack_from("<I", data, 0x238)
    init_size = struct.unpack_from("<I", data, 0x260)[0] if version >= 0x020A else 0
    header_end = 0x202 + data[0x201]
    kernel_offset = (setup_sects + 1) * 512
    if kernel_offset >= len(data):
        raise ImageError(f"truncated: the setup code ends at {kernel_offset:#x}, past the file's {len(data)} bytes")
    return SetupHeader(
        setup_sects, version, loadflags, code32_start, initrd_addr_max, cmdline_size, init_size, header_end
    )


def boot_gdt() -> bytes:
    """The GDT the protocol asks for: flat 4 GB __BOOT_CS (execute/read) and __BOOT_DS (read/write)."""
    return b"".join(
        [
            bytes(16),
            descriptors.segment(0, 0xFFFFF, 0x9B, 0xC),  # 0x10 __BOOT_CS (accessed: loaded)
            descriptors.segment(0, 0xFFFFF, 0x93, 0xC),  # 0x18 __BOOT_DS
        ]
    )


def load_bzimage(
    path: str | Path, memory_size: int, cmdline: str | None = None, initrd: str | None = None
) -> BootImage:
    """Read a bzImage and build the machine's state at its 32-bit entry; ImageError (a one-line
    reason) if it cannot boot as given."""
    path = Path(path)
    data = read_file(path)
    hdr = read_setup_header(data)
    kernel = data[(hdr.setup_sects + 1) * 512 :]
    # The kernel decompresses itself within init_size bytes of where it runs (at least where it
    # was loaded): all of that must be RAM.
    kernel_end = KERNEL_ADDR + max(len(kernel), hdr.init_size)
    if kernel_end > memory_size:
        raise ImageError(
            f"the kernel needs {kernel_end - KERNEL_ADDR:,} bytes from 1 MB (init_size), more than the VM's "
            f"{memory_size >> 20} MB"
        )
    text = "" if cmdline is None else cmdline
    cmd = text.encode("utf-8", "replace")
    if len(cmd) > hdr.cmdline_size:
        raise ImageError(f"the command line is {len(cmd)} bytes, over this kernel's limit of {hdr.cmdline_size}")

    zero = bytearray(4096)
    zero[SETUP_HEADER : hdr.header_end] = data[SETUP_HEADER : hdr.header_end]
    zero[0x210] = TYPE_OF_LOADER
    zero[0x211] = hdr.loadflags & ~KEEP_SEGMENTS
    struct.pack_into("<I", zero, 0x228, CMDLINE_ADDR)  # cmd_line_ptr
    struct.pack_into("<I", zero, 0x23C, 0)  # hardware_subarch: a PC
    regions = e820_map(memory_size)[:E820_MAX]
    zero[E820_ENTRIES] = len(regions)
    for i, e in enumerate(regions):
        struct.pack_into("<QQI", zero, E820_TABLE + 20 * i, e.base, e.length, e.type)
    struct.pack_into("<I", zero, ALT_MEM_K, (memory_size - 0x100000) >> 10)

    writes = [(BOOT_GDT, boot_gdt()), (CMDLINE_ADDR, cmd + b"\0"), (KERNEL_ADDR, kernel)]
    modules: list[LoadedModule] = []
    if initrd is not None:
        body = read_file(Path(initrd))
        limit = min(hdr.initrd_addr_max + 1, memory_size)
        at = (limit - len(body)) & ~0xFFF
        if at < kernel_end:
            raise ImageError(
                f"the initrd ({len(body):,} bytes) does not fit between the kernel (to {kernel_end:#x}) and "
                f"{limit:#x} (initrd_addr_max and RAM)"
            )
        struct.pack_into("<II", zero, 0x218, at, len(body))  # ramdisk_image, ramdisk_size
        writes.append((at, body))
        modules.append(LoadedModule(at, at + len(body), Path(initrd).name))
    writes.append((ZERO_PAGE, bytes(zero)))
    return BootImage(
        name=path.name,
        memory_size=memory_size,
        entry=hdr.code32_start,
        segments=[LoadedSegment(KERNEL_ADDR, len(kernel), len(kernel))],
        writes=writes,
        cpu=boot_cpu(hdr.code32_start),
        cmdline=text,
        modules=modules,
    )


def boot_cpu(entry: int) -> BootCpu:
    """The CPU state the protocol's 32-bit entry asks for (ESI at the zero page)."""
    return flat_boot_cpu(entry, boot_gdt(), BOOT_GDT, BOOT_CS, BOOT_DS, {"esi": ZERO_PAGE})
