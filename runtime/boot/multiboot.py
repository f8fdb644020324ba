"""Booting a Multiboot kernel: the loader and the boot description.

`load_multiboot` reads a Multiboot (v1) image (an ELF32 file, or any file whose header
carries load addresses, flag bit 16) and returns a BootImage: a description that does not
depend on the engine, made of

- the memory writes: the image's loadable segments (with their zero-filled tails), the
  Multiboot information structure (memory sizes, a memory map, the command line, the boot
  loader name "ring1"), and the loader's GDT (flat code 0x08 and data 0x10);
- the CPU state the Multiboot specification defines at the kernel's entry: EAX=0x2BADB002,
  EBX=the information structure, protected mode, paging off, flat 32-bit CS and
  DS/ES/FS/GS/SS, IF=0, EIP=the entry point. Left undefined by the specification and
  fixed here: IDTR is empty (base 0, limit 0: an exception before the kernel loads its
  own IDT is a triple fault), TR and LDTR are null, ESP is STACK_TOP.

`interp_boot` builds that state into the interpreter Machine an engine keeps as its virtual
CPU (ring1.runtime.engines.run_image).

The loader's own data (the kernel may reclaim it all), at these addresses when the image
leaves them free, else moved as a whole to the first 64 KB-aligned window the image does not
touch (below the EBDA, or above the image): EBX, ESP and GDTR say where it went.

  0x00500  loader GDT (null, code 0x08, data 0x10)
  0x07C00  initial ESP (the stack grows down from here, at most STACK_SIZE)
  0x09000  Multiboot information structure
  0x09100  memory map            0x09200  boot loader name   0x09240  command line
  0x0A000  module list (16 bytes each)   0x0A400  module strings

Modules (`ring1 run --initrd FILE`, repeatable, as QEMU's -initrd for Multiboot kernels) are
loaded page-aligned after the image, in order, each with its file name (and, after a space,
the arguments given with it) as its string; MBI flag 3 lists them.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ring1.runtime.boot.firmware import e820_map
from ring1.runtime.cpu import descriptors
from ring1.runtime.cpu.machine import Machine, Platform
from ring1.runtime.cpu.state import SEG_NAMES
from ring1.runtime.tools import fresh_machine

MB_HEADER_MAGIC = 0x1BADB002
MB_BOOT_MAGIC = 0x2BADB002
MB_SEARCH = 8192

# Header flags (bits 0-15 are requirements the loader must meet or refuse the image).
MB_PAGE_ALIGN, MB_MEMORY_INFO, MB_VIDEO_MODE, MB_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
MB_SUPPORTED_REQUIREMENTS = MB_PAGE_ALIGN | MB_MEMORY_INFO

# Information structure flags.
MBI_MEMORY, MBI_CMDLINE, MBI_MODS, MBI_MMAP, MBI_LOADER_NAME = 1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9

DEFAULT_MEMORY = 16 << 20
LOADER_GDT = 0x500
STACK_TOP = 0x7C00
MBI_ADDR = 0x9000
MMAP_ADDR = 0x9100
LOADER_NAME_ADDR = 0x9200
CMDLINE_ADDR = 0x9240
CMDLINE_MAX = 0x0DBF
MODS_ADDR = 0xA000
MOD_STRINGS_ADDR = 0xA400
MOD_STRINGS_END = 0xB000
MAX_MODULES = (MOD_STRINGS_ADDR - MODS_ADDR) // 16
STACK_SIZE = 0x1000
LOADER_END = MOD_STRINGS_END  # the loader's data lies in [LOADER_GDT, LOADER_END) (+ its base)
LOADER_WINDOW = 0x10000  # the loader's area moves in steps of this
LOW_MEMORY_END = 0xA0000  # 640 KB
LOADER_NAME = b"ring1"

SEL_CODE, SEL_DATA = 0x08, 0x10
CR0_BOOT = 0x11  # PE, and ET hard-wired to 1
EFLAGS_BOOT = 0x2


class ImageError(Exception):
    """The image cannot be booted; the message says why, without the file name."""


# ---------------------------------------------------------------- the boot description


@dataclass(frozen=True)
class SegmentCache:
    """A segment register as the CPU holds it: selector and descriptor cache."""

    selector: int
    base: int
    limit: int
    attr: int  # access byte in bits 0-7, limit 19:16 in 8-11, G/D/L/AVL in 12-15 (as in the descriptor)


@dataclass
class BootCpu:
    regs: dict[str, int]  # eax ecx edx ebx esp ebp esi edi
    eip: int
    eflags: int
    cr0: int
    gdtr: tuple[int, int]  # base, limit
    idtr: tuple[int, int]
    segs: dict[str, SegmentCache]  # es cs ss ds fs gs


@dataclass
class MultibootHeader:
    offset: int  # in the file
    flags: int
    addresses: tuple[int, int, int, int, int] | None = None  # header, load, load_end, bss_end, entry (bit 16)


@dataclass
class LoadedSegment:
    paddr: int
    filesz: int
    memsz: int


@dataclass
class BootImage:
    name: str
    memory_size: int
    entry: int
    segments: list[LoadedSegment]
    writes: list[tuple[int, bytes]]  # (physical address, bytes), in order
    cpu: BootCpu
    header: MultibootHeader | None = None  # a Multiboot image's (None: a ROM, a Linux bzImage)
    cmdline: str = ""
    loader_base: int = 0  # where the loader's data went (0: the addresses above)
    modules: list[LoadedModule] = field(default_factory=list)
    rom: bytes | None = None  # a system ROM (boot/bios.py): the machine starts from reset, no tables


@dataclass
class LoadedModule:
    start: int
    end: int  # one past the last byte
    string: str


def find_header(data: bytes) -> MultibootHeader:
    """The first valid Multiboot header in the first 8 KB (32-bit aligned), or ImageError."""
    bad_checksum = None
    limit = min(len(data), MB_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != MB_HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            bad_checksum = bad_checksum if bad_checksum is not None else off
            continue
        header = MultibootHeader(off, flags)
        if flags & MB_AOUT_KLUDGE:
            if off + 32 > len(data):
                raise ImageError(f"the multiboot header at offset {off:#x} sets flag bit 16; its addresses are cut off")
            header.addresses = struct.unpack_from("<5I", data, off + 12)
        return header
    if bad_checksum is not None:
        raise ImageError(f"not a multiboot image (the header at offset {bad_checksum:#x} has a bad checksum)")
    raise ImageError("not a multiboot image (no header in the first 8 KB)")


def _check_flags(flags: int) -> None:
    required = flags & 0xFFFF
    if required & MB_VIDEO_MODE:
        raise ImageError("the multiboot header asks for a video mode (flag bit 2); ring1 has no display")
    unknown = required & ~(MB_SUPPORTED_REQUIREMENTS | MB_VIDEO_MODE)
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise ImageError(f"the multiboot header requires features ring1 does not know (flag bit {bits})")


def _elf_segments(data: bytes) -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(paddr, file bytes, memsz)]) of an ELF32 i386 executable."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if data[:4] != b"\x7fELF":
        raise ImageError("not an ELF file, and the multiboot header has no load addresses (flag bit 16)")
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 32:
            raise ImageError(f"a {elf.elfclass}-bit ELF file; ring1 boots 32-bit (ELF32) kernels")
        if elf["e_machine"] != "EM_386":
            raise ImageError(f"an ELF file for {elf['e_machine']}, not for i386")
        if elf["e_type"] != "ET_EXEC":
            raise ImageError(f"an ELF file of type {elf['e_type']}; a kernel must be an executable (ET_EXEC)")
        entry = elf["e_entry"]
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_filesz"] > seg["p_memsz"]:
                raise ImageError(f"a loadable segment at {seg['p_paddr']:#x} has more file bytes than memory")
            body = seg.data()
            if len(body) != seg["p_filesz"]:
                raise ImageError(f"the loadable segment at {seg['p_paddr']:#x} runs past the end of the file")
            segments.append((seg["p_paddr"], seg["p_vaddr"], body, seg["p_memsz"]))
    except ELFError as err:
        raise ImageError(f"malformed ELF file: {err}") from None
    except (struct.error, ValueError) as err:
        raise ImageError(f"malformed ELF file: {err}") from None
    if not segments:
        raise ImageError("the ELF file has no loadable segment")
    # An entry given as a virtual address inside a segment loaded elsewhere: its physical
    # address (paging is off at entry), as GRUB does.
    for paddr, vaddr, _body, memsz in segments:
        if vaddr <= entry < vaddr + memsz:
            entry = entry - vaddr + paddr
            break
    return entry, [(paddr, body, memsz) for paddr, _, body, memsz in segments]


def _aout_segments(data: bytes, header: MultibootHeader) -> tuple[int, list[tuple[int, bytes, int]]]:
    """The load described by the header's address fields (flag bit 16)."""
    assert header.addresses is not None
    header_addr, load_addr, load_end, bss_end, entry = header.addresses
    if load_addr > header_addr:
        raise ImageError("multiboot header: load_addr lies above header_addr")
    start = header.offset - (header_addr - load_addr)
    if start < 0:
        raise ImageError("multiboot header: load_addr lies before the start of the file")
    end = len(data) if load_end == 0 else start + (load_end - load_addr)
    if load_end and load_end < load_addr:
        raise ImageError("multiboot header: load_end_addr lies below load_addr")
    if end > len(data):
        raise ImageError("multiboot header: load_end_addr lies past the end of the file")
    body = data[start:end]
    memsz = len(body) if bss_end == 0 else bss_end - load_addr
    if memsz < len(body):
        raise ImageError("multiboot header: bss_end_addr lies below load_end_addr")
    return entry, [(load_addr, body, memsz)]


