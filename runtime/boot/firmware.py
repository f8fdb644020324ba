"""The tables a PC BIOS leaves in memory for the OS, and the memory map it reports.

`install_tables(memory, memory_size, layout)` writes, into guest physical memory:

- the MP tables (Intel MultiProcessor Specification 1.4): the floating pointer structure
  ("_MP_", 16-byte aligned where an OS scans: the first KB of the EBDA, the last KB of base
  memory or 0xF0000-0xFFFFF) and the configuration table ("PCMP"): one processor (the
  bootstrap processor, local APIC ID 0), the buses (ISA 0, PCI 1 unless `pci_bus` is off),
  the I/O APIC at 0xFEC00000, the routing of ISA IRQs 0-15 to I/O APIC pins (IRQ n -> pin n,
  but IRQ 0 -> pin 2 and no entry for the cascade IRQ 2, as boards wire the 8254 to pin 2; the
  SCI, IRQ 9, level-triggered active high) and the local interrupts (ExtINT on LINT0 from the
  8259, NMI on LINT1);
- the ACPI tables (ACPI 1.0b): the RSDP (revision 0: an RSDT, no XSDT), 16-byte aligned in
  0xE0000-0xFFFFF where an OS scans; the RSDT pointing at the FADT and the MADT; the FADT
  (revision 1, the 116-byte ACPI 1.0 layout Linux reads without complaint) with the PM1a
  event and control blocks and the PM timer at I/O ports (devices/acpi.py is that hardware),
  the SCI on IRQ 9, SMI_CMD 0 (no SMI port: the machine is always in ACPI mode), the FACS
  and the DSDT; the FACS; a DSDT whose AML is only `\\_S5` (the SLP_TYP of soft off); the
  MADT (local APIC address, PCAT_COMPAT since the 8259s are there, the processor's local
  APIC, the I/O APIC with GSI base 0, the interrupt source overrides IRQ 0 -> GSI 2 and
  IRQ 9 -> GSI 9 level/high for the SCI, the LINT1 NMI).

Every table has its length and checksum (the bytes of the table sum to 0 mod 256), and the
same OEM fields. The tables sit in the BIOS area, which `e820_map` reports as reserved so an
OS never reuses it; nothing is written anywhere else (the BIOS data area, with the EBDA
pointer at 0x40E, is another module's).

`e820_map(memory_size)` is the map both the Multiboot and the Linux loaders report: RAM
0-0x9FC00, the EBDA and the BIOS area 0x9FC00-0x100000 reserved (the VGA window and option
ROMs lie in it), RAM from 1 MB to the end of guest memory, and the I/O APIC, local APIC and
the high BIOS window at the top of 4 GB reserved.

Not modelled: more than one processor, PCI interrupt routing entries (no PCI device raises
an interrupt yet; a PCI helper would add them, and _PRT in the DSDT), an XSDT, HPET, MCFG,
ACPI objects other than \\_S5 (no _PRT, no processor objects, no power button device).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ring1.runtime.cpu import cpuid
from ring1.runtime.devices import acpi

# ---------------------------------------------------------------- the platform's addresses

LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
LAPIC_ID = 0  # the one processor's local APIC ID
LAPIC_VERSION = 0x14  # an integrated local APIC (P6 and later), as the LAPIC's version register says
IOAPIC_ID = 1  # distinct from every local APIC ID, as the MP specification asks
IOAPIC_VERSION = 0x11  # the 82093AA's version register
IOAPIC_PINS = 24

EBDA_BASE = 0x9FC00  # the last KB of 640 KB of base memory
BIOS_AREA = 0xE0000  # 0xE0000-0xFFFFF: where an OS looks for the RSDP (and from 0xF0000, the MP pointer)
BIOS_HIGH_SIZE = 0x40000  # the BIOS window under 4 GB (where a ROM given with --bios shows too)

# The ACPI fixed hardware's I/O ports (devices/acpi.py); the block at 0x600 as QEMU's PIIX4 PM has it.
PM_BASE = 0x600
PM1A_EVT_PORT = PM_BASE  # PM1_STS, PM1_EN: acpi.PM1_EVT_LEN bytes
PM1A_CNT_PORT = PM_BASE + 4  # PM1_CNT: acpi.PM1_CNT_LEN bytes
PM_TMR_PORT = PM_BASE + 8  # the PM timer: acpi.PM_TMR_LEN bytes
SCI_IRQ = acpi.SCI_IRQ

# OEM fields of every table.
OEM_ID = b"RING1 "  # 6 bytes
OEM_TABLE_ID = b"RING1VM "  # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"RNG1"
CREATOR_REVISION = 1
MP_PRODUCT_ID = b"RING1 VM    "  # 12 bytes

# e820 types (ACPI 1.0b, 14.1).
E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4


class PhysicalWriter(Protocol):
    """Guest physical memory as the tables need it (cpu/memory.PhysicalMemory is one)."""

    def write(self, pa: int, data: bytes) -> None: ...


# ---------------------------------------------------------------- the memory map


class E820Entry(NamedTuple):
    base: int
    length: int
    type: int


def e820_map(memory_size: int) -> list[E820Entry]:
    """The BIOS memory map (INT 15h E820) for `memory_size` bytes of guest RAM, by address."""
    if memory_size < 0x100000:
        raise ValueError(f"guest memory of {memory_size:#x} bytes: a PC needs at least 1 MB")
    if memory_size > IOAPIC_BASE:
        raise ValueError(f"guest memory of {memory_size:#x} bytes would overlap the I/O APIC at {IOAPIC_BASE:#x}")
    entries = [
        E820Entry(0, EBDA_BASE, E820_RAM),
        # The EBDA, the VGA window, option ROMs and the BIOS: the firmware tables live here.
        E820Entry(EBDA_BASE, 0x100000 - EBDA_BASE, E820_RESERVED),
    ]
    if memory_size > 0x100000:
        entries.append(E820Entry(0x100000, memory_size - 0x100000, E820_RAM))
    entries += [
        E820Entry(IOAPIC_BASE, 0x1000, E820_RESERVED),
        E820Entry(LAPIC_BASE, 0x1000, E820_RESERVED),
        E820Entry((1 << 32) - BIOS_HIGH_SIZE, BIOS_HIGH_SIZE, E820_RESERVED),
    ]
    return entries


# ---------------------------------------------------------------- checksums and headers


def checksum_byte(data: bytes) -> int:
    """The byte that makes `data` plus itself sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _with_checksum(table: bytearray, at: int) -> bytes:
    table[at] = 0
    table[at] = checksum_byte(table)
    return bytes(table)


SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # ACPI 1.0b 5.2.3: 36 bytes


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """An ACPI table: the 36-byte system description header, then `body`; checksummed."""
    length = SDT_HEADER.size + len(body)
    header = SDT_HEADER.pack(
        signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION
    )
    return _with_checksum(bytearray(header + body), 9)


# ---------------------------------------------------------------- AML (ACPI 1.0b, 16)

_AML_NAME_OP, _AML_PACKAGE_OP = 0x08, 0x12
_AML_ZERO_OP, _AML_ONE_OP, _AML_BYTE_PREFIX = 0x00, 0x01, 0x0A


def _aml_byte_integer(value: int) -> bytes:
    """A small integer as AML data: ZeroOp, OneOp or ByteConst."""
    if not 0 <= value <= 0xFF:
        raise ValueError("only byte constants are encoded here")
    if value == 0:
        return bytes([_AML_ZERO_OP])
    if value == 1:
        return bytes([_AML_ONE_OP])
    return bytes([_AML_BYTE_PREFIX, value])


def _aml_pkg_length(body_length: int) -> bytes:
    """PkgLength for a body this long: the encoding counts its own bytes (one byte up to 63)."""
    if body_length + 1 <= 0x3F:
        return bytes([body_length + 1])
    raise ValueError("only one-byte PkgLength is encoded here")


def dsdt_aml(s5_slp_typ: int = acpi.SLP_TYP_S5) -> bytes:
    """The DSDT's AML, compiled by hand from this ASL:

        DefinitionBlock ("", "DSDT", 1, "RING1 ", "RING1VM ", 1)
        {
            Name (\\_S5, Package (0x04) { s5_slp_typ, s5_slp_typ, Zero, Zero })
        }

    \\_S5's package gives the SLP_TYP values for PM1a_CNT and PM1b_CNT (there is no PM1b; the
    OS writes the second to no port), then two reserved elements, as ACPI 1.0b 7.3.4.4 has it.
    """
    elements = [s5_slp_typ, s5_slp_typ, 0, 0]
    body = bytes([len(elements)]) + b"".join(_aml_byte_integer(e) for e in elements)  # NumElements, PackageElements
    package = bytes([_AML_PACKAGE_OP]) + _aml_pkg_length(len(body)) + body
    name_string = b"\\_S5_"  # RootChar, then the NameSeg padded to 4 with '_'
    return bytes([_AML_NAME_OP]) + name_string + package