def _loader_gdt() -> bytes:
    return b"".join(
        [
            bytes(8),
            descriptors.segment(0, 0xFFFFF, 0x9B, 0xC),  # 0x08 flat 32-bit code (accessed: loaded)
            descriptors.segment(0, 0xFFFFF, 0x93, 0xC),  # 0x10 flat 32-bit data
        ]
    )


def _info_structure(
    memory_size: int, cmdline: bytes, base: int = 0, modules: list[LoadedModule] | None = None
) -> list[tuple[int, bytes]]:
    # The platform's one memory map (boot/firmware.py: the EBDA below 640 KB, the BIOS area,
    # the APIC pages), as INT 15h E820 would give it; mem_lower is the RAM below the EBDA.
    regions = e820_map(memory_size)
    mem_lower = regions[0].length // 1024
    mem_upper = (memory_size - 0x100000) // 1024
    mmap = b"".join(struct.pack("<IQQI", 20, e.base, e.length, e.type) for e in regions)
    info = bytearray(0x58)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME | (MBI_MODS if modules else 0)
    struct.pack_into("<III", info, 0, flags, mem_lower, mem_upper)
    struct.pack_into("<I", info, 16, base + CMDLINE_ADDR)
    struct.pack_into("<II", info, 44, len(mmap), base + MMAP_ADDR)
    struct.pack_into("<I", info, 64, base + LOADER_NAME_ADDR)
    writes = [
        (base + MBI_ADDR, bytes(info)),
        (base + MMAP_ADDR, mmap),
        (base + LOADER_NAME_ADDR, LOADER_NAME + b"\0"),
        (base + CMDLINE_ADDR, cmdline + b"\0"),
    ]
    if modules:
        entries, strings = bytearray(), bytearray()
        for module in modules:
            at = base + MOD_STRINGS_ADDR + len(strings)
            strings += module.string.encode("utf-8", "replace") + b"\0"
            entries += struct.pack("<IIII", module.start, module.end, at, 0)
        if MOD_STRINGS_ADDR + len(strings) > MOD_STRINGS_END:
            raise ImageError("the modules' names and arguments are too long for the loader's area")
        struct.pack_into("<II", info, 20, len(modules), base + MODS_ADDR)
        writes[0] = (base + MBI_ADDR, bytes(info))
        writes += [(base + MODS_ADDR, bytes(entries)), (base + MOD_STRINGS_ADDR, bytes(strings))]
    return writes