# ---------------------------------------------------------------- ACPI tables

RSDP = struct.Struct("<8sB6sBI")  # ACPI 1.0b 5.2.4: 20 bytes
FADT_V1_LENGTH = 116
FACS_LENGTH = 64

# FADT flags (ACPI 1.0b table 5-9).
FADT_WBINVD = 1 << 0  # WBINVD flushes caches (required of ACPI 1.0 platforms)
FADT_PROC_C1 = 1 << 2  # C1 (HLT) works on every processor
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button (PWR_BUTTON, bit 4, clear: the power button is fixed)
FADT_TMR_VAL_EXT = 1 << 8  # the PM timer is 32 bits wide

# MADT entry types and flags (ACPI 1.0b 5.2.8).
MADT_PCAT_COMPAT = 1 << 0
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_SRC_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
MADT_ENABLED = 1 << 0

# MPS INTI flags (the same encoding in the MADT and the MP table): polarity bits 0-1, trigger 2-3.
INTI_CONFORMS = 0x0000
INTI_ACTIVE_HIGH, INTI_ACTIVE_LOW = 0x1, 0x3
INTI_EDGE, INTI_LEVEL = 0x1 << 2, 0x3 << 2
SCI_INTI_FLAGS = INTI_ACTIVE_HIGH | INTI_LEVEL  # how devices/acpi.py drives its IrqLine


def rsdp(rsdt_address: int) -> bytes:
    return _with_checksum(bytearray(RSDP.pack(b"RSD PTR ", 0, OEM_ID, 0, rsdt_address)), 8)


def rsdt(table_addresses: list[int]) -> bytes:
    return sdt(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in table_addresses))


def facs() -> bytes:
    """The firmware ACPI control structure (ACPI 1.0b 5.2.6): no checksum; no waking vector
    (nothing resumes), the global lock free, no S4BIOS."""
    return struct.pack("<4sIIIII40s", b"FACS", FACS_LENGTH, 0, 0, 0, 0, bytes(40))


def fadt(facs_address: int, dsdt_address: int, *, timer_32bit: bool = False) -> bytes:
    """The fixed ACPI description table, revision 1 (ACPI 1.0b 5.2.5, 116 bytes)."""
    body = bytearray(FADT_V1_LENGTH - SDT_HEADER.size)

    def put(fmt: str, offset: int, *values: int) -> None:  # offsets from the table's start
        struct.pack_into("<" + fmt, body, offset - SDT_HEADER.size, *values)

    put("II", 36, facs_address, dsdt_address)  # FIRMWARE_CTRL, DSDT
    put("B", 44, 1)  # INT_MODEL: APIC mode is available (1.0b: 0 dual PIC, 1 multiple APIC)
    put("H", 46, SCI_IRQ)  # SCI_INT
    put("IBBB", 48, 0, 0, 0, 0)  # SMI_CMD 0: no SMI port, always in ACPI mode; ACPI_ENABLE/DISABLE/S4BIOS_REQ
    put("IIII", 56, PM1A_EVT_PORT, 0, PM1A_CNT_PORT, 0)  # PM1a/PM1b event, PM1a/PM1b control
    put("IIII", 72, 0, PM_TMR_PORT, 0, 0)  # PM2_CNT, PM_TMR, GPE0, GPE1 blocks
    put("BBBBBBBB", 88, acpi.PM1_EVT_LEN, acpi.PM1_CNT_LEN, 0, acpi.PM_TMR_LEN, 0, 0, 0, 0)
    put("HH", 96, 101, 1001)  # P_LVL2_LAT, P_LVL3_LAT: over 100 / 1000 us, C2 and C3 unsupported
    put("B", 108, 0x32)  # CENTURY: the RTC's CMOS byte 0x32 holds the century
    flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | (FADT_TMR_VAL_EXT if timer_32bit else 0)
    put("I", 112, flags)
    return sdt(b"FACP", 1, bytes(body))


def madt() -> bytes:
    """The multiple APIC description table (ACPI 1.0b 5.2.8), revision 1."""
    entries = [
        struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, 0, LAPIC_ID, MADT_ENABLED),  # processor UID 0
        struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_BASE, 0),  # GSI base 0
        # The 8254 is wired to pin 2 (the 8259 cascade's pin on an APIC board).
        struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, 0, 2, INTI_CONFORMS),
        struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, SCI_IRQ, SCI_IRQ, SCI_INTI_FLAGS),
        struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, INTI_ACTIVE_HIGH | INTI_EDGE, 1),  # LINT1 of all
    ]
    body = struct.pack("<II", LAPIC_BASE, MADT_PCAT_COMPAT) + b"".join(entries)
    return sdt(b"APIC", 1, body)


# ---------------------------------------------------------------- MP tables (MP spec 1.4, 4)

MP_SPEC_REV = 4  # version 1.4
MP_FLOATING = struct.Struct("<4sIBBB5s")  # 16 bytes
MP_CONFIG_HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")  # 44 bytes
MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_IOINT, MP_LOCALINT = 0, 1, 2, 3, 4
MP_INT, MP_NMI, MP_SMI, MP_EXTINT = 0, 1, 2, 3
MP_CPU_ENABLED, MP_CPU_BSP = 1 << 0, 1 << 1
MP_IOAPIC_ENABLED = 1 << 0
ISA_BUS_ID, PCI_BUS_ID = 0, 1