def _loader_base(occupied: list[tuple[int, int]], memory_size: int) -> int:
    """Where the loader's data goes: its own addresses (base 0) if the image leaves
    [stack bottom, LOADER_END) free, else the first window that is free."""
    low_end = e820_map(memory_size)[0].length  # the RAM below the EBDA
    candidates = [*range(0, low_end - LOADER_END, LOADER_WINDOW)]
    top = max((end for _, end in occupied), default=0)
    candidates.append(-(-top // LOADER_WINDOW) * LOADER_WINDOW)
    for base in candidates:
        lo, hi = base + STACK_TOP - STACK_SIZE, base + LOADER_END
        if hi <= memory_size and all(end <= lo or start >= hi for start, end in occupied):
            if base and base + LOADER_END > low_end and base < 0x100000:
                continue  # (the EBDA, the VGA window and the BIOS area are no RAM to use)
            return base
    raise ImageError("no room in the VM's memory for the boot loader's data beside the image")


def boot_cpu(entry: int, base: int = 0) -> BootCpu:
    """The CPU state at a Multiboot kernel's entry point (the loader's data at `base`)."""
    regs = {"eax": MB_BOOT_MAGIC, "ebx": base + MBI_ADDR, "esp": base + STACK_TOP}
    return flat_boot_cpu(entry, _loader_gdt(), base + LOADER_GDT, SEL_CODE, SEL_DATA, regs)


def flat_boot_cpu(entry: int, gdt: bytes, gdt_base: int, code_sel: int, data_sel: int, regs: dict[str, int]) -> BootCpu:
    """A boot protocol's entry state: flat 32-bit protected mode from a loader's `gdt` (at
    `gdt_base`), CS `code_sel`, the other segment registers `data_sel`, interrupts off, no
    paging, the registers in `regs` and the rest zero."""
    segs = {}
    for name in SEG_NAMES:
        sel = code_sel if name == "cs" else data_sel
        seg_base, limit, attr = descriptors.to_cache(gdt[sel : sel + 8])
        segs[name] = SegmentCache(sel, seg_base, limit, attr)
    return BootCpu(
        regs={**dict.fromkeys(fresh_machine.GPR_NAMES, 0), **regs},
        eip=entry,
        eflags=EFLAGS_BOOT,
        cr0=CR0_BOOT,
        gdtr=(gdt_base, len(gdt) - 1),
        idtr=(0, 0),
        segs=segs,
    )


def read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
                raise ImageError("is a directory")
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                # A device or a pipe may never end (/dev/zero): a kernel image is a file.
                raise ImageError("not a regular file")
            return f.read()
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}") from None


class ModuleError(ImageError):
    """A module (--initrd) cannot be loaded; the message names it."""


def load_multiboot(
    path: str | Path,
    memory_size: int = DEFAULT_MEMORY,
    cmdline: str | None = None,
    modules: list[str] | None = None,
) -> BootImage:
    """Read and check a Multiboot image; ImageError (a one-line reason) if it cannot boot.
    `modules`: files to load as Multiboot modules, each "FILE" or "FILE ARGUMENTS"."""
    path = Path(path)
    if memory_size % 0x1000 or memory_size < 2 << 20:
        raise ImageError("the VM needs at least 2 MB of memory, in whole pages")
    data = read_file(path)
    header = find_header(data)
    _check_flags(header.flags)
    if header.addresses is not None:
        entry, raw_segments = _aout_segments(data, header)
    else:
        entry, raw_segments = _elf_segments(data)

    writes: list[tuple[int, bytes]] = []
    segments: list[LoadedSegment] = []
    for paddr, body, memsz in raw_segments:
        end = paddr + memsz
        if end > memory_size:
            raise ImageError(
                f"a segment at {paddr:#x}-{end - 1:#x} does not fit in the VM's {memory_size >> 20} MB of memory"
            )
        segments.append(LoadedSegment(paddr, len(body), memsz))
        writes.append((paddr, body + bytes(memsz - len(body))))
    if not any(s.paddr <= entry < s.paddr + s.memsz for s in segments):
        raise ImageError(f"the entry point {entry:#x} lies outside every loaded segment")

    if len(modules or ()) > MAX_MODULES:
        raise ImageError(f"at most {MAX_MODULES} modules")
    loaded: list[LoadedModule] = []
    at = max((s.paddr + s.memsz for s in segments), default=0x100000)
    for spec in modules or ():
        file, _, args = spec.partition(" ")
        try:
            body = read_file(Path(file))
        except ImageError as err:
            raise ModuleError(f"module {file}: {err}") from None
        at = max(-(-at // 0x1000) * 0x1000, 0x100000)  # page-aligned, above the BIOS area
        if at + len(body) > memory_size:
            raise ModuleError(
                f"module {file} ({len(body):,} bytes) does not fit in the VM's {memory_size >> 20} MB after the image"
            )
        loaded.append(LoadedModule(at, at + len(body), f"{Path(file).name} {args}".strip()))
        writes.append((at, body))
        at += len(body)

    occupied = [(s.paddr, s.paddr + s.memsz) for s in segments] + [(m.start, m.end) for m in loaded]
    base = _loader_base(occupied, memory_size)
    text = path.name if cmdline is None else cmdline
    cmd = text.encode("utf-8", "replace")[:CMDLINE_MAX]
    writes.append((base + LOADER_GDT, _loader_gdt()))
    writes.extend(_info_structure(memory_size, cmd, base, loaded))
    return BootImage(
        name=path.name,
        memory_size=memory_size,
        entry=entry,
        header=header,
        segments=segments,
        writes=writes,
        cpu=boot_cpu(entry, base),
        cmdline=text,
        loader_base=base,
        modules=loaded,
    )


def interp_boot(image: BootImage, platform: Platform | None = None, machine: Machine | None = None) -> Machine:
    """The boot state built into an interpreter Machine (a new one unless `machine` is given)."""
    m = machine if machine is not None else Machine(image.memory_size, platform)
    if platform is not None:
        m.platform = platform
    for addr, data in image.writes:
        m.mem.write(addr, data)
    cpu = image.cpu
    S = m.state
    for i, name in enumerate(fresh_machine.GPR_NAMES):
        m.regs[i] = cpu.regs[name] & 0xFFFFFFFF
    m.b_write_cr(0, cpu.cr0)
    S.gdtr_base, S.gdtr_limit = cpu.gdtr
    S.idtr_base, S.idtr_limit = cpu.idtr
    for s, name in enumerate(SEG_NAMES):
        seg = cpu.segs[name]
        m.b_set_seg(s, seg.selector, seg.base, seg.limit, seg.attr)
    m.set_eflags(cpu.eflags)
    S.eip = cpu.eip
    m.update_mode()
    return m