def mp_config_table(*, pci_bus: bool = True) -> bytes:
    """The MP configuration table: the header, then the entries in the order of their types."""
    eax, _, _, edx = cpuid.cpuid(1)
    entries = [struct.pack("<BBBBII8s", MP_PROCESSOR, LAPIC_ID, LAPIC_VERSION, MP_CPU_ENABLED | MP_CPU_BSP,
                           eax & 0xFFF, edx, bytes(8))]  # signature: stepping, model, family
    if pci_bus:
        entries.append(struct.pack("<BB6s", MP_BUS, PCI_BUS_ID, b"PCI   "))
    entries.append(struct.pack("<BB6s", MP_BUS, ISA_BUS_ID, b"ISA   "))
    entries.sort(key=lambda e: (e[0], e[1]))  # buses by ID, as the specification asks
    entries.append(struct.pack("<BBBBI", MP_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, MP_IOAPIC_ENABLED, IOAPIC_BASE))
    for irq, pin in isa_irq_pins().items():
        flags = SCI_INTI_FLAGS if irq == SCI_IRQ else INTI_CONFORMS  # ISA: edge, active high
        entries.append(struct.pack("<BBHBBBB", MP_IOINT, MP_INT, flags, ISA_BUS_ID, irq, IOAPIC_ID, pin))
    # LINT0: the 8259's INTR as ExtINT (virtual wire mode); LINT1: NMI; to every local APIC (0xFF).
    entries.append(struct.pack("<BBHBBBB", MP_LOCALINT, MP_EXTINT, INTI_CONFORMS, ISA_BUS_ID, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", MP_LOCALINT, MP_NMI, INTI_CONFORMS, ISA_BUS_ID, 0, 0xFF, 1))
    body = b"".join(entries)
    header = MP_CONFIG_HEADER.pack(
        b"PCMP", MP_CONFIG_HEADER.size + len(body), MP_SPEC_REV, 0, OEM_ID.ljust(8), MP_PRODUCT_ID,
        0, 0, len(entries), LAPIC_BASE, 0, 0, 0,
    )  # no OEM table, no extended entries
    return _with_checksum(bytearray(header + body), 7)


def mp_floating_pointer(config_address: int) -> bytes:
    """The floating pointer: one 16-byte paragraph; feature byte 1 = 0 (a configuration table
    is present), feature byte 2 bit 7 (IMCR present) clear: the board is in virtual wire mode."""
    return _with_checksum(bytearray(MP_FLOATING.pack(b"_MP_", config_address, 1, MP_SPEC_REV, 0, bytes(5))), 10)


def isa_irq_pins() -> dict[int, int]:
    """ISA IRQ -> I/O APIC pin, as the tables route them: IRQ 0 on pin 2, IRQ 2 (the cascade)
    on no pin, every other IRQ on its own number."""
    return {irq: (2 if irq == 0 else irq) for irq in range(16) if irq != 2}


# ---------------------------------------------------------------- placing them


@dataclass(frozen=True)
class FirmwareLayout:
    """Where the tables go. Each area is filled upward from its address, each table aligned
    as its scanner or its specification asks (16 bytes, the FACS 64)."""

    acpi_area: int = BIOS_AREA  # the RSDP first, then RSDT, FACS, FADT, DSDT, MADT
    acpi_area_size: int = 0x10000
    mp_area: int = 0xF0000  # the floating pointer first, then the configuration table
    mp_area_size: int = 0x1000
    pci_bus: bool = True  # list a PCI bus (1) in the MP table
    timer_32bit: bool = False  # a 32-bit PM timer (FADT TMR_VAL_EXT); must match AcpiPm


@dataclass
class FirmwareTables:
    """Where everything went: table name -> (address, length)."""

    tables: dict[str, tuple[int, int]] = field(default_factory=dict)

    def address(self, name: str) -> int:
        return self.tables[name][0]

    @property
    def rsdp(self) -> int:
        return self.address("RSDP")

    @property
    def mp_floating_pointer(self) -> int:
        return self.address("MP floating pointer")

    def extent(self) -> tuple[int, int]:
        """The lowest and the end of the highest address written."""
        return min(a for a, _ in self.tables.values()), max(a + n for a, n in self.tables.values())


def _scanned_for_rsdp(address: int) -> bool:
    return address % 16 == 0 and (BIOS_AREA <= address < 0x100000 or EBDA_BASE <= address < EBDA_BASE + 0x400)


def _scanned_for_mp(address: int) -> bool:
    windows = ((EBDA_BASE, 0x400), (0xF0000, 0x10000))  # the EBDA's first KB is also base memory's last
    return address % 16 == 0 and any(base <= address < base + size for base, size in windows)


class _Area:
    def __init__(self, name: str, start: int, size: int, memory_size: int) -> None:
        if start + size > memory_size:
            raise ValueError(f"the {name} area {start:#x}+{size:#x} lies past the end of guest memory")
        self.name, self.next, self.end = name, start, start + size

    def place(self, length: int, align: int) -> int:
        at = -(-self.next // align) * align
        if at + length > self.end:
            raise ValueError(f"the firmware tables do not fit in the {self.name} area")
        self.next = at + length
        return at


def install_tables(memory: PhysicalWriter, memory_size: int, layout: FirmwareLayout | None = None) -> FirmwareTables:
    """Write the MP and ACPI tables into guest memory; returns where each one went."""
    layout = layout or FirmwareLayout()
    if not _scanned_for_rsdp(layout.acpi_area):
        raise ValueError(f"an OS does not look for the RSDP at {layout.acpi_area:#x}")
    if not _scanned_for_mp(layout.mp_area):
        raise ValueError(f"an OS does not look for the MP floating pointer at {layout.mp_area:#x}")
    out = FirmwareTables()
    acpi_area = _Area("ACPI", layout.acpi_area, layout.acpi_area_size, memory_size)
    mp_area = _Area("MP", layout.mp_area, layout.mp_area_size, memory_size)

    def put(name: str, area: _Area, data: bytes, align: int = 16) -> int:
        at = area.place(len(data), align)
        memory.write(at, data)
        out.tables[name] = (at, len(data))
        return at

    # The RSDP first (at the area's start, where the scan finds it), its RSDT written last.
    rsdp_at = acpi_area.place(RSDP.size, 16)
    rsdt_at = acpi_area.place(SDT_HEADER.size + 8, 16)
    facs_at = put("FACS", acpi_area, facs(), 64)
    dsdt_at = put("DSDT", acpi_area, sdt(b"DSDT", 1, dsdt_aml()))
    fadt_at = put("FADT", acpi_area, fadt(facs_at, dsdt_at, timer_32bit=layout.timer_32bit))
    madt_at = put("MADT", acpi_area, madt())
    for name, at, data in (("RSDP", rsdp_at, rsdp(rsdt_at)), ("RSDT", rsdt_at, rsdt([fadt_at, madt_at]))):
        memory.write(at, data)
        out.tables[name] = (at, len(data))

    floating_at = mp_area.place(MP_FLOATING.size, 16)
    config_at = put("MP configuration table", mp_area, mp_config_table(pci_bus=layout.pci_bus))
    memory.write(floating_at, mp_floating_pointer(config_at))
    out.tables["MP floating pointer"] = (floating_at, MP_FLOATING.size)
    return out
